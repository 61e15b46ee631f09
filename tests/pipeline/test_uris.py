"""pipeline.uris without Ray or servers: credentials never survive redaction, ids ignore them."""

from __future__ import annotations

import pytest

from pipeline.uris import (
    REDACTED,
    CredentialsInURIError,
    canonical_uri,
    filesystem,
    redact,
    redact_uri,
)


@pytest.mark.parametrize(
    "uri, secret",
    [
        ("s3://AKIAEXAMPLE:wJalrSECRET@bucket/videos/a.mp4", "wJalrSECRET"),
        ("https://user:hunter2@example.com/a.mp4", "hunter2"),
        ("https://b.s3.amazonaws.com/a.mp4?X-Amz-Signature=deadbeef&X-Amz-Date=1", "deadbeef"),
        ("https://example.com/a.mp4?access_token=tok123", "tok123"),
        ('bucket name "KEYID:S3CRET@bucket" is invalid', "S3CRET"),
    ],
)
def test_redact_uri_hides_credentials(uri, secret):
    out = redact_uri(uri)
    assert secret not in out and REDACTED in out


def test_redact_uri_keeps_plain_uris():
    for uri in ("s3://bucket/videos/a.mp4", "/data/a.mp4", "https://example.com/a.mp4?t=3"):
        assert redact_uri(uri) == uri


def test_redact_walks_nested_values_and_hides_secret_keys():
    spec = {
        "input": "s3://K:SECRET1@bucket/x",
        "storage_options": {"key": "AKIA", "secret": "SECRET2", "client_kwargs": {"region": "eu"}},
        "models": [{"weights": "https://u:SECRET3@host/w.pth", "token": ""}],
        "count": 3,
    }
    out = redact(spec)
    text = repr(out)
    assert not any(s in text for s in ("SECRET1", "SECRET2", "SECRET3", "AKIA"))
    assert out["storage_options"]["client_kwargs"] == {"region": "eu"}
    assert out["models"][0]["token"] == ""  # nothing to hide in an empty value
    assert out["count"] == 3 and spec["storage_options"]["secret"] == "SECRET2"  # input untouched


def test_canonical_uri_drops_credentials_and_signing_parameters():
    signed = "https://u:p@b.s3.amazonaws.com/a.mp4?X-Amz-Signature=x&X-Amz-Expires=60&part=2"
    assert canonical_uri(signed) == "https://b.s3.amazonaws.com/a.mp4?part=2"
    assert canonical_uri("/local/path.mp4") == "/local/path.mp4"


def test_credentials_in_an_object_store_uri_are_refused_without_echoing_them():
    with pytest.raises(CredentialsInURIError) as err:
        filesystem("s3://AKIA:TOPSECRET@bucket/x")
    assert "TOPSECRET" not in str(err.value)
