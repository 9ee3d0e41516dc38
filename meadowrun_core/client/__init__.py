"""The client side: allocation, job submission, the map driver and the sync/async bridge."""
