"""The messages of Linkerd's identity service, built at import from a hand-written descriptor.

linkerd2-proxy-api ``proto/identity.proto`` (package ``io.linkerd.proxy.identity``)::

    service Identity {
      rpc Certify(CertifyRequest) returns (CertifyResponse) {}
    }
    message CertifyRequest {
      string identity = 1;
      bytes token = 2;                          // the raw service-account JWT
      bytes certificate_signing_request = 3;    // DER
    }
    message CertifyResponse {
      bytes leaf_certificate = 1;               // DER
      repeated bytes intermediate_certificates = 2;  // DER
      google.protobuf.Timestamp valid_until = 3;
    }

No protoc runs here: the descriptor below is that file, field for field, and
the protobuf runtime makes real message classes from it. The classes are
handed to grpclib (which needs ``SerializeToString``/``FromString`` only);
typed helpers build and read them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, timestamp_pb2

PACKAGE = "io.linkerd.proxy.identity"
SERVICE = f"{PACKAGE}.Identity"
CERTIFY = f"/{SERVICE}/Certify"

_F = descriptor_pb2.FieldDescriptorProto


def _file() -> descriptor_pb2.FileDescriptorProto:
    fdp = descriptor_pb2.FileDescriptorProto(
        name="meshbridge/io/linkerd/proxy/identity/identity.proto",
        package=PACKAGE,
        syntax="proto3",
        dependency=[timestamp_pb2.DESCRIPTOR.name],
    )
    req = fdp.message_type.add(name="CertifyRequest")
    req.field.add(name="identity", number=1, type=_F.TYPE_STRING, label=_F.LABEL_OPTIONAL)
    req.field.add(name="token", number=2, type=_F.TYPE_BYTES, label=_F.LABEL_OPTIONAL)
    req.field.add(
        name="certificate_signing_request",
        number=3,
        type=_F.TYPE_BYTES,
        label=_F.LABEL_OPTIONAL,
    )
    resp = fdp.message_type.add(name="CertifyResponse")
    resp.field.add(name="leaf_certificate", number=1, type=_F.TYPE_BYTES, label=_F.LABEL_OPTIONAL)
    resp.field.add(
        name="intermediate_certificates",
        number=2,
        type=_F.TYPE_BYTES,
        label=_F.LABEL_REPEATED,
    )
    resp.field.add(
        name="valid_until",
        number=3,
        type=_F.TYPE_MESSAGE,
        label=_F.LABEL_OPTIONAL,
        type_name=".google.protobuf.Timestamp",
    )
    svc = fdp.service.add(name="Identity")
    svc.method.add(
        name="Certify",
        input_type=f".{PACKAGE}.CertifyRequest",
        output_type=f".{PACKAGE}.CertifyResponse",
    )
    return fdp


# A pool of our own keeps these names out of the default pool.
_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(descriptor_pb2.FileDescriptorProto.FromString(timestamp_pb2.DESCRIPTOR.serialized_pb))
_POOL.Add(_file())
CertifyRequest: Any = message_factory.GetMessageClass(
    _POOL.FindMessageTypeByName(f"{PACKAGE}.CertifyRequest")
)
CertifyResponse: Any = message_factory.GetMessageClass(
    _POOL.FindMessageTypeByName(f"{PACKAGE}.CertifyResponse")
)


@dataclass(frozen=True, slots=True)
class Certified:
    """A decoded ``CertifyResponse``."""

    leaf_der: bytes
    intermediates_der: tuple[bytes, ...]
    valid_until: dt.datetime | None


def certify_request(identity: str, token: bytes, csr_der: bytes) -> Any:
    return CertifyRequest(identity=identity, token=token, certificate_signing_request=csr_der)


def read_request(msg: Any) -> tuple[str, bytes, bytes]:
    """(identity, token, CSR DER) — for the test stand-in."""
    return str(msg.identity), bytes(msg.token), bytes(msg.certificate_signing_request)


def certify_response(
    leaf_der: bytes, intermediates_der: Sequence[bytes], valid_until: dt.datetime
) -> Any:
    ts = CertifyResponse().valid_until
    ts.FromDatetime(valid_until)
    return CertifyResponse(
        leaf_certificate=leaf_der,
        intermediate_certificates=list(intermediates_der),
        valid_until=ts,
    )


def read_response(msg: Any) -> Certified:
    until = msg.valid_until.ToDatetime(dt.UTC) if msg.HasField("valid_until") else None
    return Certified(
        leaf_der=bytes(msg.leaf_certificate),
        intermediates_der=tuple(bytes(c) for c in msg.intermediate_certificates),
        valid_until=until,
    )
