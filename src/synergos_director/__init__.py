"""Synergos Director: the Driver's entry point in cluster mode; queues jobs for the TTP grids."""
