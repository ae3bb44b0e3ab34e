"""Linkerd2: the gateway's workload identity from the Linkerd identity service (Certify)."""
