"""The bridge's RBAC grants exactly what its code calls: nothing missing, nothing spare.

What the code calls is derived from the code itself, never restated here:

- the watches: ``KubernetesSourceSettings.from_config(<the overlay's config>).specs()``
  (kinds, namespaces, object names), each through the client method that
  ``adapters.kubernetes.reflector.KIND_APIS`` names, listed then watched;
- every other API call: any ``kubernetes.client`` API method named in the code
  of ``adapters/`` and ``bridge/`` (attribute calls and method-name strings for
  ``getattr`` tables alike); the few made only when the config turns a
  feature on (TokenRequest, ExternalName Service writes) count for an overlay
  only when its config does, by the wiring's own test (:data:`CONDITIONAL`).

A client method is turned into (API group, resource, verb) by reading the
HTTP method and path from the ``kubernetes`` client's own request builder.
What is granted is read from the built overlays: the Roles and ClusterRoles
bound to the bridge's service account.
"""

from __future__ import annotations

import ast
import functools
import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s_client

from adapters.kubernetes.leader import lease_settings_for
from adapters.kubernetes.reflector import KIND_APIS
from adapters.kubernetes.source import KubernetesSourceSettings
from bridge.cli.wiring import needs_token_request
from bridge.config import Config, config_from_dict
from tests.manifests.build import OVERLAYS, ROOT, Doc, build, config_of

BRIDGE_SA = ("meshbridge", "meshbridge")  # namespace, name
SCANNED = (ROOT / "adapters", ROOT / "bridge")


@dataclass(frozen=True, slots=True, order=True)
class Call:
    """One kind of API request: a verb on a group's resource (or ``resource/subresource``)."""

    group: str
    resource: str
    verb: str

    def __str__(self) -> str:
        return f"{self.verb} {self.resource}" + (f".{self.group}" if self.group else "")


# -- the client library: method name -> request --------------------------------

_API_CLASSES = {
    name: getattr(k8s_client, name)
    for name in dir(k8s_client)
    if name.endswith("Api") and inspect.isclass(getattr(k8s_client, name))
}
_REQUEST = (
    re.compile(r"method='(\w+)',\s*resource_path='([^']+)'"),  # kubernetes >= 31
    re.compile(r"call_api\(\s*'([^']+)',\s*'(\w+)'"),  # older clients: path first
)


@functools.cache
def request_of(api: str, method: str) -> tuple[str, str]:
    """(HTTP method, path template) of ``kubernetes.client.<api>.<method>``."""
    cls = _API_CLASSES[api]
    for helper in (f"_{method}_serialize", f"{method}_with_http_info"):
        fn = getattr(cls, helper, None)
        if fn is None:
            continue
        src = inspect.getsource(fn)
        if m := _REQUEST[0].search(src):
            return m.group(1), m.group(2)
        if m := _REQUEST[1].search(src):
            return m.group(2), m.group(1)
    raise AssertionError(f"cannot find the request {api}.{method} makes")


def call_of(api: str, method: str, watch: bool = False) -> Call:
    http, path = request_of(api, method)
    parts = path.strip("/").split("/")
    if parts[0] == "api":
        group, rest = "", parts[2:]
    else:
        group, rest = parts[1], parts[3:]
    if len(rest) >= 2 and rest[0] == "namespaces" and rest[1] == "{namespace}":
        rest = rest[2:]
    resource, named, sub = rest[0], len(rest) > 1, rest[2:] if len(rest) > 2 else []
    if sub:
        resource = f"{resource}/{sub[0]}"
    verb = {
        ("GET", False): "watch" if watch else "list",
        ("GET", True): "get",
        ("POST", False): "create",
        ("POST", True): "create",  # subresources such as serviceaccounts/token
        ("PUT", True): "update",
        ("PATCH", True): "patch",
        ("DELETE", True): "delete",
        ("DELETE", False): "deletecollection",
    }[(http, named)]
    return Call(group, resource, verb)


# -- the code: which client methods it names ------------------------------------


def _is_request(api: str, name: str) -> bool:
    """Whether ``name`` is one of the API class's request methods (not a helper like close)."""
    cls = _API_CLASSES[api]
    return callable(getattr(cls, name, None)) and (
        hasattr(cls, f"_{name}_serialize") or hasattr(cls, f"{name}_with_http_info")
    )


