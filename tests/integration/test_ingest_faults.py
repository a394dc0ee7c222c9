"""What goes wrong on the way in: broken, stalled, refused and hostile downloads. Each ends as a clear
job error (or a successful resume), and leaves no files and no rows behind."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modelport.accounts.service import Principal
from modelport.errors import InvalidSource
from modelport.services import Services
from tests.conftest import make_settings, open_services, principal_for
from tests.integration.helpers import stored_blobs, upload
from tests.support.fakehub import FakeHub
from tests.support.tinymodels import archive_bytes, files_of


@pytest.fixture
def impatient(tmp_path: Path, db_url: str, hub: FakeHub) -> Iterator[Services]:
    svc = open_services(make_settings(tmp_path, db_url, hub.url, fetch_timeout_s=1.0, fetch_retries=2))
    yield svc
    svc.db.dispose()


@pytest.fixture
def tgz(tiny_llama: Path) -> bytes:
    return archive_bytes(files_of(tiny_llama), "tar.gz")


def _assert_nothing_left(services: Services, who: Principal) -> None:
    assert services.catalog.list_models(who) == []
    assert stored_blobs(services) == set()
    assert list(services.settings.staging_dir.iterdir()) == []


def test_dropped_connections_are_resumed_with_range(impatient: Services, hub: FakeHub, tgz: bytes) -> None:
    who = principal_for(impatient, "alice")
    url = hub.serve_file("drops.tgz", tgz, break_after=len(tgz) // 3, breaks=2)
    view = upload(impatient, who, "resumed", url)
    assert view.job.status == "Complete", [u.message for u in view.updates]
    ranges = [r for m, p, r in hub.requests if p == "/files/drops.tgz" and r]
    assert ranges == [f"bytes={len(tgz) // 3}-", f"bytes={2 * (len(tgz) // 3)}-"]


@pytest.mark.parametrize("fmt", ["tar.gz", "zip"])
def test_without_range_support_a_drop_is_a_clear_failure(
    impatient: Services, hub: FakeHub, tiny_llama: Path, fmt: str
) -> None:
    who = principal_for(impatient, "alice")
    data = archive_bytes(files_of(tiny_llama), fmt)
    view = upload(impatient, who, "cut", hub.serve_file(f"cut.{fmt}", data, ranges=False, break_after=5000, breaks=9))
    assert view.job.status == "Failed" and view.job.error_code == "source_unavailable"
    assert "cut off at byte 5000" in (view.job.error_message or "") and "resuming" in (view.job.error_message or "")
    _assert_nothing_left(impatient, who)


def test_a_wrong_content_length_is_a_clear_failure(impatient: Services, hub: FakeHub, tgz: bytes) -> None:
    who = principal_for(impatient, "alice")
    view = upload(impatient, who, "liar", hub.serve_file("liar.tgz", tgz, ranges=False, claim_size=len(tgz) + 999))
    assert view.job.status == "Failed" and view.job.error_code == "source_unavailable"
    assert f"of {len(tgz) + 999}" in (view.job.error_message or "")
    _assert_nothing_left(impatient, who)


def test_a_stalled_download_times_out(impatient: Services, hub: FakeHub, tgz: bytes) -> None:
    who = principal_for(impatient, "alice")
    view = upload(impatient, who, "stall", hub.serve_file("stall.tgz", tgz, seconds=60, ranges=False))
    assert view.job.status == "Failed" and view.job.error_code == "source_unavailable"
    assert "ReadTimeout" in (view.job.error_message or "")
    _assert_nothing_left(impatient, who)


def test_missing_object_and_denied_access(
    services: Services, alice: Principal, s3: Any, bucket: str, presign: Any, tgz: bytes
) -> None:
    url = presign(tgz, key="gone.tgz")
    s3.delete_object(Bucket=bucket, Key="gone.tgz")
    view = upload(services, alice, "gone", url)
    assert view.job.status == "Failed" and "HTTP 404" in (view.job.error_message or "")
    assert "Signature" not in (view.job.error_message or "")
    tampered = url.replace("X-Amz-Signature=", "X-Amz-Signature=00")
    view = upload(services, alice, "denied", tampered)
    assert view.job.status == "Failed"
    assert view.job.error_message and ("HTTP 403" in view.job.error_message or "HTTP 404" in view.job.error_message)
    _assert_nothing_left(services, alice)


def test_a_corrupt_gzip_is_rejected(services: Services, alice: Principal, hub: FakeHub, tgz: bytes) -> None:
    broken = tgz[:200] + bytes(b ^ 0xFF for b in tgz[200:400]) + tgz[400:]
    view = upload(services, alice, "corrupt", hub.serve_file("corrupt.tgz", broken))
    assert view.job.status == "Failed" and view.job.error_code == "archive_rejected"
    _assert_nothing_left(services, alice)


def test_a_gzip_bomb_is_rejected(services: Services, alice: Principal, hub: FakeHub) -> None:
    bomb = archive_bytes({"config.json": b"\0" * (64 * 2**20)}, "tar.gz")
    assert len(bomb) < 2**20
    view = upload(services, alice, "bomb", hub.serve_file("bomb.tgz", bomb))
    assert view.job.status == "Failed" and view.job.error_code == "archive_rejected"
    assert "inflates more than 100x" in (view.job.error_message or "")
    _assert_nothing_left(services, alice)


def test_a_hostile_archive_fails_the_job_naming_the_member(
    services: Services, alice: Principal, hub: FakeHub, tiny_llama: Path
) -> None:
    files = files_of(tiny_llama) | {"../../escape.json": b"{}"}
    view = upload(services, alice, "escape", hub.serve_file("escape.tar", archive_bytes(files, "tar")))
    assert view.job.status == "Failed" and view.job.error_code == "archive_rejected"
    assert "'../../escape.json'" in (view.job.error_message or "")
    assert not (services.settings.data_dir.parent / "escape.json").exists()
    _assert_nothing_left(services, alice)


@pytest.fixture
def tiny_disk(tmp_path: Path, db_url: str, hub: FakeHub) -> Iterator[Services]:
    """The data directory on a 256 KiB tmpfs: a real 'No space left on device'."""
    import subprocess

    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root); the full-disk test needs one")
    svc = open_services(make_settings(disk, db_url, hub.url))
    yield svc
    svc.db.dispose()
    subprocess.run(["umount", str(disk)], check=True)


@pytest.mark.parametrize("fmt", ["tar.gz", "zip"])
def test_a_full_disk_during_extraction_fails_cleanly(
    tiny_disk: Services, hub: FakeHub, tiny_llama: Path, fmt: str
) -> None:
    import numpy as np

    who = principal_for(tiny_disk, "alice")
    files = files_of(tiny_llama) | {"extra.safetensors": np.random.default_rng(0).bytes(2**20)}
    view = upload(tiny_disk, who, "full", hub.serve_file(f"full.{fmt}", archive_bytes(files, fmt)))
    assert view.job.status == "Failed" and view.job.error_code == "staging_full", view.job.error_message
    assert "no space left in the staging area" in (view.job.error_message or "")
    _assert_nothing_left(tiny_disk, who)
    # The disk is usable again: a model that fits still goes through.
    assert (
        upload(
            tiny_disk, who, "fits", hub.serve_file("fits.tar", archive_bytes(files_of(tiny_llama), "tar"))
        ).job.status
        == "Complete"
    )


def test_a_private_address_is_refused_at_submission(services: Services, alice: Principal) -> None:
    # 2130706434 is 127.0.0.2: the tests allow 127.0.0.1 only.
    for url in ("https://169.254.169.254/latest/meta-data/m.tar.gz", "https://2130706434/m.tar.gz"):
        with pytest.raises(InvalidSource, match="refused to fetch") as caught:
            upload(services, alice, "meta", url + "?X-Amz-Signature=secretsig")
        assert "secretsig" not in caught.value.message
    assert services.catalog.list_jobs(alice) == []
    _assert_nothing_left(services, alice)


def test_a_redirect_to_cloud_metadata_fails_the_job(services: Services, alice: Principal, hub: FakeHub) -> None:
    url = hub.redirect("meta", "http://169.254.169.254/latest/meta-data/iam/security-credentials/")
    view = upload(services, alice, "meta", url + "?X-Amz-Signature=secretsig")
    assert view.job.status == "Failed"
    assert view.job.error_code == "fetch_refused", view.job.error_message
    assert "169.254.169.254" in (view.job.error_message or "") and "link-local" in (view.job.error_message or "")
    assert "secretsig" not in str(view.job.error_message) + "".join(u.message for u in view.updates)
    _assert_nothing_left(services, alice)


def test_a_hub_redirect_to_a_private_address_fails_the_job(
    services: Services, alice: Principal, hub: FakeHub, tiny_llama: Path
) -> None:
    hub.add("evil/cdn", files_of(tiny_llama), cdn="http://10.0.0.7/lfs")
    view = upload(services, alice, "cdn", "evil/cdn")
    assert view.job.status == "Failed"
    assert view.job.error_code == "fetch_refused" and "10.0.0.7" in (view.job.error_message or "")
    _assert_nothing_left(services, alice)


def test_a_hub_on_a_private_address_needs_the_operator_allowlist(
    tmp_path: Path, db_url: str, hub: FakeHub, tiny_llama: Path
) -> None:
    svc = open_services(make_settings(tmp_path, db_url, hub.url, fetch_allow=""))
    try:
        who = principal_for(svc, "alice")
        hub.add("org/private-hub", files_of(tiny_llama))
        view = upload(svc, who, "m", "org/private-hub")
        assert view.job.status == "Failed" and view.job.error_code == "fetch_refused"
        assert "MODELPORT_FETCH_ALLOW" in (view.job.error_message or "")
    finally:
        svc.db.dispose()
