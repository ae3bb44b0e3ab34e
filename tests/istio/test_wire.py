"""Wire shapes that must not drift: proto field numbers, and the token helpers."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from adapters.istio import proto as istioca
from adapters.linkerd import proto as identity_pb
from bridge.errors import IdentityError
from bridge.identity.tokens import (
    FileTokenSource,
    ServiceAccount,
    token_audiences,
    token_subject,
)
from bridge.model.secrets import SecretBytes
from tests.standins.sa_tokens import FakeTokenRequest


def test_istio_request_fields_are_istios() -> None:
    # csr = 1 (string), validity_duration = 3 (int64): tags 0x0a and 0x18.
    assert istioca.encode_request("PEM", 3600) == b"\x0a\x03PEM\x18\x90\x1c"
    assert istioca.decode_response(b"\x0a\x01a\x0a\x01b") == ["a", "b"]  # cert_chain = 1
    assert istioca.CREATE_CERTIFICATE == "/istio.v1.auth.IstioCertificateService/CreateCertificate"


def test_linkerd_fields_are_linkerds() -> None:
    req = identity_pb.certify_request("id", b"tok", b"csr").SerializeToString()
    # identity = 1, token = 2, certificate_signing_request = 3 (all length-delimited).
    assert req == b"\x0a\x02id\x12\x03tok\x1a\x03csr"
    until = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    resp = identity_pb.certify_response(b"L", [b"I1", b"I2"], until).SerializeToString()
    assert resp.startswith(b"\x0a\x01L\x12\x02I1\x12\x02I2\x1a")  # leaf 1, intermediates 2
    got = identity_pb.read_response(identity_pb.CertifyResponse.FromString(resp))
    assert got == identity_pb.Certified(b"L", (b"I1", b"I2"), until)
    assert identity_pb.CERTIFY == "/io.linkerd.proxy.identity.Identity/Certify"


def test_token_subject_and_audiences_read_unverified() -> None:
    tok = SecretBytes(FakeTokenRequest().issue("edge", "meshbridge", ["istio-ca"]))
    assert token_subject(tok) == ServiceAccount("edge", "meshbridge")
    assert token_audiences(tok) == ("istio-ca",)
    assert token_subject(SecretBytes("not-a-jwt")) is None
    assert token_audiences(SecretBytes("a.b.c")) == ()


async def test_file_token_source(tmp_path: Path) -> None:
    path = tmp_path / "istio-token"
    path.write_text("header.payload.sig\n")
    src = FileTokenSource(path, "istio-ca")
    assert (await src.token("istio-ca")).reveal() == b"header.payload.sig"
    with pytest.raises(IdentityError, match="projected for audience 'istio-ca'"):
        await src.token("identity.l5d.io")
    path.unlink()
    with pytest.raises(IdentityError, match="cannot read token file"):
        await src.token("istio-ca")
