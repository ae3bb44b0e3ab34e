"""End-to-end: the gateway reaching each mesh's sidecar over that mesh's mTLS."""
