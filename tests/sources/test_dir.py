"""The directory source: objects per file, parse errors keep the last good objects."""

from __future__ import annotations

import asyncio
import os
import textwrap
from pathlib import Path

from bridge.model.diagnostics import Severity
from bridge.model.k8s import Kind, ObjectRef
from bridge.model.world import World
from bridge.sources.dir import DirSource
from bridge.store import Store
from tests.support.wait import async_wait_for

SVC = ObjectRef(Kind.SERVICE, "shop", "web")
SLICE = ObjectRef(Kind.ENDPOINT_SLICE, "shop", "web-1")
NS = ObjectRef(Kind.NAMESPACE, "", "shop")


def service(prefix: str = "/web", name: str = "web") -> str:
    return textwrap.dedent(
        f"""\
        apiVersion: v1
        kind: Service
        metadata:
          name: {name}
          namespace: shop
          annotations:
            meshbridge.io/prefix: {prefix}
        spec:
          ports:
          - port: 80
            name: http
        """
    )


def endpoint_slice(ip: str = "10.0.0.1") -> str:
    return textwrap.dedent(
        f"""\
        apiVersion: discovery.k8s.io/v1
        kind: EndpointSlice
        metadata:
          name: web-1
          namespace: shop
          labels:
            kubernetes.io/service-name: web
        addressType: IPv4
        ports:
        - port: 8080
          name: http
        endpoints:
        - addresses: ["{ip}"]
          conditions: {{ready: true}}
        """
    )


NAMESPACE = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n"


def world(store: Store) -> World:
    return store.take()[0]


def objects(w: World) -> set[ObjectRef]:
    return {*w.services, *w.endpoint_slices, *(n.ref for n in w.namespaces.values())}


def load(tmp_path: Path) -> tuple[Store, DirSource]:
    store = Store()
    src = DirSource(store, tmp_path)
    src.load()
    return store, src


