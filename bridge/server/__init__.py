"""xDS serving: the snapshot cache, the ADS server and where it listens.

- :mod:`bridge.server.cache` — snapshots (serialized, versioned resources)
  shared by node groups; knows nothing of gRPC.
- :mod:`bridge.server.ads` — ADS state-of-the-world and delta over grpc.aio.
- :mod:`bridge.server.listen` — TCP, Unix socket or mTLS listeners.
"""
