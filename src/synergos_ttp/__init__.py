"""Synergos TTP: coordinates a federated grid and aggregates its model updates."""