def test_multi_document_file_and_nested_directories(tmp_path: Path) -> None:
    (tmp_path / "shop.yaml").write_text(NAMESPACE + "---\n" + service() + "---\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "slices.yml").write_text(endpoint_slice())
    (tmp_path / "notes.txt").write_text("not yaml: [")
    store, _ = load(tmp_path)
    assert store.synced
    w = world(store)
    assert objects(w) == {SVC, SLICE, NS}
    assert w.services[SVC].annotations["meshbridge.io/prefix"] == "/web"
    assert w.slices_of("shop", "web")[0].endpoints[0].addresses == ("10.0.0.1",)
    assert w.source_diagnostics == ()


def test_kubectl_list_output_is_flattened(tmp_path: Path) -> None:
    item = "- " + service().replace("\n", "\n  ").rstrip() + "\n"
    text = "apiVersion: v1\nkind: List\nitems:\n" + item
    (tmp_path / "list.yaml").write_text(text)
    store, _ = load(tmp_path)
    assert SVC in world(store).services


def test_yaml_error_keeps_the_objects_the_file_held(tmp_path: Path) -> None:
    f = tmp_path / "web.yaml"
    f.write_text(service("/web") + "---\n" + endpoint_slice())
    store, src = load(tmp_path)
    before = world(store)
    assert objects(before) == {SVC, SLICE}

    f.write_text(service("/changed") + "---\nkind: [unclosed\n")
    asyncio.run(src.rescan())
    after = world(store)
    assert after.services[SVC] is before.services[SVC]  # exactly as they were
    assert objects(after) == {SVC, SLICE}
    (diag,) = after.source_diagnostics
    assert diag.ref == ObjectRef(Kind.FILE, "", str(f))
    assert "not valid YAML" in diag.message and "line 14" in diag.message
    assert "stay in use" in diag.fix

    f.write_text(service("/fixed"))  # fixed, and the slice is gone from it
    asyncio.run(src.rescan())
    fixed = world(store)
    assert fixed.services[SVC].annotations["meshbridge.io/prefix"] == "/fixed"
    assert objects(fixed) == {SVC}
    assert fixed.source_diagnostics == ()


def test_invalid_object_keeps_previous_objects_and_names_the_field(tmp_path: Path) -> None:
    f = tmp_path / "web.yaml"
    f.write_text(service())
    store, src = load(tmp_path)
    world(store)
    f.write_text(service().replace("port: 80", "port: eighty"))
    asyncio.run(src.rescan())
    w = world(store)
    assert w.services[SVC].ports[0].port == 80
    (diag,) = w.source_diagnostics
    assert "Service shop/web" in diag.message
    assert "spec.ports" in diag.field
    assert diag.severity is Severity.ERROR


def test_a_file_that_never_parsed_contributes_nothing_but_a_diagnostic(tmp_path: Path) -> None:
    (tmp_path / "good.yaml").write_text(service())
    (tmp_path / "bad.yaml").write_text("{{{")
    store, _ = load(tmp_path)
    w = world(store)
    assert objects(w) == {SVC}
    assert [d.ref.name for d in w.source_diagnostics] == [str(tmp_path / "bad.yaml")]


def test_deleted_file_removes_its_objects_only(tmp_path: Path) -> None:
    (tmp_path / "svc.yaml").write_text(service())
    (tmp_path / "slice.yaml").write_text(endpoint_slice())
    store, src = load(tmp_path)
    assert objects(world(store)) == {SVC, SLICE}
    (tmp_path / "slice.yaml").unlink()
    asyncio.run(src.rescan())
    world_after, changed = store.take()
    assert objects(world_after) == {SVC}
    assert changed == {SLICE}
    (tmp_path / "svc.yaml").unlink()
    asyncio.run(src.rescan())
    assert objects(world(store)) == set()


def test_unsupported_kinds_are_skipped_with_a_warning(tmp_path: Path) -> None:
    deployment = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n"
    (tmp_path / "all.yaml").write_text(deployment + "---\n" + service())
    store, _ = load(tmp_path)
    w = world(store)
    assert objects(w) == {SVC}
    (diag,) = w.source_diagnostics
    assert diag.severity is Severity.WARNING and "Deployment" in diag.message


def test_same_object_in_two_files_first_path_wins(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(service("/a"))
    (tmp_path / "b.yaml").write_text(service("/b"))
    store, src = load(tmp_path)
    w = world(store)
    assert w.services[SVC].annotations["meshbridge.io/prefix"] == "/a"
    (diag,) = w.source_diagnostics
    assert diag.ref.name == str(tmp_path / "b.yaml") and "a.yaml" in diag.message
    (tmp_path / "a.yaml").unlink()  # the other copy takes over instead of a deletion
    asyncio.run(src.rescan())
    w = world(store)
    assert w.services[SVC].annotations["meshbridge.io/prefix"] == "/b"
    assert w.source_diagnostics == ()


def test_missing_directory_keeps_everything(tmp_path: Path) -> None:
    root = tmp_path / "world"
    root.mkdir()
    (root / "svc.yaml").write_text(service())
    store, src = load(root)
    world(store)
    (root / "svc.yaml").rename(tmp_path / "svc.yaml")
    root.rmdir()
    asyncio.run(src.rescan())
    w = world(store)
    assert objects(w) == {SVC}
    (diag,) = w.source_diagnostics
    assert "cannot read the source directory" in diag.message


def test_hidden_paths_are_ignored(tmp_path: Path) -> None:
    (tmp_path / "..2024_01_01").mkdir()  # a ConfigMap volume's real data directory
    (tmp_path / "..2024_01_01" / "svc.yaml").write_text(service("/hidden"))
    (tmp_path / ".svc.yaml.swp").write_text("garbage")
    store, _ = load(tmp_path)
    assert objects(world(store)) == set()


def test_same_length_rewrite_inside_one_timestamp_tick_is_seen(tmp_path: Path) -> None:
    f = tmp_path / "svc.yaml"
    f.write_text(service("/aaa"))
    store, src = load(tmp_path)
    st = f.stat()
    f.write_text(service("/bbb"))  # same size; force the same mtime as well
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    asyncio.run(src.rescan())
    assert world(store).services[SVC].annotations["meshbridge.io/prefix"] == "/bbb"


async def test_run_watches_and_applies_changes_like_watch_events(tmp_path: Path) -> None:
    f = tmp_path / "svc.yaml"
    f.write_text(service("/one"))
    store = Store()
    src = DirSource(store, tmp_path, poll_interval=0.02)
    task = asyncio.create_task(src.run())
    try:
        await async_wait_for(lambda: store.synced, timeout=5, what="initial sync")
        assert world(store).services[SVC].annotations["meshbridge.io/prefix"] == "/one"
        f.write_text(service("/two-longer"))
        await store.wait()
        w = await async_wait_for(
            lambda: (
                (w := world(store)).services[SVC].annotations["meshbridge.io/prefix"]
                == "/two-longer"
                and w
            ),
            timeout=5,
            what="the edit to be applied",
        )
        assert w
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_a_file_emptied_just_now_keeps_its_objects_until_it_settles(tmp_path: Path) -> None:
    # A file rewritten in place can be read between truncation and write:
    # that empty read must not drop the Service, but a file left empty does.
    f = tmp_path / "svc.yaml"
    f.write_text(service("/web"))
    store, src = load(tmp_path)
    f.write_text("")
    asyncio.run(src.rescan())
    assert objects(world(store)) == {SVC}
    f.write_text(service("/new"))  # the rewrite completes
    asyncio.run(src.rescan())
    assert world(store).services[SVC].annotations["meshbridge.io/prefix"] == "/new"
    f.write_text("")
    asyncio.run(src.rescan())
    assert objects(world(store)) == {SVC}
    old = f.stat().st_mtime_ns - 10_000_000_000  # past the racy window: emptied for good
    os.utime(f, ns=(old, old))
    asyncio.run(src.rescan())
    assert objects(world(store)) == set()
