"""prlbench: does a pairwise ranking loss (PWiseR) really help multi-task recommenders?"""

__version__ = "0.3.0"
