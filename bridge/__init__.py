"""meshbridge: an xDS control plane for an edge Envoy beside a service mesh."""

__version__ = "0.1.0"
