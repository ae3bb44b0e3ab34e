"""Adapters: all I/O toward outside systems (Kubernetes, Consul, mesh CAs)."""
