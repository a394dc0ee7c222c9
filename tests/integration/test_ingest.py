"""Ingest end to end at the service level: real S3 server, presigned URLs, hub server, blob store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from modelport.accounts.service import Principal
from modelport.ingest.cleanup import collect_garbage
from modelport.services import Services
from tests.integration.helpers import stored_blobs, upload
from tests.support.fakehub import FakeHub
from tests.support.tinymodels import archive_bytes, files_of


@pytest.mark.parametrize("fmt", ["tar.gz", "tar", "zip"])
def test_presigned_archive_becomes_a_model(
    services: Services, alice: Principal, presign: Any, tiny_llama: Path, fmt: str
) -> None:
    files = files_of(tiny_llama)
    url = presign(archive_bytes(files, fmt), key=f"m.{fmt}")
    view = upload(services, alice, "tiny", url)
    assert view.job.status == "Complete", view.updates[-1].message
    stages = [u.status for u in view.updates]
    assert stages[:2] == ["Queued", "Running"] and stages[-1] == "Complete"
    assert {"downloading", "extracting", "validating", "storing"} <= set(stages)
    model = services.catalog.get_model(alice, "alice/tiny")
    manifest = model.manifest
    assert manifest is not None
    assert manifest.architecture == "LlamaForCausalLM" and manifest.type == "chat"
    assert manifest.context_length == 128 and (manifest.parameters or 0) > 0
    assert {f.path for f in manifest.files} == set(files)
    for entry in manifest.files:
        with services.blobs.open(entry.sha256) as blob:
            assert blob.read() == files[entry.path]
    assert not list(services.settings.staging_dir.iterdir())


def test_archive_type_is_detected_by_content_not_name(
    services: Services, alice: Principal, presign: Any, tiny_llama: Path
) -> None:
    url = presign(archive_bytes(files_of(tiny_llama), "zip"), key="weights.tar.gz")
    assert upload(services, alice, "misnamed", url).job.status == "Complete"


def test_wrapping_folder_is_flattened_and_reported(
    services: Services, alice: Principal, presign: Any, tiny_llama: Path
) -> None:
    url = presign(archive_bytes(files_of(tiny_llama), "tar.gz", wrap="tiny-llama"))
    view = upload(services, alice, "wrapped", url)
    assert view.job.status == "Complete"
    assert any("flattened" in u.message and "tiny-llama" in u.message for u in view.updates)
    manifest = services.catalog.get_model(alice, "wrapped").manifest
    assert manifest is not None
    paths = {f.path for f in manifest.files}
    assert "config.json" in paths


def test_hugging_face_repo_takes_only_what_a_model_needs(
    services: Services, alice: Principal, hub: FakeHub, tiny_llama: Path
) -> None:
    files = files_of(tiny_llama) | {"README.md": b"# hi", "pytorch_model.onnx": b"x", "images/a.png": b"png"}
    hub.add("org/tiny-llama", files)
    view = upload(services, alice, "from-hub", "org/tiny-llama")
    assert view.job.status == "Complete", [u.message for u in view.updates]
    gets = [
        p.split("/resolve/", 1)[1]
        for m, p, _ in hub.requests
        if m == "GET" and p.startswith("/org/tiny-llama/resolve/")
    ]
    # Every file is fetched at the commit the repo pointed to when the job began, not a moving "main".
    assert {g.split("/", 1)[0] for g in gets} == {hub.repos["org/tiny-llama"].sha}
    assert {g.split("/", 1)[1] for g in gets} == set(files_of(tiny_llama))


def test_private_repo_needs_the_token_and_never_stores_it(
    services: Services, alice: Principal, hub: FakeHub, tiny_llama: Path
) -> None:
    token = "hf_privatetokenvalue123"
    hub.add("org/private-llama", files_of(tiny_llama), token=token)
    denied = upload(services, alice, "no-token", "https://huggingface.co/org/private-llama")
    assert denied.job.status == "Failed" and denied.job.error_code == "source_unavailable"
    assert "private" in (denied.job.error_message or "")
    ok = upload(services, alice, "with-token", "org/private-llama", hf_token=token)
    assert ok.job.status == "Complete"
    with services.db.engine.connect() as conn:
        from sqlalchemy import text

        for table in ("jobs", "job_status_updates", "job_secrets", "models"):
            dump = str(conn.execute(text(f"SELECT * FROM {table}")).fetchall())
            assert token not in dump, table


def test_adapter_is_checked_against_its_base(
    services: Services, alice: Principal, presign: Any, tiny_llama: Path, tiny_lora: Path
) -> None:
    assert (
        upload(services, alice, "base", presign(archive_bytes(files_of(tiny_llama), "tar"), "b.tar")).job.status
        == "Complete"
    )
    view = upload(
        services,
        alice,
        "my-lora",
        presign(archive_bytes(files_of(tiny_lora), "zip"), "a.zip"),
        model_type="adapter",
        base_model="base",
    )
    assert view.job.status == "Complete", [u.message for u in view.updates]
    assert view.job.type == "adapter_upload"
    adapter = services.catalog.get_model(alice, "my-lora")
    assert adapter.kind == "adapter" and services.catalog.base_name(adapter) == "alice/base"
    assert adapter.manifest is not None and adapter.manifest.adapter is not None
    assert adapter.manifest.adapter.rank == 4


def test_adapter_for_a_different_base_fails_with_the_reason(
    services: Services, alice: Principal, presign: Any, tmp_path: Path, tiny_lora: Path
) -> None:
    from tests.support.tinymodels import make_llama

    wider = make_llama(tmp_path / "wider", hidden=32, heads=4, kv_heads=4)
    upload(services, alice, "wider", presign(archive_bytes(files_of(wider), "tar"), "w.tar"))
    view = upload(
        services,
        alice,
        "mismatch",
        presign(archive_bytes(files_of(tiny_lora), "tar"), "a.tar"),
        model_type="adapter",
        base_model="wider",
    )
    assert view.job.status == "Failed" and view.job.error_code == "validation_failed"
    assert any("do not fit the base weight" in u.message for u in view.updates)


def test_failed_ingest_leaves_no_files_and_no_rows(
    services: Services, alice: Principal, presign: Any, tiny_llama: Path
) -> None:
    files = files_of(tiny_llama)
    files["pytorch_model.bin"] = b"pickle!"
    files["modeling_evil.py"] = b"import os"
    view = upload(services, alice, "bad", presign(archive_bytes(files, "tar.gz")))
    assert view.job.status == "Failed" and view.job.error_code == "validation_failed"
    messages = " ".join(u.message for u in view.updates)
    assert "pytorch_model.bin" in messages and "safetensors" in messages and "modeling_evil.py" in messages
    assert services.catalog.list_models(alice) == []
    assert stored_blobs(services) == set()
    assert not list(services.settings.staging_dir.iterdir())
    # The name is free again.
    assert (
        upload(services, alice, "bad", presign(archive_bytes(files_of(tiny_llama), "tar"), "ok.tar")).job.status
        == "Complete"
    )


def test_cleanup_removes_blobs_nothing_references(
    services: Services, alice: Principal, presign: Any, tiny_llama: Path, tmp_path: Path
) -> None:
    upload(services, alice, "keep", presign(archive_bytes(files_of(tiny_llama), "tar")))
    kept = stored_blobs(services)
    orphan = tmp_path / "orphan"
    orphan.write_bytes(b"left by a crash between store and register")
    import hashlib

    services.blobs.put(orphan, hashlib.sha256(orphan.read_bytes()).hexdigest())
    (services.settings.staging_dir / "job-dead").mkdir()
    assert collect_garbage(services.db, services.blobs, services.settings) == (1, 1)
    assert stored_blobs(services) == kept
    services.catalog.delete_model(alice, "keep")
    collect_garbage(services.db, services.blobs, services.settings)
    assert stored_blobs(services) == set()
