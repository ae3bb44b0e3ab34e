"""Golden files for resolve: ``testdata/in/<case>.yaml`` (a World) → ``testdata/out/<case>.yaml``.

Input, loaded strictly (an unknown key anywhere fails the case):

- ``settings`` (optional): fields of :class:`ResolveSettings`
  (``supported_meshes`` as a list of mesh names);
- ``objects``: Kubernetes objects, converted by ``bridge.sources.convert``;
- ``consul`` (optional): a list of :class:`ConsulService` values
  (``key: {datacenter, service, connect}``, ``instances``, ``total``).

Output: per Service (exposed, resolver, mesh and why, routes, upstreams,
diagnostics), then the IR in the shape the IR → xDS goldens read, then every
diagnostic. ``pytest --update-goldens`` rewrites outputs and deletes orphans.

Each case is also resolved incrementally from an empty World with every ref
marked changed; that must equal the full resolve.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Union, get_args, get_origin

import pytest
import yaml

from bridge.model.consul import ConsulService
from bridge.model.diagnostics import Diagnostic
from bridge.model.frozen import FrozenDict
from bridge.model.ir import Ir, Resolved, Route, ServiceResolution
from bridge.model.k8s import ObjectRef
from bridge.model.settings import ResolveSettings
from bridge.model.world import World
from bridge.resolve import resolve
from bridge.sources.convert import parse_object
from bridge.store import Store
from tests.golden.irload import load as load_ir

HERE = Path(__file__).parent
IN = HERE / "testdata" / "in"
OUT = HERE / "testdata" / "out"
CASES = sorted(p.stem for p in IN.glob("*.yaml"))
TOP_LEVEL = {"settings", "objects", "consul"}


# -- strict input loading ---------------------------------------------------------


def _strict(tp: Any, data: Any, path: str) -> Any:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if data is None:
            return None
        return _strict(args[0], data, path)
    if origin in (tuple, frozenset):
        if not isinstance(data, list):
            raise AssertionError(f"{path}: expected a list, got {data!r}")
        items = [_strict(get_args(tp)[0], v, f"{path}[{i}]") for i, v in enumerate(data)]
        return tuple(items) if origin is tuple else frozenset(items)
    if origin is not None and issubclass(origin, Mapping):
        if not isinstance(data, dict):
            raise AssertionError(f"{path}: expected a mapping, got {data!r}")
        return FrozenDict({str(k): str(v) for k, v in data.items()})
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(data, dict):
            raise AssertionError(f"{path}: expected a mapping, got {data!r}")
        hints = typing.get_type_hints(tp)
        names = {f.name for f in dataclasses.fields(tp)}
        unknown = set(data) - names
        if unknown:
            raise AssertionError(
                f"{path}: unknown key(s) {sorted(unknown)}; valid: {sorted(names)}"
            )
        return tp(**{k: _strict(hints[k], v, f"{path}.{k}") for k, v in data.items()})
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return tp(data)
    if tp in (str, int, bool):
        if type(data) is not tp:
            raise AssertionError(f"{path}: expected {tp.__name__}, got {data!r}")
        return data
    raise AssertionError(f"{path}: cannot load {tp!r}")


def load_case(name: str) -> tuple[World, ResolveSettings]:
    doc = yaml.safe_load((IN / f"{name}.yaml").read_text())
    assert isinstance(doc, dict), "a case is a mapping"
    unknown = set(doc) - TOP_LEVEL
    assert not unknown, f"unknown top-level key(s) {sorted(unknown)}; valid: {sorted(TOP_LEVEL)}"
    settings = _strict(ResolveSettings, doc.get("settings") or {}, "settings")
    store = Store()
    for i, d in enumerate(doc.get("objects") or ()):
        store.upsert("golden", parse_object(d, f"{name}.yaml objects[{i}]"))
    for i, c in enumerate(doc.get("consul") or ()):
        store.put_consul_service(_strict(ConsulService, c, f"consul[{i}]"))
    world, _ = store.take()
    return world, settings


# -- output -------------------------------------------------------------------------


def plain(v: Any) -> Any:
    """Model values as YAML data: dataclasses without default-valued fields."""
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        out = {}
        for f in dataclasses.fields(v):
            value = getattr(v, f.name)
            default = (
                f.default
                if f.default is not dataclasses.MISSING
                else f.default_factory()
                if f.default_factory is not dataclasses.MISSING
                else dataclasses.MISSING
            )
            if default is dataclasses.MISSING or value != default:
                out[f.name] = plain(value)
        return out
    if isinstance(v, enum.Enum):
        return v.value
    if isinstance(v, Mapping):
        # By key: IR maps iterate in no set order.
        return [plain(v[k]) for k in sorted(v)]
    if isinstance(v, tuple | list | frozenset):
        return [plain(x) for x in v]
    return v


def _route(r: Route) -> dict[str, Any]:
    out = plain(r)
    del out["source"]  # it is the Service the section is about
    return typing.cast(dict[str, Any], out)


def _service(sr: ServiceResolution) -> dict[str, Any]:
    out: dict[str, Any] = {"exposed": sr.exposed}
    if sr.resolver is not None:
        out["resolver"] = sr.resolver.value
    if sr.mesh is not None:
        out["mesh"] = sr.mesh.value
    if sr.mesh_reason:
        out["mesh_reason"] = sr.mesh_reason
    if sr.routes:
        out["routes"] = [_route(r) for r in sr.routes]
    if sr.upstreams:
        out["upstreams"] = [plain(u) for u in sr.upstreams]
    if sr.diagnostics:
        out["diagnostics"] = [
            f"{d.severity.value} {d.code}: {d.field}" + (f" of {d.ref}" if d.ref != sr.ref else "")
            for d in sr.diagnostics
        ]
    return out


def _diag(d: Diagnostic) -> dict[str, str]:
    out = {"severity": d.severity.value, "ref": str(d.ref), "field": d.field, "code": d.code}
    out["message"] = d.message
    if d.fix:
        out["fix"] = d.fix
    return out


class _Dumper(yaml.SafeDumper):
    """Small all-scalar mappings on one line (keys, endpoints), the rest in block style."""


def _represent_dict(dumper: yaml.SafeDumper, data: dict[str, Any]) -> yaml.Node:
    flow = len(data) <= 4 and all(isinstance(v, str | int | bool) for v in data.values())
    return dumper.represent_mapping("tag:yaml.org,2002:map", data, flow_style=flow)


_Dumper.add_representer(dict, _represent_dict)


def render(r: Resolved) -> str:
    doc = {
        "services": {str(ref): _service(r.services[ref]) for ref in sorted(r.services)},
        "ir": plain(r.ir),
        "diagnostics": [_diag(d) for d in r.diagnostics],
    }
    return yaml.dump(doc, Dumper=_Dumper, sort_keys=False, width=100, allow_unicode=True)


# -- the suite ---------------------------------------------------------------------


def _all_refs(world: World) -> list[ObjectRef]:
    refs: list[ObjectRef] = []
    for m in (world.services, world.endpoint_slices, world.pods, world.config_maps):
        refs.extend(m)
    refs.extend(ns.ref for ns in world.namespaces.values())
    return refs


@pytest.mark.parametrize("case", CASES)
def test_world_to_ir(case: str, update_goldens: bool) -> None:
    world, settings = load_case(case)
    resolved = resolve(world, settings)
    text = render(resolved)
    out = OUT / f"{case}.yaml"
    if update_goldens:
        OUT.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
    assert out.exists(), f"no golden for {case}; run pytest --update-goldens"
    assert text == out.read_text(), f"{case}: output differs from {out} (--update-goldens)"

    # Deterministic, and the same when reached incrementally.
    assert render(resolve(world, settings)) == text
    empty = resolve(World(), settings)
    assert resolve(world, settings, empty, _all_refs(world)) == resolved

    # The IR section is valid input for the IR → xDS goldens.
    ir_doc = yaml.safe_load(text)["ir"]
    assert load_ir(Ir, ir_doc) == resolved.ir


def test_no_orphaned_goldens(update_goldens: bool) -> None:
    orphans = sorted(p for p in OUT.glob("*.yaml") if p.stem not in CASES)
    if update_goldens:
        for p in orphans:
            p.unlink()
        return
    assert not orphans, f"golden outputs without an input (run --update-goldens): {orphans}"


def test_enough_cases() -> None:
    assert len(CASES) >= 18


def test_unknown_top_level_key_fails(tmp_path: Path) -> None:
    with pytest.raises(AssertionError, match="unknown key"):
        _strict(ResolveSettings, {"default_mesh": "none", "defualt_resolver": "x"}, "settings")
