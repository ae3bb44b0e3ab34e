"""The Kubernetes adapter: watches, service-account tokens, leader election, Events.

- :mod:`.source` — :func:`run_kubernetes_source`, the list+watch of every
  kind meshbridge reads, feeding :class:`bridge.store.Store`;
- :mod:`.reflector` — one list+watch loop (resourceVersion, bookmarks,
  410 → atomic relist, backoff) in a worker thread;
- :mod:`.tokens` — TokenRequest tokens for the bridge's service account;
- :mod:`.leader` — leader election on a ``coordination.k8s.io/v1`` Lease;
- :mod:`.events` — diagnostics as rate-limited, deduplicated Kubernetes Events;
- :mod:`.client` — the ``kubernetes`` client and the wrapping of its errors.

All blocking client calls run in worker threads; the store and other
loop-owned state are touched only on the event loop.
"""
