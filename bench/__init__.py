"""Benchmarks of the appliance against peers and baselines measured in the same run."""
