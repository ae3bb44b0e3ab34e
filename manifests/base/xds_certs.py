"""Create the Secret holding meshbridge's xDS mTLS certificates, once.

The gateway fetches its mesh certificates from the bridge over xDS (SDS), so
that connection must be mutual TLS. This script, run by the
``meshbridge-xds-certs`` Job in the meshbridge image, makes a throwaway CA,
signs a server certificate for the bridge's Service names and a client
certificate for the gateway, and creates one Secret with all of it:
``ca.crt``, ``server.crt``, ``server.key``, ``client.crt``, ``client.key``.
The bridge mounts only the server half, the gateway only the client half.

One Secret, created in one request, so the two halves always share a CA; if
it already exists the script does nothing (``409 AlreadyExists``), so the Job
may run on every ``kubectl apply``. The CA's private key is never stored:
rotating means deleting the Secret and running the Job again. Private keys
are never printed. The script needs only ``create`` on Secrets in its own
namespace: it never reads one.
"""

from __future__ import annotations

import base64
import datetime
import os
import sys
from collections.abc import Mapping, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SECRET_NAME = "meshbridge-xds-tls"
VALIDITY = datetime.timedelta(days=3650)


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def make_material(
    server_names: Sequence[str], client_name: str, now: datetime.datetime
) -> dict[str, bytes]:
    """A CA, a server certificate for ``server_names`` and a client certificate, as PEM."""
    ca_key = _key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "meshbridge xDS CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(names: Sequence[str], usage: x509.ObjectIdentifier) -> tuple[bytes, bytes]:
        key = _key()
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False
            )
            .sign(ca_key, hashes.SHA256())
        )
        return _pem_cert(cert), _pem_key(key)

    server_crt, server_key = leaf(server_names, ExtendedKeyUsageOID.SERVER_AUTH)
    client_crt, client_key = leaf([client_name], ExtendedKeyUsageOID.CLIENT_AUTH)
    return {
        "ca.crt": _pem_cert(ca),
        "server.crt": server_crt,
        "server.key": server_key,
        "client.crt": client_crt,
        "client.key": client_key,
    }


def server_names(service: str, namespace: str, cluster_domain: str) -> list[str]:
    """Every name the gateway may dial the bridge's Service by."""
    return [
        f"{service}.{namespace}.svc.{cluster_domain}",
        f"{service}.{namespace}.svc",
        f"{service}.{namespace}",
        service,
    ]


def create_secret(api: object, namespace: str, material: Mapping[str, bytes]) -> bool:
    """Create the Secret; False if it already exists (left exactly as it is)."""
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    body = client.V1Secret(
        metadata=client.V1ObjectMeta(
            name=SECRET_NAME,
            labels={
                "app.kubernetes.io/name": "meshbridge",
                "app.kubernetes.io/component": "xds-tls",
            },
        ),
        type="Opaque",
        data={k: base64.b64encode(v).decode() for k, v in material.items()},
    )
    try:
        api.create_namespaced_secret(namespace, body)  # type: ignore[attr-defined]
    except ApiException as exc:
        if exc.status == 409:
            return False
        raise RuntimeError(
            f"cannot create Secret {namespace}/{SECRET_NAME}: {exc.status} {exc.reason}"
        ) from exc
    return True


def main(env: Mapping[str, str]) -> int:
    from kubernetes import client, config

    namespace = env.get("POD_NAMESPACE", "meshbridge")
    service = env.get("XDS_SERVICE", "meshbridge")
    cluster_domain = env.get("CLUSTER_DOMAIN", "cluster.local")
    client_name = env.get("CLIENT_NAME", "meshbridge-gateway")
    config.load_incluster_config()
    api = client.CoreV1Api()
    material = make_material(
        server_names(service, namespace, cluster_domain),
        client_name,
        datetime.datetime.now(datetime.UTC),
    )
    if create_secret(api, namespace, material):
        print(f"created Secret {namespace}/{SECRET_NAME}")
    else:
        print(f"Secret {namespace}/{SECRET_NAME} already exists; left as it is")
    return 0


if __name__ == "__main__":
    sys.exit(main(os.environ))
