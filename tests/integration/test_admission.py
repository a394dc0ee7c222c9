"""Admission proof: an artifact is Complete only once it has been shown to load and run."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from modelport.accounts.service import Principal
from modelport.services import Services
from tests.conftest import make_settings, open_services, principal_for
from tests.integration.helpers import stored_blobs, upload
from tests.support.fakehub import FakeHub
from tests.support.tinymodels import archive_bytes, files_of, make_lora


def _serve(hub: FakeHub, model: Path, name: str) -> str:
    return hub.serve_file(name, archive_bytes(files_of(model), "tar"))


def _broken_copy(tmp_path: Path, tiny_llama: Path, edit: str) -> Path:
    model = tmp_path / edit
    shutil.copytree(tiny_llama, model)
    weights = load_file(str(model / "model.safetensors"))
    if edit == "missing":
        del weights["model.layers.1.mlp.down_proj.weight"]
    elif edit == "nan":
        weights["lm_head.weight"][:] = np.nan
    save_file(weights, str(model / "model.safetensors"))
    if edit == "template":
        config = json.loads((model / "tokenizer_config.json").read_text())
        config["chat_template"] = "{{ messages[0]['content'] | nosuchfilter }}"
        (model / "tokenizer_config.json").write_text(json.dumps(config))
    if edit == "shape":
        config = json.loads((model / "config.json").read_text())
        config["intermediate_size"] = 48
        (model / "config.json").write_text(json.dumps(config))
    return model


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        ("missing", "the weights lack 1 parameters of the architecture"),
        ("shape", "has shape [32, 16], the architecture needs [48, 16]"),
        ("nan", "NaN or infinite"),
        ("template", "chat template"),
    ],
)
def test_models_that_do_not_run_are_refused(
    services: Services, alice: Principal, hub: FakeHub, tmp_path: Path, tiny_llama: Path, edit: str, reason: str
) -> None:
    view = upload(services, alice, edit, _serve(hub, _broken_copy(tmp_path, tiny_llama, edit), f"{edit}.tar"))
    assert view.job.status == "Failed" and view.job.error_code == "admission_failed", view.job.error_message
    assert reason in (view.job.error_message or "")
    assert services.catalog.list_models(alice) == [] and stored_blobs(services) == set()


def test_a_good_model_records_its_admission(
    services: Services, alice: Principal, hub: FakeHub, tiny_llama: Path
) -> None:
    view = upload(services, alice, "good", _serve(hub, tiny_llama, "good.tar"))
    assert view.job.status == "Complete"
    assert any("forward pass ok" in u.message for u in view.updates)
    manifest = services.catalog.get_model(alice, "good").manifest
    admission = manifest.admission if manifest else None
    assert admission is not None and admission.output_shape is not None
    assert admission.checked == "forward" and admission.output_shape[-1] == 18


def test_an_adapter_that_changes_nothing_is_refused(
    services: Services, alice: Principal, hub: FakeHub, tmp_path: Path, tiny_llama: Path
) -> None:
    assert upload(services, alice, "base", _serve(hub, tiny_llama, "base.tar")).job.status == "Complete"
    lora = make_lora(tmp_path / "zero", tiny_llama)
    weights = {
        k: (np.zeros_like(v) if "lora_B" in k else v)
        for k, v in load_file(str(lora / "adapter_model.safetensors")).items()
    }
    save_file(weights, str(lora / "adapter_model.safetensors"))
    view = upload(services, alice, "noop", _serve(hub, lora, "noop.tar"), model_type="adapter", base_model="base")
    assert view.job.status == "Failed" and view.job.error_code == "admission_failed"
    assert "changes none of its 4 target modules" in (view.job.error_message or "")
    good = upload(
        services,
        alice,
        "real",
        _serve(hub, make_lora(tmp_path / "real", tiny_llama), "real.tar"),
        model_type="adapter",
        base_model="base",
    )
    assert good.job.status == "Complete"
    assert any("changes 4 of 4 target modules" in u.message for u in good.updates)


@pytest.fixture
def small_budget(tmp_path: Path, db_url: str, hub: FakeHub) -> Iterator[Services]:
    svc = open_services(make_settings(tmp_path, db_url, hub.url, admission_max_bytes=1000))
    yield svc
    svc.db.dispose()


def test_models_over_the_budget_get_the_structural_check_only(
    small_budget: Services, hub: FakeHub, tmp_path: Path, tiny_llama: Path
) -> None:
    who = principal_for(small_budget, "alice")
    view = upload(small_budget, who, "big", _serve(hub, tiny_llama, "big.tar"))
    assert view.job.status == "Complete"
    manifest = small_budget.catalog.get_model(who, "big").manifest
    admission = manifest.admission if manifest else None
    assert admission is not None and admission.reason is not None
    assert admission.checked == "meta" and "forward pass skipped" in admission.reason
    broken = _broken_copy(tmp_path, tiny_llama, "missing")
    assert upload(small_budget, who, "broken", _serve(hub, broken, "b.tar")).job.error_code == "admission_failed"


def test_a_check_that_overruns_its_time_is_stopped(tmp_path: Path, db_url: str, hub: FakeHub, tiny_llama: Path) -> None:
    svc = open_services(make_settings(tmp_path, db_url, hub.url, check_timeout_s=0.01))
    try:
        who = principal_for(svc, "alice")
        view = upload(svc, who, "slow", _serve(hub, tiny_llama, "slow.tar"))
        assert view.job.status == "Failed" and view.job.error_code == "check_timeout"
        assert "longer than 0.01 s" in (view.job.error_message or "")
        assert stored_blobs(svc) == set() and list(svc.settings.staging_dir.iterdir()) == []
    finally:
        svc.db.dispose()
