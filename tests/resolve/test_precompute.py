"""Facts the model works out once per object, and the positional makers resolve builds with.

An EndpointSlice carries its ready endpoints per port and its Pod names, a
Pod whether it carries a mesh marker (``__post_init__``): resolve trusts them
instead of reading the endpoints and maps again every build, so each must
say exactly what the direct reading says, whatever the object, and whichever
way it was made (constructor, ``replace``, the converter's fast or careful
path).
"""

from __future__ import annotations

import copy
import dataclasses
import pickle
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.model.frozen import FrozenDict, frozen_maker
from bridge.model.ir import Discovery, Endpoint, Mesh, Protocol, Route, Upstream, UpstreamKey
from bridge.model.k8s import (
    POD_MESH_ANNOTATION_KEYS,
    POD_MESH_LABEL_KEYS,
    EndpointPort,
    K8sEndpointSlice,
    K8sPod,
    K8sService,
    Kind,
    ObjectRef,
    ServicePort,
    SliceEndpoint,
)
from bridge.model.settings import ResolveSettings
from bridge.resolve import resolve
from bridge.resolve.mesh import POD_MARKERS, pod_markers
from bridge.sources.convert import _FAST, _parse_checked
from bridge.store import Store

# -- what the derived fields must equal, read directly ---------------------------


def _ready_reference(s: K8sEndpointSlice) -> dict[str, tuple[Endpoint, ...]]:
    if s.address_type not in ("IPv4", "IPv6"):
        return {}
    out: dict[str, tuple[Endpoint, ...]] = {}
    for p in s.ports:
        if p.name in out:
            continue  # the first port of a name is the one read
        found = {
            Endpoint(e.addresses[0], p.port, e.zone or "")
            for e in s.endpoints
            if e.ready and not e.terminating and e.addresses
        }
        out[p.name] = tuple(sorted(found))
    return out


def _marked_reference(pod: K8sPod) -> bool:
    return any(
        key in (pod.labels if where == "label" else pod.annotations)
        for _, where, key, _ in POD_MARKERS
    )


_addresses = st.sampled_from(["10.0.0.1", "10.0.0.2", "10.0.0.10", "fd00::1"])
_endpoint = st.builds(
    SliceEndpoint,
    addresses=st.lists(_addresses, min_size=0, max_size=2).map(tuple),
    ready=st.booleans(),
    terminating=st.booleans(),
    target_pod=st.sampled_from([None, "", "web-1", "web-2", "api-1"]),
    zone=st.sampled_from([None, "", "z1", "z2"]),
)
_port = st.builds(
    EndpointPort, port=st.sampled_from([80, 8080, 9090]), name=st.sampled_from(["", "http", "grpc"])
)
_slice = st.builds(
    K8sEndpointSlice,
    namespace=st.just("shop"),
    name=st.just("web-a"),
    service_name=st.just("web"),
    address_type=st.sampled_from(["IPv4", "IPv6", "FQDN"]),
    ports=st.lists(_port, max_size=3).map(tuple),
    endpoints=st.lists(_endpoint, max_size=6).map(tuple),
)


@settings(max_examples=200, deadline=None)
@given(_slice)
def test_a_slice_knows_its_ready_endpoints_per_port_and_its_pod_names(s: K8sEndpointSlice) -> None:
    assert dict(s.ready_by_port) == _ready_reference(s)
    names = {e.target_pod for e in s.endpoints if e.target_pod}
    assert s.pod_names == tuple(sorted(names))
    # Derived from the rest: replace() works them out again, equality ignores them.
    moved = dataclasses.replace(s, endpoints=s.endpoints[1:])
    assert dict(moved.ready_by_port) == _ready_reference(moved)
    assert dataclasses.replace(s) == s


_marker_keys = sorted(POD_MESH_LABEL_KEYS | POD_MESH_ANNOTATION_KEYS)
_maps = st.dictionaries(
    st.sampled_from([*_marker_keys, "app", "istio-injection"]),
    st.sampled_from(["istio", "enabled", "true", "injected", "no"]),
    max_size=3,
).map(FrozenDict)


@settings(max_examples=200, deadline=None)
@given(labels=_maps, annotations=_maps)
def test_a_pod_knows_whether_it_carries_a_mesh_marker(
    labels: FrozenDict[str, str], annotations: FrozenDict[str, str]
) -> None:
    pod = K8sPod(namespace="shop", name="web-1", labels=labels, annotations=annotations)
    assert pod.mesh_marked == _marked_reference(pod)
    # Unmarked pods are skipped on the flag alone: they must have no marker.
    if not pod.mesh_marked:
        assert pod_markers(pod) == {}


def test_the_model_and_mesh_detection_name_the_same_marker_keys() -> None:
    assert {k for _, w, k, _ in POD_MARKERS if w == "label"} == POD_MESH_LABEL_KEYS
    assert {k for _, w, k, _ in POD_MARKERS if w == "annotation"} == POD_MESH_ANNOTATION_KEYS


def _slice_doc(endpoints: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": "web-a",
            "namespace": "shop",
            "labels": {"kubernetes.io/service-name": "web"},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080}, {"name": "http", "port": 9090}],
        "endpoints": endpoints,
    }


