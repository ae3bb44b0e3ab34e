"""Building blocks for the mesh end-to-end tests: IR upstreams and sidecar processes."""

from __future__ import annotations

from bridge.demo.meshes import HCM_TYPE, ROUTER_TYPE
from bridge.model.frozen import FrozenDict
from bridge.model.ir import (
    Discovery,
    Endpoint,
    Ir,
    Listener,
    Mesh,
    Route,
    Secret,
    SecretName,
    Upstream,
    UpstreamKey,
    UpstreamTls,
    VirtualHost,
)
from bridge.model.k8s import Kind, ObjectRef


def upstream(name: str, port: int, tls: UpstreamTls | None, mesh: Mesh = Mesh.NONE) -> Upstream:
    return Upstream(
        key=UpstreamKey("shop", name, "8080"),
        discovery=Discovery.EDS,
        endpoints=(Endpoint("127.0.0.1", port),),
        tls=tls,
        mesh=mesh,
        connect_timeout_ms=2000,
    )


def route(
    prefix: str,
    up: Upstream,
    *,
    add: tuple[tuple[str, str], ...] = (),
    remove: tuple[str, ...] = (),
) -> Route:
    return Route(
        host="*",
        prefix=prefix,
        upstream=up.key,
        source=ObjectRef(Kind.SERVICE, up.key.namespace, up.key.service),
        timeout_ms=5000,
        headers_to_add=add,
        headers_to_remove=remove,
    )


def make_ir(
    listen_port: int,
    routes: list[Route],
    upstreams: list[Upstream],
    secrets: dict[SecretName, Secret],
) -> Ir:
    ordered = tuple(sorted(routes, key=lambda r: -len(r.prefix)))
    return Ir(
        listeners=(Listener(name="http", port=listen_port, address="127.0.0.1"),),
        virtual_hosts=(VirtualHost(host="*", routes=ordered),),
        upstreams=FrozenDict({u.key: u for u in upstreams}),
        secrets=FrozenDict(secrets),
    )


def echo_listener(port: int) -> dict[str, object]:
    """A plaintext listener answering with the l5d-dst-override header it received."""
    return {
        "name": "echo",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": HCM_TYPE,
                            "stat_prefix": "echo",
                            "route_config": {
                                "virtual_hosts": [
                                    {
                                        "name": "echo",
                                        "domains": ["*"],
                                        "routes": [
                                            {
                                                "match": {"prefix": "/"},
                                                "direct_response": {"status": 200},
                                                "response_headers_to_add": [
                                                    {
                                                        "header": {
                                                            "key": "x-seen-dst-override",
                                                            "value": "%REQ(l5d-dst-override)%",
                                                        },
                                                        "keep_empty_value": True,
                                                    }
                                                ],
                                            }
                                        ],
                                    }
                                ]
                            },
                            "http_filters": [
                                {
                                    "name": "envoy.filters.http.router",
                                    "typed_config": {"@type": ROUTER_TYPE},
                                }
                            ],
                        },
                    }
                ]
            }
        ],
    }
