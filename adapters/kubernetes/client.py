"""The ``kubernetes`` client, configured once, and the wrapping of its errors.

:func:`load_api_client` finds the cluster the way ``kubectl`` users expect:
an explicit kubeconfig path if configured, in-cluster config inside a pod
(``KUBERNETES_SERVICE_HOST`` set), else ``$KUBECONFIG`` or ``~/.kube/config``.

:func:`call` runs one blocking client call and turns the library's exceptions
(``ApiException``, urllib3 errors, socket errors) into meshbridge's tree with
``raise ... from``: ``410`` becomes :class:`ResourceExpired`, ``409``
:class:`Conflict`, ``404`` :class:`NotFound`, ``401``/``403``
:class:`bridge.errors.SourceError` (the fix is RBAC or credentials, named in
the message), everything else :class:`bridge.errors.SourceUnavailable`.
Messages name the call and the API server's own reason; they never contain
request headers, so a bearer token cannot leak through them.

Everything here blocks: callers run it in worker threads, never on the
event loop.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any, TypeVar

import urllib3
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from bridge.errors import SourceError, SourceUnavailable

T = TypeVar("T")

# Connect timeout for every call; read timeouts are per call.
CONNECT_TIMEOUT_S = 5.0


class ResourceExpired(SourceUnavailable):
    """410 Gone: the resourceVersion asked for is older than the server keeps; relist."""


class Conflict(SourceError):
    """409: the object changed since it was read (or already exists)."""


class NotFound(SourceError):
    """404: no such object."""


def load_api_client(kubeconfig: str = "", context: str = "", pool_size: int = 32) -> Any:
    """A ``kubernetes.client.ApiClient`` for the configured cluster.

    ``pool_size`` bounds the kept-alive connections; each open watch holds one,
    so it must exceed the number of watches or urllib3 discards connections.
    """
    cfg = k8s_client.Configuration()
    try:
        if kubeconfig:
            k8s_config.load_kube_config(
                config_file=kubeconfig, context=context or None, client_configuration=cfg
            )
        elif os.environ.get("KUBERNETES_SERVICE_HOST"):
            k8s_config.load_incluster_config(client_configuration=cfg)
        else:
            k8s_config.load_kube_config(context=context or None, client_configuration=cfg)
    except (ConfigException, OSError) as exc:
        raise SourceError(
            f"cannot load Kubernetes client configuration: {exc} "
            "(set kubernetes.kubeconfig in the config file, KUBECONFIG, or run in a pod)"
        ) from exc
    cfg.connection_pool_maxsize = pool_size
    api = k8s_client.ApiClient(cfg)
    api.user_agent = "meshbridge"
    return api


def api_client_for(host: str, pool_size: int = 32, user_agent: str = "meshbridge") -> Any:
    """An ``ApiClient`` for a server URL with no credentials (tests, local proxies)."""
    cfg = k8s_client.Configuration()
    cfg.host = host
    cfg.connection_pool_maxsize = pool_size
    api = k8s_client.ApiClient(cfg)
    api.user_agent = user_agent
    return api


def status_message(exc: ApiException) -> str:
    """The ``message`` of the Status the server answered with, else its reason."""
    body = getattr(exc, "body", None)
    if body:
        try:
            msg = json.loads(body).get("message")
        except (ValueError, AttributeError):
            msg = None
        if isinstance(msg, str) and msg:
            return msg
    return str(exc.reason or "")


def wrap(exc: BaseException, what: str) -> SourceError:
    """The meshbridge exception for a client-library failure of call ``what``."""
    if isinstance(exc, ApiException):
        code = int(exc.status or 0)
        text = f"{what}: {code} {status_message(exc)}"
        if code == 410:
            return ResourceExpired(text)
        if code == 409:
            return Conflict(text)
        if code == 404:
            return NotFound(text)
        if code in (401, 403):
            return SourceError(
                f"{text} (check the credentials and that RBAC grants meshbridge this access)"
            )
        return SourceUnavailable(text)
    return SourceUnavailable(f"{what}: {type(exc).__name__}: {exc}")


RETRYABLE = (ApiException, urllib3.exceptions.HTTPError, OSError)


def call(what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run one blocking client call; library errors come out as meshbridge errors."""
    try:
        return fn(*args, **kwargs)
    except RETRYABLE as exc:
        raise wrap(exc, what) from exc


def read_json(what: str, resp: Any) -> Any:
    """Read and decode a ``_preload_content=False`` response body."""
    try:
        return json.loads(resp.data)
    except (urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
        resp.close()  # a half-read connection must not go back to the pool
        raise wrap(exc, what) from exc
    finally:
        resp.release_conn()
