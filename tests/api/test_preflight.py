"""``POST /api/v1/models/preflight``, and the same checks at ``POST /v1/models`` and ``POST /v0/models``:
a taken name, an unknown base or files of the wrong kind are refused before any byte moves or any job
exists, and nothing of another account is found or suggested."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from modelport.app import create_app
from modelport.storage.db.tables import Job, Model
from tests.api.test_together_api import assert_envelope
from tests.conftest import database, make_settings
from tests.integration.helpers import run_all_jobs
from tests.support.fakehub import FakeHub
from tests.support.tinymodels import archive_bytes, files_of

MODEL_FILES = ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
ADAPTER_FILES = ["adapter_config.json", "adapter_model.safetensors", "README.md"]


@dataclass
class World:
    client: TestClient
    alice: dict[str, str]
    bob: dict[str, str]
    ids: dict[str, str]

    def preflight(self, who: dict[str, str], **body: Any) -> Any:
        return self.client.post("/api/v1/models/preflight", json=body, headers=who)

    def rows(self) -> tuple[int, int]:
        with self.client.app.state.services.db.read() as s:  # type: ignore[attr-defined]
            return s.scalar(select(func.count()).select_from(Job)), s.scalar(select(func.count()).select_from(Model))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, hub: FakeHub, tiny_llama: Path, tiny_lora: Path) -> Iterator[World]:
    """alice: the full model ``tiny-llama`` and the adapter ``my-lora`` on it; bob: ``bobs-llama``."""
    tmp = tmp_path_factory.mktemp("preflight")
    with database(tmp) as url:
        app = create_app(make_settings(tmp, url, hub.url), run_workers=False)
        with TestClient(app) as client:
            alice = {"Authorization": f"Bearer {app.state.services.accounts.create_key('alice')}"}
            bob = {"Authorization": f"Bearer {app.state.services.accounts.create_key('bob')}"}
            hub.add("pf/base", files_of(tiny_llama))
            hub.add("pf/lora", files_of(tiny_lora))
            ids: dict[str, str] = {}
            for who, body in (
                (alice, {"model_name": "tiny-llama", "model_source": "pf/base"}),
                (bob, {"model_name": "bobs-llama", "model_source": "pf/base"}),
                (alice, {"model_name": "my-lora", "model_source": "pf/lora", "model_type": "adapter",
                         "base_model": "tiny-llama"}),
            ):  # fmt: skip
                resp = client.post("/v1/models", json=body, headers=who)
                assert resp.status_code == 200, resp.text
                ids[body["model_name"]] = resp.json()["data"]["model_id"]
                run_all_jobs(app.state.services)
            yield World(client, alice, bob, ids)


def test_a_model_and_an_adapter_pass_and_say_what_they_are(world: World) -> None:
    resp = world.preflight(world.alice, model_name="new-model", files=MODEL_FILES)
    assert resp.status_code == 200, resp.text
    assert resp.json() == {
        "object": "preflight",
        "model_name": "alice/new-model",
        "model_type": "model",
        "detected_type": "model",
        "base_model": None,
    }
    # The base by short name, full name or id: always answered with its full name, as the job will use it.
    for ref in ("tiny-llama", "alice/tiny-llama", world.ids["tiny-llama"]):
        body = {"model_name": "new-lora", "model_type": "adapter", "base_model": ref, "files": ADAPTER_FILES}
        resp = world.preflight(world.alice, **body)
        assert resp.status_code == 200, resp.text
        assert resp.json()["base_model"] == "alice/tiny-llama" and resp.json()["detected_type"] == "adapter"
    # Without files nothing is detected; a folder wrapping everything is looked into, as the job does.
    plain = world.preflight(world.alice, model_name="alice/other", model_source="org/repo").json()
    assert plain["detected_type"] is None and plain["model_name"] == "alice/other"
    wrapped = [f"lora/{f}" for f in ADAPTER_FILES] + [".DS_Store", "__MACOSX/._x"]
    body = {"model_name": "w", "model_type": "adapter", "files": wrapped}
    assert world.preflight(world.alice, **body).json()["detected_type"] == "adapter"


def test_a_taken_name_is_409_even_while_its_model_is_still_uploading(world: World) -> None:
    err = assert_envelope(world.preflight(world.alice, model_name="tiny-llama"), 409, "model_name_taken")
    assert err["param"] == "model_name" and "alice/tiny-llama" in err["message"]
    # Another account's identical name is no conflict: names live in each account's namespace.
    assert world.preflight(world.bob, model_name="tiny-llama").status_code == 200
    body = {"model_name": "in-flight", "model_source": "pf/base"}
    assert world.client.post("/v1/models", json=body, headers=world.alice).status_code == 200
    err = assert_envelope(world.preflight(world.alice, model_name="in-flight"), 409, "model_name_taken")
    assert "still uploading" in err["message"]
    # Nor is it a base yet: the adapter is refused until the base's job is Complete.
    body = {"model_name": "early", "model_type": "adapter", "base_model": "in-flight"}
    err = assert_envelope(world.preflight(world.alice, **body), 400, "base_model_not_found")
    assert "'alice/in-flight' is not ready yet" in err["message"]


def test_a_misspelled_base_gets_a_suggestion_from_the_callers_own_models(world: World) -> None:
    for typo in ("tiny-lama", "alice/tiny-lama", "tiny_llama"):
        body = {"model_name": "x", "model_type": "adapter", "base_model": typo}
        err = assert_envelope(world.preflight(world.alice, **body), 400, "base_model_not_found")
        assert err["param"] == "base_model"
        assert err["message"].endswith("did you mean 'alice/tiny-llama'?"), err["message"]
    body = {"model_name": "x", "model_type": "adapter", "base_model": "zzz-unrelated"}
    err = assert_envelope(world.preflight(world.alice, **body), 400, "base_model_not_found")
    assert "did you mean" not in err["message"] and "GET /v1/models" in err["message"]
    # An adapter is no base; the answer names the adapter's own base.
    body = {"model_name": "x", "model_type": "adapter", "base_model": "my-lora"}
    err = assert_envelope(world.preflight(world.alice, **body), 400, "base_model_not_found")
    assert "is an adapter" in err["message"] and "alice/tiny-llama" in err["message"]


def test_another_accounts_base_is_never_found_nor_suggested(world: World) -> None:
    for ref in ("bob/bobs-llama", world.ids["bobs-llama"], "bobs-llama", "bobs-lama"):
        body = {"model_name": "x", "model_type": "adapter", "base_model": ref}
        err = assert_envelope(world.preflight(world.alice, **body), 400, "base_model_not_found")
        assert "did you mean 'bob" not in err["message"], err["message"]
        assert "bob/bobs-llama" not in err["message"].replace(repr(ref), ""), err["message"]
    # And bob, typing close to alice's model, is offered nothing of hers.
    body = {"model_name": "x", "model_type": "adapter", "base_model": "tiny-lama"}
    err = assert_envelope(world.preflight(world.bob, **body), 400, "base_model_not_found")
    assert "alice" not in err["message"]
    body = {"model_name": "x", "model_type": "adapter", "base_model": "alice/tiny-llama"}
    err = assert_envelope(world.preflight(world.bob, **body), 400, "base_model_not_found")
    assert "did you mean" not in err["message"]


def test_files_of_the_other_kind_are_a_type_mismatch(world: World) -> None:
    err = assert_envelope(world.preflight(world.alice, model_name="x", files=ADAPTER_FILES), 400, "model_type_mismatch")
    assert err["param"] == "model_type"
    assert "LoRA adapter (adapter_config.json, no config.json)" in err["message"]
    assert "send model_type 'adapter' with its base_model" in err["message"]
    body = {"model_name": "x", "model_type": "adapter", "base_model": "tiny-llama", "files": MODEL_FILES}
    err = assert_envelope(world.preflight(world.alice, **body), 400, "model_type_mismatch")
    assert "full model" in err["message"] and "send model_type 'model'" in err["message"]
    # A folder holding both configs fits either type (a merged checkpoint that kept its adapter config,
    # an adapter saved with its base's config): the job checks it as the type asked for.
    both = [*MODEL_FILES, "adapter_config.json"]
    assert world.preflight(world.alice, model_name="x", files=both).json()["detected_type"] == "model"
    body = {"model_name": "x", "model_type": "adapter", "base_model": "tiny-llama", "files": both}
    assert world.preflight(world.alice, **body).json()["detected_type"] == "adapter"


def test_files_without_any_config_are_a_clear_400(world: World) -> None:
    err = assert_envelope(world.preflight(world.alice, model_name="x", files=["model.safetensors"]), 400)
    assert err["code"] == "invalid_request" and err["param"] == "files"
    assert "no config.json or adapter_config.json at the top level" in err["message"]
    nested = ["a/config.json", "b/model.safetensors"]
    err = assert_envelope(world.preflight(world.alice, model_name="x", files=nested), 400, "invalid_request")
    assert "found a/config.json" in err["message"]
    err = assert_envelope(world.preflight(world.alice, model_name="x", files=["../config.json"]), 400)
    assert err["param"] == "files"


@pytest.mark.parametrize(
    ("body", "code", "param"),
    [
        ({"model_source": "ftp://host/m.zip"}, "invalid_source", "model_source"),
        ({"model_source": "https://10.0.0.7/m.tar"}, "invalid_source", "model_source"),
        ({"model_source": "not a source"}, "invalid_source", "model_source"),
        ({"model_source": "file-0000"}, "invalid_source", "model_source"),
        ({"model_type": "lora"}, "invalid_request", "model_type"),
        ({"base_model": "tiny-llama"}, "invalid_request", "base_model"),
        ({"model_name": "../etc"}, "invalid_model_name", "model_name"),
    ],
)
def test_bad_fields_are_400_naming_the_field(world: World, body: dict[str, Any], code: str, param: str) -> None:
    err = assert_envelope(world.preflight(world.alice, **({"model_name": "x"} | body)), 400, code)
    assert err["param"] == param


def test_preflight_needs_a_key_and_a_body(world: World) -> None:
    assert_envelope(world.client.post("/api/v1/models/preflight", json={"model_name": "x"}), 401, "invalid_api_key")
    err = assert_envelope(world.preflight(world.alice, model_type="model"), 422, "invalid_request")
    assert err["param"] == "model_name"


def test_uploads_are_refused_before_a_job_exists(world: World) -> None:
    before = world.rows()
    refusals = [
        ({"model_name": "tiny-llama", "model_source": "pf/base"}, 409, "Model name already exists"),
        ({"model_name": "y", "model_source": "pf/lora", "model_type": "adapter", "base_model": "tiny-lama"},
         400, "did you mean 'alice/tiny-llama'?"),
        ({"model_name": "y", "model_source": "pf/lora", "model_type": "adapter", "base_model": "bob/bobs-llama"},
         400, "is not one of your models"),
    ]  # fmt: skip
    for body, status, says in refusals:
        err = assert_envelope(world.client.post("/v1/models", json=body, headers=world.alice), status)
        assert says in err["message"], err
    nebius = world.client.post("/v0/models", json={"name": "y", "source": "pf/lora", "base_model": "tiny-lama"},
                               headers=world.alice)  # fmt: skip
    assert nebius.status_code == 400 and "did you mean 'alice/tiny-llama'?" in nebius.json()["detail"]
    assert world.rows() == before  # no job, no model row left behind
    # An accepted base reaches the job as the full name the ingest pipeline looks up.
    body = {"model_name": "by-id", "model_source": "pf/lora", "model_type": "adapter",
            "base_model": world.ids["tiny-llama"]}  # fmt: skip
    job_id = world.client.post("/v1/models", json=body, headers=world.alice).json()["data"]["job_id"]
    job = world.client.get(f"/v1/jobs/{job_id}", headers=world.alice).json()
    assert job["args"]["baseModel"] == "alice/tiny-llama"


@pytest.mark.parametrize(
    ("fmt", "wrap"), [("tar", None), ("zip", None), ("tar", "a-folder-name-longer-than-a-tar-header-holds-" * 3)]
)
def test_an_uploaded_archive_of_the_wrong_kind_is_refused_at_submission(
    world: World, tiny_llama: Path, tiny_lora: Path, fmt: str, wrap: str | None
) -> None:
    """Uncompressed tar headers and the zip directory are read at submission (nothing is inflated)."""

    def uploaded(files: dict[str, bytes], fmt: str = fmt) -> str:
        data = archive_bytes(files, fmt, wrap=wrap)
        resp = world.client.post("/v0/models/upload", files={"file": (f"a.{fmt}", data)}, headers=world.alice)
        return str(resp.json()["id"])

    before = world.rows()
    lora, model = uploaded(files_of(tiny_lora)), uploaded(files_of(tiny_llama))
    err = assert_envelope(
        world.client.post("/v1/models", json={"model_name": "z", "model_source": lora}, headers=world.alice),
        400,
        "model_type_mismatch",
    )
    assert "send model_type 'adapter' with its base_model" in err["message"]
    body = {"model_name": "z", "model_source": model, "model_type": "adapter", "base_model": "tiny-llama"}
    err = assert_envelope(world.client.post("/v1/models", json=body, headers=world.alice), 400, "model_type_mismatch")
    assert "full model" in err["message"]
    weights_only = uploaded({"model.safetensors": files_of(tiny_llama)["model.safetensors"]})
    body = {"model_name": "z", "model_source": weights_only}
    err = assert_envelope(world.client.post("/v1/models", json=body, headers=world.alice), 400, "invalid_request")
    assert err["param"] == "model_source" and "no config.json" in err["message"]
    assert world.rows() == before
    # A .tar.gz would have to be inflated to be read: the job checks it.
    gz = uploaded(files_of(tiny_lora), "tar.gz")
    body = {"model_name": f"gz-{gz[-12:]}", "model_source": gz}
    resp = world.client.post("/v1/models", json=body, headers=world.alice)
    assert resp.status_code == 200, resp.text
