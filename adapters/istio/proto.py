"""The messages of istiod's CA service, built at import from a hand-written descriptor.

Istio's ``security/proto/providers/istioca.proto`` (package ``istio.v1.auth``)::

    service IstioCertificateService {
      rpc CreateCertificate(IstioCertificateRequest) returns (IstioCertificateResponse);
    }
    message IstioCertificateRequest {
      string csr = 1;                       // PEM
      int64 validity_duration = 3;          // seconds
      google.protobuf.Struct metadata = 4;  // impersonation only; unused here
    }
    message IstioCertificateResponse {
      repeated string cert_chain = 1;       // PEM, leaf first, root last
    }

No protoc runs here: the descriptor below is that file, field for field, and
the protobuf runtime makes real message classes from it (so the wire bytes
are protobuf's own). Only the two functions per message cross the module
boundary, typed; the dynamic classes stay inside.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, struct_pb2

PACKAGE = "istio.v1.auth"
SERVICE = f"{PACKAGE}.IstioCertificateService"
CREATE_CERTIFICATE = f"/{SERVICE}/CreateCertificate"

_F = descriptor_pb2.FieldDescriptorProto


def _file() -> descriptor_pb2.FileDescriptorProto:
    fdp = descriptor_pb2.FileDescriptorProto(
        name="meshbridge/istio/v1/auth/istioca.proto",
        package=PACKAGE,
        syntax="proto3",
        dependency=[struct_pb2.DESCRIPTOR.name],
    )
    req = fdp.message_type.add(name="IstioCertificateRequest")
    req.field.add(name="csr", number=1, type=_F.TYPE_STRING, label=_F.LABEL_OPTIONAL)
    req.field.add(name="validity_duration", number=3, type=_F.TYPE_INT64, label=_F.LABEL_OPTIONAL)
    req.field.add(
        name="metadata",
        number=4,
        type=_F.TYPE_MESSAGE,
        label=_F.LABEL_OPTIONAL,
        type_name=".google.protobuf.Struct",
    )
    resp = fdp.message_type.add(name="IstioCertificateResponse")
    resp.field.add(name="cert_chain", number=1, type=_F.TYPE_STRING, label=_F.LABEL_REPEATED)
    svc = fdp.service.add(name="IstioCertificateService")
    svc.method.add(
        name="CreateCertificate",
        input_type=f".{PACKAGE}.IstioCertificateRequest",
        output_type=f".{PACKAGE}.IstioCertificateResponse",
    )
    return fdp


# A pool of our own (struct.proto copied in) keeps these names out of the
# default pool, where a generated copy of the same file would clash.
_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(descriptor_pb2.FileDescriptorProto.FromString(struct_pb2.DESCRIPTOR.serialized_pb))
_POOL.Add(_file())
Request: Any = message_factory.GetMessageClass(
    _POOL.FindMessageTypeByName(f"{PACKAGE}.IstioCertificateRequest")
)
Response: Any = message_factory.GetMessageClass(
    _POOL.FindMessageTypeByName(f"{PACKAGE}.IstioCertificateResponse")
)


def encode_request(csr_pem: str, validity_seconds: int) -> bytes:
    return bytes(Request(csr=csr_pem, validity_duration=validity_seconds).SerializeToString())


def decode_request(data: bytes) -> tuple[str, int]:
    """(CSR PEM, validity in seconds) — for the test stand-in."""
    msg = Request.FromString(data)
    return str(msg.csr), int(msg.validity_duration)


def encode_response(cert_chain: Sequence[str]) -> bytes:
    return bytes(Response(cert_chain=list(cert_chain)).SerializeToString())


def decode_response(data: bytes) -> list[str]:
    return [str(c) for c in Response.FromString(data).cert_chain]
