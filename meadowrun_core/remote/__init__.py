"""Reaching a cloud's instances over SSH, shared by every cloud that launches VMs."""
