"""Experiments: the grid of runs, the result store, the executors and `compare`."""
