"""Cluster mode: block IPAM, workload endpoints, node registration and routes between nodes."""
