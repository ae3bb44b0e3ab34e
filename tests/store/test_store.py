"""The store: no-op on equal values, atomic replace, indexes, frozen Worlds."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from bridge.model.frozen import EMPTY, FrozenDict
from bridge.model.k8s import (
    K8sEndpointSlice,
    K8sNamespace,
    K8sPod,
    K8sService,
    Kind,
    ObjectRef,
    ServicePort,
    SliceEndpoint,
)
from bridge.model.sharded import ShardedBuilder
from bridge.store import Store


def svc(name: str, port: int = 80) -> K8sService:
    return K8sService("default", name, (ServicePort(port, "http"),))


def eps(name: str, service: str, *pods: str) -> K8sEndpointSlice:
    return K8sEndpointSlice(
        "default",
        name,
        service,
        endpoints=tuple(SliceEndpoint((f"10.0.0.{i}",), target_pod=p) for i, p in enumerate(pods)),
    )


def test_putting_an_equal_value_is_a_no_op() -> None:
    s = Store()
    assert s.upsert("dir", svc("web"))
    s.take()
    assert not s.upsert("dir", svc("web"))
    _world, changed = s.take()
    assert changed == frozenset()
    assert s.upsert("dir", svc("web", 81))
    assert s.take()[1] == {ObjectRef(Kind.SERVICE, "default", "web")}


def test_a_taken_world_never_changes_afterwards() -> None:
    s = Store()
    s.upsert("dir", svc("web"))
    w1, _ = s.take()
    s.upsert("dir", svc("web", 81))
    s.upsert("dir", svc("api"))
    w2, _ = s.take()
    assert w1.services[ObjectRef(Kind.SERVICE, "default", "web")].ports[0].port == 80
    assert len(w1.services) == 1 and len(w2.services) == 2
    assert w2.version > w1.version


def test_unchanged_kinds_are_shared_between_worlds() -> None:
    s = Store()
    s.upsert("dir", svc("web"))
    s.upsert("dir", K8sNamespace("default"))
    w1, _ = s.take()
    s.upsert("dir", K8sNamespace("default", annotations={"a": "b"}))  # type: ignore[arg-type]
    w2, _ = s.take()
    assert w2.services is w1.services
    assert w2.namespaces is not w1.namespaces


def test_replace_swaps_a_sources_objects_in_one_step() -> None:
    s = Store()
    s.replace("k8s", [svc("a"), svc("b")])
    s.upsert("dir", svc("c"))
    s.take()
    s.replace("k8s", [svc("b"), svc("d")])
    world, changed = s.take()
    names = sorted(r.name for r in world.services)
    assert names == ["b", "c", "d"]  # another source's objects are untouched
    assert {r.name for r in changed} == {"a", "d"}


def test_slice_indexes_follow_upserts_and_deletes() -> None:
    s = Store()
    s.upsert("dir", eps("web-1", "web", "p1", "p2"))
    s.upsert("dir", eps("web-2", "web", "p2"))
    w, _ = s.take()
    assert [e.name for e in w.slices_of("default", "web")] == ["web-1", "web-2"]
    assert w.services_by_pod[ObjectRef(Kind.POD, "default", "p2")] == {("default", "web")}
    s.delete("dir", ObjectRef(Kind.ENDPOINT_SLICE, "default", "web-1"))
    s.upsert("dir", eps("web-2", "api", "p3"))  # the slice moved to another Service
    w2, _ = s.take()
    assert w2.slices_of("default", "web") == []
    assert ObjectRef(Kind.POD, "default", "p1") not in w2.services_by_pod
    assert w2.services_by_pod[ObjectRef(Kind.POD, "default", "p3")] == {("default", "api")}
    # the earlier World still shows the earlier indexes
    assert len(w.slices_of("default", "web")) == 2


def test_nothing_is_synced_until_every_source_is() -> None:
    s = Store()
    s.register_source("dir")
    s.register_source("kubernetes")
    s.mark_synced("dir")
    assert not s.synced
    s.mark_synced("kubernetes")
    assert s.synced


@given(
    st.lists(
        st.tuples(st.sampled_from(["set", "pop", "freeze"]), st.integers(0, 40), st.integers()),
        max_size=200,
    )
)
def test_sharded_versions_behave_like_copied_dicts(ops: list[tuple[str, int, int]]) -> None:
    b: ShardedBuilder[int, int] = ShardedBuilder()
    model: dict[int, int] = {}
    versions = []
    for op, k, v in ops:
        if op == "set":
            b[k] = v
            model[k] = v
        elif op == "pop":
            assert b.pop(k) == model.pop(k, None)
        else:
            versions.append((b.freeze(), dict(model)))
        assert len(b) == len(model)
    versions.append((b.freeze(), dict(model)))
    for frozen, expected in versions:
        assert dict(frozen.items()) == expected
        assert len(frozen) == len(expected)
        assert all(frozen.get(k) == expected.get(k) for k in range(41))


_POD_NAMES = ["p0", "p1", "p2", "p3"]


@given(
    st.lists(
        st.one_of(
            st.tuples(
                st.just("slice"),
                st.sampled_from(["s0", "s1", "s2"]),
                st.sampled_from(["web", "api"]),
                st.lists(st.sampled_from(_POD_NAMES), max_size=3),
            ),
            st.tuples(st.just("pod"), st.sampled_from(_POD_NAMES), st.booleans()),
            st.tuples(st.just("delete-slice"), st.sampled_from(["s0", "s1", "s2"])),
            st.tuples(st.just("delete-pod"), st.sampled_from(_POD_NAMES)),
            st.tuples(st.just("take")),
        ),
        max_size=40,
    )
)
def test_pod_indexes_agree_with_the_slices_and_pods(ops: list[tuple[object, ...]]) -> None:
    # The store keeps which Services each pod belongs to and, per Service,
    # how many of its endpoint pods exist and are mesh-marked, through any
    # order of slice and pod changes (two slices of a Service may name the
    # same pod, as dual-stack slices do).
    s = Store()
    for op in [*ops, ("take",)]:
        if op[0] == "slice":
            _, name, service, pods = op
            s.upsert("k8s", eps(str(name), str(service), *pods))  # type: ignore[misc]
        elif op[0] == "pod":
            labels = FrozenDict({"security.istio.io/tlsMode": "istio"}) if op[2] else EMPTY
            s.upsert("k8s", K8sPod("default", str(op[1]), labels=labels))
        elif op[0] == "delete-slice":
            s.delete("k8s", ObjectRef(Kind.ENDPOINT_SLICE, "default", str(op[1])))
        elif op[0] == "delete-pod":
            s.delete("k8s", ObjectRef(Kind.POD, "default", str(op[1])))
        else:
            w, _ = s.take()
            members: dict[ObjectRef, set[tuple[str, str]]] = {}
            for service in ("web", "api"):
                names = {
                    e.target_pod
                    for sl in w.slices_of("default", service)
                    for e in sl.endpoints
                    if e.target_pod
                }
                pods = [w.pod("default", n) for n in names]
                present = [p for p in pods if p is not None]
                assert w.endpoint_pod_count("default", service) == (
                    len(present),
                    sum(p.mesh_marked for p in present),
                )
                for n in names:
                    members.setdefault(ObjectRef(Kind.POD, "default", n), set()).add(
                        ("default", service)
                    )
            assert dict(w.services_by_pod) == members
