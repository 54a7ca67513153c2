"""Benchmarks and simulations of the appliance; results are written under bench/results/."""
