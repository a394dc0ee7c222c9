from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from modelport.errors import InvalidSource, PresignedUrlExpiring
from modelport.ingest.sources import SourceKind, parse_source, redact_url
from modelport.ingest.sources.spec import check_presigned_validity, presigned_expiry
from modelport.settings import Settings

S = Settings(hf_endpoint="http://127.0.0.1:9999")


@pytest.mark.parametrize(
    ("raw", "repo", "revision"),
    [
        ("org/name", "org/name", None),
        ("org/name@v1.0", "org/name", "v1.0"),
        ("https://huggingface.co/org/name", "org/name", None),
        ("https://huggingface.co/org/name/tree/dev", "org/name", "dev"),
        ("http://127.0.0.1:9999/org/name", "org/name", None),
    ],
)
def test_hugging_face_forms(raw: str, repo: str, revision: str | None) -> None:
    spec = parse_source(raw, S)
    assert spec.kind == SourceKind.HUGGINGFACE and spec.repo_id == repo and spec.revision == revision


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "justaname",
        "../x/y",
        "org/name/extra",
        "https://huggingface.co/org",
        "s3://bucket/key.tar",
        "file:///etc/passwd",
        "http://example.com/m.tar",
    ],
)
def test_refused_sources(raw: str) -> None:
    with pytest.raises(InvalidSource):
        parse_source(raw, S)


def test_http_only_when_the_operator_allows_it() -> None:
    allowed = Settings(fetch_allow_http=True, fetch_allow="10.0.0.0/24")
    assert parse_source("http://10.0.0.5:9000/b/m.tar", allowed).kind == SourceKind.REMOTE_ARCHIVE
    with pytest.raises(InvalidSource, match="private address"):
        parse_source("http://10.0.1.5:9000/b/m.tar", allowed)


def _sigv4(signed: datetime, expires_s: int) -> str:
    return (
        "https://b.s3.amazonaws.com/m.tar.gz?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIA%2F20261123"
        f"&X-Amz-Date={signed:%Y%m%dT%H%M%SZ}&X-Amz-Expires={expires_s}&X-Amz-SignedHeaders=host"
        "&X-Amz-Signature=deadbeefcafe"
    )


def test_sigv4_expiry_is_read_and_short_validity_refused() -> None:
    now = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    assert presigned_expiry(_sigv4(now, 3600)) == now + timedelta(hours=1)
    with pytest.raises(PresignedUrlExpiring, match="expires in 59 minutes") as err:
        check_presigned_validity(_sigv4(now, 3599), now)
    assert "deadbeef" not in str(err.value)
    check_presigned_validity(_sigv4(now, 6000), now)
    with pytest.raises(PresignedUrlExpiring, match="has expired"):
        check_presigned_validity(_sigv4(now - timedelta(days=1), 3600), now)


def test_sigv2_expiry() -> None:
    now = datetime(2026, 11, 23, tzinfo=UTC)
    expires = int(now.timestamp()) + 600
    url = f"https://b.s3.amazonaws.com/m.zip?AWSAccessKeyId=AKIA&Signature=abc&Expires={expires}"
    with pytest.raises(PresignedUrlExpiring):
        check_presigned_validity(url, now)


def test_plain_urls_have_no_expiry_and_malformed_ones_are_refused() -> None:
    assert presigned_expiry("https://example.com/model.tar.gz") is None
    with pytest.raises(InvalidSource):
        presigned_expiry("https://b/m?X-Amz-Date=yesterday&X-Amz-Expires=10")


def test_redaction_drops_signatures_and_credentials() -> None:
    assert (
        redact_url("https://user:pw@b.s3.amazonaws.com:443/k/m.tar?X-Amz-Signature=s")
        == "https://b.s3.amazonaws.com:443/k/m.tar?<redacted>"
    )
    assert redact_url("https://h/m.zip") == "https://h/m.zip"


def test_every_source_kind_has_a_source_that_fetches(tmp_path: Path) -> None:
    from modelport.ingest.multipart import PartStore
    from modelport.ingest.sources.registry import SOURCES, open_sources
    from modelport.storage.blobs import LocalBlobStore

    assert set(SOURCES) == set(SourceKind)
    blobs = LocalBlobStore(tmp_path / "blobs")
    sources = open_sources(Settings(data_dir=tmp_path), PartStore(tmp_path / "parts", 60), blobs)
    assert all(callable(getattr(source, "fetch", None)) for source in sources.values())
