"""Run the whole Synergos topology on one machine: example datasets, service processes, the demo."""
