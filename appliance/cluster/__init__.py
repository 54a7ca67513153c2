"""Cluster-only parts: the node autoscaler and its policy, and the edges' load reports."""
