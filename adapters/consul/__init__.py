"""Consul: catalog discovery, the Connect identity provider, and catalog sync.

Modules: :mod:`.settings` (how to reach Consul), :mod:`.client` (the HTTP
client and the blocking-query loop), :mod:`.discovery` (resolver ``consul``),
:mod:`.connect` (Connect CA roots/leaf, intentions), :mod:`.sync` (catalog
sync both ways). Imports no other adapter.
"""
