"""Mesh identity: the gateway's workload certificates and the meshes' trust bundles.

- :mod:`.pki` — keys, CSRs, a local CA, chain validation, expiry (pure).
- :mod:`.names` — the SDS secret names of each mesh's identity and trust bundle.
- :mod:`.provider` — the interface identity providers implement, and the
  store plumbing they share.
- :mod:`.rotation` — when to renew, with jitter, backoff and expiry warnings.
- :mod:`.roots` — roots from a ConfigMap or file, and the CA provider base
  that watches them (Istio CA, Linkerd identity).
- :mod:`.tokens` — service-account tokens for the mesh CAs.
- :mod:`.files` — the ``files:DIR`` provider (istio-agent ``OUTPUT_CERTS`` layout).

Importing this package imports none of its modules, so the pure core can use
:mod:`.names` without pulling in asyncio.
"""
