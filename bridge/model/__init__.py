"""The model: frozen values that cross module boundaries.

- :mod:`.k8s` — Kubernetes source objects as converted at the adapter boundary.
- :mod:`.world` — the versioned, frozen set of everything the sources know.
- :mod:`.ir` — the mesh-neutral intermediate representation ``resolve`` makes.
- :mod:`.diagnostics` — problems as data, tied to the object they concern.
- :mod:`.secrets` — key material in types that never print their bytes.

Nothing here does I/O, reads clocks or imports Envoy protos.
"""