def _methods_named_in(path: Path) -> set[tuple[str, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    imported = {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    } | {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    if not any(m == "kubernetes" or m.startswith("kubernetes.") for m in imported):
        return set()  # only modules using the kubernetes client make its requests
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            names.add(node.attr)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            names.add(node.value)
    # API classes the file names restrict which class a method belongs to
    # (create_namespaced_event exists in CoreV1Api and EventsV1Api alike).
    classes = [c for c in _API_CLASSES if c in names] or list(_API_CLASSES)
    found: set[tuple[str, str]] = set()
    for name in names:
        if name.startswith("_") or name.startswith("get_api") or name == "get_code":
            continue
        owners = [c for c in classes if _is_request(c, name)]
        for owner in owners:
            found.add((owner, name))
    return found


@functools.cache
def direct_calls() -> frozenset[Call]:
    """Every API request the code can make outside the watch table."""
    table = {(k.api, m) for k in KIND_APIS.values() for m in (k.list_all, k.list_namespaced) if m}
    calls: set[Call] = set()
    for root in SCANNED:
        for path in sorted(root.rglob("*.py")):
            for api, method in _methods_named_in(path) - table:
                calls.add(call_of(api, method))
    return frozenset(calls)


def watch_calls(config_raw: dict[str, Any]) -> list[tuple[str | None, str | None, Call]]:
    """(namespace or None for all, object name or None, call) for the overlay's watches."""
    settings = KubernetesSourceSettings.from_config(config_from_dict(config_raw, env={}))
    out = []
    for spec in settings.specs():
        k = KIND_APIS[spec.kind]
        method = k.list_namespaced if spec.namespace and k.list_namespaced else k.list_all
        for watch in (False, True):
            out.append((spec.namespace, spec.name, call_of(k.api, method, watch=watch)))
    return out


# -- the manifests: what is granted -------------------------------------------


@dataclass(frozen=True, slots=True)
class Grant:
    namespace: str | None  # None: cluster-wide (ClusterRole bound by ClusterRoleBinding)
    names: frozenset[str]  # empty: any name
    call: Call
    where: str


def grants(docs: tuple[Doc, ...]) -> list[Grant]:
    roles = {
        (d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]): d
        for d in docs
        if d["kind"] in ("Role", "ClusterRole")
    }
    out = []
    for b in docs:
        if b["kind"] not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        subjects = {
            (s.get("namespace"), s["name"]) for s in b["subjects"] if s["kind"] == "ServiceAccount"
        }
        if BRIDGE_SA not in subjects:
            continue
        ref = b["roleRef"]
        ns = b["metadata"].get("namespace") if b["kind"] == "RoleBinding" else None
        role = roles[(ref["kind"], None if ref["kind"] == "ClusterRole" else ns, ref["name"])]
        for rule in role["rules"]:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    for verb in rule["verbs"]:
                        out.append(
                            Grant(
                                ns,
                                frozenset(rule.get("resourceNames", ())),
                                Call(group, resource, verb),
                                f"{role['kind']} {role['metadata']['name']}",
                            )
                        )
    return out


def allows(g: Grant, namespace: str | None, name: str | None, call: Call) -> bool:
    if g.call != call:
        return False
    if g.namespace is not None and g.namespace != namespace:
        return False
    # A list/watch limited by resourceNames is allowed only when the request
    # names the object (fieldSelector metadata.name=), as the reflector does.
    return not g.names or (name is not None and name in g.names)


def _watch_cases() -> list[Any]:
    return [
        pytest.param(overlay, ns, name, call, id=f"{overlay}-{call}-{ns}-{name}")
        for overlay in OVERLAYS
        for ns, name, call in watch_calls(config_of(build(f"overlays/{overlay}")))
    ]


@pytest.mark.parametrize(("overlay", "namespace", "name", "call"), _watch_cases())
def test_every_watch_is_granted(
    overlay: str, namespace: str | None, name: str | None, call: Call
) -> None:
    granted = grants(build(f"overlays/{overlay}"))
    assert any(allows(g, namespace, name, call) for g in granted), (
        f"overlays/{overlay}: the bridge does {call} in {namespace or 'every namespace'}"
        f"{f' (name {name})' if name else ''}, which its RBAC does not grant"
    )


def test_every_other_api_call_is_granted() -> None:
    granted = {g.call for o in OVERLAYS for g in grants(build(f"overlays/{o}"))}
    missing = sorted(str(c) for c in direct_calls() - granted)
    assert not missing, f"the code calls these and no overlay grants them: {missing}"


# Calls the code makes only when the config turns a feature on, with the
# wiring's own test for it; every other call in the code is made by any
# ``serve --source kubernetes`` (watches aside, which come from the config).
CONDITIONAL: dict[Call, Callable[[Config], bool]] = {
    Call("", "serviceaccounts/token", "create"): needs_token_request,
    **{
        Call("", "services", verb): lambda c: c.catalog_sync.to_kubernetes.enabled
        for verb in ("get", "create", "update", "delete")
    },
}


def used_by(config: Config) -> frozenset[Call]:
    """The API calls other than watches that the bridge makes with ``config``."""
    return frozenset(c for c in direct_calls() if c not in CONDITIONAL or CONDITIONAL[c](config))


def test_the_conditional_calls_are_calls_the_code_makes() -> None:
    # A stale entry would hide a spare grant.
    assert set(CONDITIONAL) <= direct_calls()


def spare_grants(docs: tuple[Doc, ...]) -> list[str]:
    """Grants to the bridge that neither its watches nor its other calls use, with its config."""
    raw = config_of(docs)
    watches = watch_calls(raw)
    used = used_by(config_from_dict(raw, env={}))
    spare = []
    for g in grants(docs):
        by_watch = any(
            c == g.call
            and (g.namespace is None or g.namespace == ns)
            and (not g.names or name in g.names)
            for ns, name, c in watches
        )
        if not by_watch and g.call not in used:
            spare.append(f"{g.where}: {g.call}" + (f" in {g.namespace}" if g.namespace else ""))
    return spare


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_nothing_granted_is_unused(overlay: str) -> None:
    spare = spare_grants(build(f"overlays/{overlay}"))
    assert not spare, f"overlays/{overlay} grants what no code uses: {spare}"


def test_a_spare_grant_is_found() -> None:
    # The check above on a doctored overlay: a token grant where no CA mode
    # needs one, and ConfigMap reads in a namespace the adapter never watches.
    extra = (
        {
            "kind": "Role",
            "metadata": {"name": "extra", "namespace": "meshbridge"},
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["serviceaccounts/token", "configmaps"],
                    "verbs": ["create", "list"],
                }
            ],
        },
        {
            "kind": "RoleBinding",
            "metadata": {"name": "extra", "namespace": "meshbridge"},
            "roleRef": {"kind": "Role", "name": "extra"},
            "subjects": [
                {"kind": "ServiceAccount", "name": "meshbridge", "namespace": "meshbridge"}
            ],
        },
    )
    assert sorted(spare_grants(build("overlays/istio-files") + extra)) == [
        "Role extra: create configmaps in meshbridge",
        "Role extra: create serviceaccounts/token in meshbridge",
        "Role extra: list configmaps in meshbridge",
        "Role extra: list serviceaccounts/token in meshbridge",
    ]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_lease_granted_is_the_one_the_config_elects_on(overlay: str) -> None:
    docs = build(f"overlays/{overlay}")
    lease = lease_settings_for(config_from_dict(config_of(docs), env={}))
    named = {
        (g.call.verb, name, g.namespace)
        for g in grants(docs)
        if g.call.resource == "leases"
        for name in g.names or {"*"}
    }
    assert named == {
        ("create", "*", lease.namespace),
        ("get", lease.name, lease.namespace),
        ("update", lease.name, lease.namespace),
    }


def test_the_call_table_reads_the_client_correctly() -> None:
    # The mapping itself, on calls whose RBAC meaning is well known.
    assert call_of("CoreV1Api", "list_pod_for_all_namespaces") == Call("", "pods", "list")
    assert call_of("CoreV1Api", "list_namespaced_pod", watch=True) == Call("", "pods", "watch")
    assert call_of("DiscoveryV1Api", "list_endpoint_slice_for_all_namespaces") == Call(
        "discovery.k8s.io", "endpointslices", "list"
    )
    assert call_of("CoreV1Api", "create_namespaced_service_account_token") == Call(
        "", "serviceaccounts/token", "create"
    )
    assert call_of("CoordinationV1Api", "replace_namespaced_lease") == Call(
        "coordination.k8s.io", "leases", "update"
    )
    assert call_of("CoreV1Api", "read_namespaced_config_map") == Call("", "configmaps", "get")
    assert call_of("CoreV1Api", "delete_namespaced_service") == Call("", "services", "delete")