def test_the_converters_fast_and_careful_paths_derive_the_same_facts() -> None:
    doc = _slice_doc(
        [
            {"addresses": ["10.0.0.2"], "zone": "z2", "targetRef": {"kind": "Pod", "name": "b"}},
            {"addresses": ["10.0.0.1"], "targetRef": {"kind": "Pod", "name": "a"}},
            {"addresses": ["10.0.0.3"], "conditions": {"ready": False}},
            {"addresses": ["10.0.0.1"], "targetRef": {"kind": "Pod", "name": "a"}},
        ]
    )
    fast = _FAST[("discovery.k8s.io/v1", "EndpointSlice")](copy.deepcopy(doc))
    careful = _parse_checked(copy.deepcopy(doc), "x.yaml")
    assert isinstance(fast, K8sEndpointSlice) and isinstance(careful, K8sEndpointSlice)
    for s in (fast, careful):
        assert dict(s.ready_by_port) == {
            "http": (Endpoint("10.0.0.1", 8080, ""), Endpoint("10.0.0.2", 8080, "z2"))
        }
        assert s.pod_names == ("a", "b")
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "a",
            "namespace": "shop",
            "labels": {"linkerd.io/control-plane-ns": "x"},
        },
    }
    fast_pod = _FAST[("v1", "Pod")](copy.deepcopy(pod))
    careful_pod = _parse_checked(copy.deepcopy(pod), "x.yaml")
    assert isinstance(fast_pod, K8sPod) and isinstance(careful_pod, K8sPod)
    assert fast_pod.mesh_marked and careful_pod.mesh_marked
    unmarked = K8sPod(namespace="shop", name="b", labels=FrozenDict({"app": "web"}))
    assert not unmarked.mesh_marked


def test_derived_facts_survive_pickle_and_copy() -> None:
    s = K8sEndpointSlice(
        namespace="shop",
        name="web-a",
        service_name="web",
        ports=(EndpointPort(port=8080, name="http"),),
        endpoints=(SliceEndpoint(addresses=("10.0.0.1",), target_pod="web-1"),),
    )
    for c in (pickle.loads(pickle.dumps(s)), copy.copy(s), copy.deepcopy(s)):
        assert c == s
        assert dict(c.ready_by_port) == dict(s.ready_by_port) and c.pod_names == s.pod_names


# -- resolve reads them --------------------------------------------------------------


def test_endpoints_of_several_slices_are_merged_deduplicated_and_sorted() -> None:
    store = Store()
    store.upsert(
        "t",
        K8sService(
            namespace="shop",
            name="web",
            ports=(ServicePort(port=80, name="http"),),
            annotations=FrozenDict({"meshbridge.io/prefix": "/", "meshbridge.io/mesh": "none"}),
        ),
    )
    for name, addresses in (
        ("web-b", ["10.0.0.3", "10.0.0.1"]),
        ("web-a", ["10.0.0.2", "10.0.0.1"]),
    ):
        store.upsert(
            "t",
            K8sEndpointSlice(
                namespace="shop",
                name=name,
                service_name="web",
                ports=(EndpointPort(port=8080, name="http"),),
                endpoints=tuple(SliceEndpoint(addresses=(a,), zone="z") for a in addresses),
            ),
        )
    store.upsert(
        "t",
        K8sEndpointSlice(
            namespace="shop",
            name="web-c",
            service_name="web",
            address_type="FQDN",
            ports=(EndpointPort(port=8080, name="http"),),
            endpoints=(SliceEndpoint(addresses=("web.example.com",)),),
        ),
    )
    world, _ = store.take()
    out = resolve(world, ResolveSettings())
    (up,) = out.ir.upstreams.values()
    assert up.endpoints == tuple(Endpoint(f"10.0.0.{i}", 8080, "z") for i in (1, 2, 3))
    sr = out.services[ObjectRef(Kind.SERVICE, "shop", "web")]
    assert [d.code for d in sr.diagnostics] == ["endpoints.unsupported-address-type"]


# -- positional makers ---------------------------------------------------------------


def test_frozen_maker_makes_what_the_constructor_makes() -> None:
    key = UpstreamKey("shop", "web", "http")
    ref = ObjectRef(Kind.SERVICE, "shop", "web")
    route = frozen_maker(Route)("*", "/api", key, ref)  # trailing fields: their defaults
    want = Route(host="*", prefix="/api", upstream=key, source=ref)
    assert type(route) is Route and route == want and hash(route) == hash(want)
    assert repr(route) == repr(want)
    with pytest.raises(dataclasses.FrozenInstanceError):
        route.prefix = "/other"  # type: ignore[misc]
    up = frozen_maker(Upstream)(key, Discovery.EDS, (), None, None, Protocol.HTTP2, 5000, Mesh.NONE)
    assert up == Upstream(key=key, discovery=Discovery.EDS, protocol=Protocol.HTTP2)
    assert dataclasses.replace(up, mesh=Mesh.ISTIO).mesh is Mesh.ISTIO
    assert pickle.loads(pickle.dumps(up)) == up


def test_frozen_maker_refuses_a_class_with_post_init() -> None:
    with pytest.raises(AssertionError):
        frozen_maker(K8sPod)
