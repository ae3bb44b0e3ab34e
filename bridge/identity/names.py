"""The SDS secret names of mesh identities and trust bundles — made only here.

Identity providers put secrets into the store under these names, ``resolve``
references them from :class:`bridge.model.ir.UpstreamTls`, and translation
turns them into SDS resources of the same name. Pure: no I/O.
"""

from __future__ import annotations

from bridge.model.ir import Mesh, SecretName

_MESHES = (Mesh.ISTIO, Mesh.LINKERD, Mesh.CONSUL)


def identity_secret(mesh: Mesh) -> SecretName:
    """The gateway's certificate and key for ``mesh`` (``identity/istio``)."""
    _check(mesh)
    return SecretName(f"identity/{mesh.value}")


def trust_secret(mesh: Mesh) -> SecretName:
    """The trust bundle of ``mesh`` (``trust/istio``)."""
    _check(mesh)
    return SecretName(f"trust/{mesh.value}")


def _check(mesh: Mesh) -> None:
    if mesh not in _MESHES:
        raise ValueError(f"mesh {mesh.value!r} has no identity (one of istio, linkerd, consul)")
