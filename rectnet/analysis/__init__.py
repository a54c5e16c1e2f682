"""Analyses of configured models (run as modules): `python -m rectnet.analysis.propagation <overrides>`."""
