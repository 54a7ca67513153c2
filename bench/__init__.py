"""Benchmarks against peers and baselines measured in the same run, and the autoscaling simulation.

Results are written under bench/results/; `python -m bench` runs the peer benchmark,
`python -m bench.simulate` the trace-driven autoscaling simulation.
"""
