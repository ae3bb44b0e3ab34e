"""Golden files for translation: ``testdata/in/<case>.yaml`` (an IR) → Envoy resources.

Each case writes ``testdata/out/<case>.<type>.yaml`` for every resource type
it produces (listeners, routes, clusters, endpoints, secrets): a mapping of
resource name → the message's JSON form with proto field names. A
type the case does not produce has no file. ``pytest --update-goldens``
rewrites the outputs and deletes orphaned ones; review the diff.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from google.protobuf import json_format

from bridge.model.ir import Ir
from bridge.xds.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET
from bridge.xds.translate import Translation, translate
from tests.golden.irload import load

TESTDATA = Path(__file__).parent / "testdata"
IN = TESTDATA / "in"
OUT = TESTDATA / "out"
SUFFIXES = {
    LISTENER: "listeners",
    ROUTE: "routes",
    CLUSTER: "clusters",
    ENDPOINT: "endpoints",
    SECRET: "secrets",
}
CASES = sorted(p.stem for p in IN.glob("*.yaml"))


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (PEM) as ``|`` blocks, so goldens read like the inputs."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def load_case(case: str) -> Ir:
    return load(Ir, yaml.safe_load((IN / f"{case}.yaml").read_text()) or {})


def render(translation: Translation) -> dict[str, str]:
    """File name → YAML text, one file per non-empty resource type."""
    files: dict[str, str] = {}
    for type_url, suffix in SUFFIXES.items():
        resources = translation.resources.of(type_url)
        if not resources:
            continue
        doc = {
            # Through JSON: MessageToDict gives OrderedDicts for Any fields.
            name: json.loads(json_format.MessageToJson(message, preserving_proto_field_name=True))
            for name, message in resources.items()
        }
        files[suffix] = yaml.dump(
            doc, Dumper=_Dumper, sort_keys=True, default_flow_style=False, width=100
        )
    return files


def test_there_are_enough_cases() -> None:
    assert len(CASES) >= 8


@pytest.mark.parametrize("case", CASES)
def test_ir_to_xds(case: str, update_goldens: bool) -> None:
    files = render(translate(load_case(case)))
    for suffix in SUFFIXES.values():
        path = OUT / f"{case}.{suffix}.yaml"
        text = files.get(suffix)
        if update_goldens:
            if text is None:
                path.unlink(missing_ok=True)
            else:
                path.write_text(text)
            continue
        if text is None:
            assert not path.exists(), f"{path.name}: the case produces no {suffix}; delete it"
        else:
            assert path.exists(), f"{path.name} missing: run pytest --update-goldens"
            assert text == path.read_text(), f"{path.name} differs: run pytest --update-goldens"


def test_no_orphaned_goldens(update_goldens: bool) -> None:
    expected_suffixes = {f"{s}.yaml" for s in SUFFIXES.values()}
    orphans = [
        p
        for p in OUT.glob("*.yaml")
        if p.name.split(".", 1)[0] not in CASES or p.name.split(".", 1)[1] not in expected_suffixes
    ]
    if update_goldens:
        for path in orphans:
            path.unlink()
    else:
        assert not orphans, f"goldens without an input case: {[p.name for p in orphans]}"


def test_goldens_are_deterministic() -> None:
    for case in CASES:
        assert render(translate(load_case(case))) == render(translate(load_case(case)))
