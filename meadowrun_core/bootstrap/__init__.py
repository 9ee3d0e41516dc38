"""Bootstrapping an instance from a stock image: the agent bundle and the boot script."""
