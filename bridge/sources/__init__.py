"""Sources: where the World's objects come from, converted at the boundary.

- :mod:`.convert` — Kubernetes object dicts (YAML or API JSON) → model types.
- :mod:`.dir` — the directory source (``--source dir:PATH``).

Raw wire dicts never leave this package (or an adapter): everything past it
is a frozen :mod:`bridge.model` value.
"""
