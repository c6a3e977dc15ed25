"""The data layer: registry of data sets, download, preprocess, synthetic default, loader."""
