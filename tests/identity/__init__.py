"""Mesh identity: PKI, rotation, providers, upstream mTLS per mesh."""
