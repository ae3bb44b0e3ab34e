"""Build SDS Secrets from IR identities and trust bundles.

This is the one place in meshbridge where a private key's bytes leave their
:class:`~bridge.model.secrets.PrivateKey` wrapper (``reveal()``): they go into
the Secret message for Envoy and nowhere else. A Secret message's text form
shows the key, so code holding these messages must never print them (the
:class:`~bridge.xds.translate.Translation` repr shows counts only).
"""

from __future__ import annotations

from envoy.extensions.transport_sockets.tls.v3 import secret_pb2 as secret_v3

from bridge.model.ir import IdentitySecret, Secret, TrustSecret
from bridge.xds import names


def build_secret(secret: Secret) -> secret_v3.Secret:
    """``tls_certificate`` for an identity, ``validation_context`` for a trust bundle."""
    out = secret_v3.Secret(name=names.secret_name(secret.name))
    if isinstance(secret, IdentitySecret):
        out.tls_certificate.certificate_chain.inline_string = secret.cert_chain_pem
        out.tls_certificate.private_key.inline_bytes = secret.private_key.reveal()
    elif isinstance(secret, TrustSecret):
        out.validation_context.trusted_ca.inline_string = secret.ca_bundle_pem
    return out
