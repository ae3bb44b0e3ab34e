"""Istio: the gateway's workload identity from istiod's CA (CreateCertificate over TLS)."""
