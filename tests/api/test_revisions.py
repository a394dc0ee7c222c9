"""Revisions: a model is a name with an ordered list of immutable revisions.

A new upload to a model adds a revision, which serves once ready (the previous one serves until then,
and stays the head if the new one fails); ``name@N`` pins one in a request or an endpoint; deleting a
revision something pins, or a model's last ready revision, is refused with the reason."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from modelport.app import create_app
from modelport.cli.main import cli
from tests.api.conftest import Served
from tests.conftest import database, make_settings
from tests.integration.helpers import run_all_jobs
from tests.support.fakehub import FakeHub
from tests.support.inproc import serve_in_thread
from tests.support.tinymodels import files_of, make_llama, make_lora

pytestmark = pytest.mark.db_agnostic


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, hub: FakeHub) -> Iterator[Served]:
    """``acme/chat`` at revision 1 (seed 1) and an adapter on it; ``acme/chat-v2`` and ``acme/chat-v3`` in
    the hub are the same architecture with other weights, for new revisions."""
    tmp = tmp_path_factory.mktemp("revisions")
    with database(tmp) as url:
        app = create_app(make_settings(tmp, url, hub.url), run_workers=False)
        with TestClient(app) as client:
            key = app.state.services.accounts.create_key("acme")
            served = Served(client, {"Authorization": f"Bearer {key}"}, key)
            base = make_llama(tmp / "v1", seed=1)
            served.upload(hub, "chat", files_of(base))
            lora = make_lora(tmp / "lora", base, seed=3)
            served.upload(hub, "lora", files_of(lora), model_type="adapter", base_model="acme/chat")
            hub.add("acme/chat-v2", files_of(make_llama(tmp / "v2", seed=2)))
            hub.add("acme/chat-v3", files_of(make_llama(tmp / "v3", seed=3)))
            yield served


def _revisions(served: Served, model: str) -> list[dict[str, Any]]:
    resp = served.client.get(f"/api/v1/models/{model}/revisions", headers=served.headers)
    assert resp.status_code == 200, resp.text
    items: list[dict[str, Any]] = resp.json()["data"]
    return items


def _add_revision(served: Served, model: str, source: str) -> dict[str, Any]:
    resp = served.post(f"/api/v1/models/{model}/revisions", {"model_source": source})
    assert resp.status_code == 202, resp.text
    run_all_jobs(served.client.app.state.services)  # type: ignore[attr-defined]
    job = served.client.get(f"/v1/jobs/{resp.json()['job_id']}", headers=served.headers).json()
    return {**resp.json(), "job": job}


def _greedy(served: Served, model: str) -> str:
    body = {"model": model, "prompt": "the cat", "max_tokens": 8, "temperature": 0}
    resp = served.post("/v1/completions", body)
    assert resp.status_code == 200, resp.text
    text: str = resp.json()["choices"][0]["text"]
    return text


def test_a_new_revision_serves_once_ready_and_older_ones_stay_reachable_by_number(served: Served) -> None:
    before, adapter_before = _greedy(served, "acme/chat"), _greedy(served, "acme/lora")
    [first] = _revisions(served, "acme/chat")
    assert (first["number"], first["status"], first["head"]) == (1, "ready", True)
    assert first["source"] == "acme/chat" and first["bytes"] > 0

    added = _add_revision(served, "acme/chat", "acme/chat-v2")
    assert added["job"]["status"] == "Complete", added["job"]
    assert added["job"]["args"]["revision"] == 2
    assert "revision 2 of acme/chat is ready" in added["job"]["status_updates"][-1]["message"]

    one, two = _revisions(served, "acme/chat")
    assert (one["head"], two["head"], two["status"], two["id"]) == (False, True, "ready", added["revision_id"])
    detail = served.client.get("/v1/models/acme/chat", headers=served.headers).json()
    assert detail["revision_id"] == two["id"]
    pinned = served.client.get("/v1/models/acme/chat@1", headers=served.headers).json()
    assert pinned["revision_id"] == one["id"] and pinned["model_id"] == detail["model_id"]

    # Other weights answer now; revision 1 still answers as before, by number or by id.
    after = _greedy(served, "acme/chat")
    assert after != before
    assert _greedy(served, "acme/chat@1") == before
    assert _greedy(served, f"acme/chat@{one['id']}") == before
    assert _greedy(served, "acme/chat@2") == after
    # The adapter runs on the base revision it was checked against, not on the new head.
    assert _greedy(served, "acme/lora") == adapter_before

    files = served.client.get(f"/api/v1/models/acme/chat/revisions/{two['id']}", headers=served.headers).json()
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {f["path"] for f in files["files"]}


def test_a_failed_revision_keeps_its_problems_and_the_model_keeps_serving(served: Served, hub: FakeHub) -> None:
    head = next(r for r in _revisions(served, "acme/chat") if r["head"])
    hub.add("acme/broken", {"config.json": b"{not json", "model.safetensors": b"\x00" * 16})
    added = _add_revision(served, "acme/chat", "acme/broken")
    assert added["job"]["status"] == "Failed"
    failed = next(r for r in _revisions(served, "acme/chat") if r["id"] == added["revision_id"])
    assert failed["status"] == "failed" and failed["problems"] and not failed["head"]
    assert next(r for r in _revisions(served, "acme/chat") if r["head"])["id"] == head["id"]
    assert served.client.get("/v1/models/acme/chat", headers=served.headers).status_code == 200
    resp = served.post("/v1/completions", {"model": f"acme/chat@{failed['number']}", "prompt": "a", "max_tokens": 1})
    assert resp.status_code == 404 and "failed" in resp.json()["error"]["message"]
    # A failed revision holds nothing and can be deleted.
    gone = served.client.delete(f"/api/v1/models/acme/chat/revisions/{failed['id']}", headers=served.headers)
    assert gone.status_code == 200, gone.text


def test_deleting_revisions_is_refused_while_pinned_or_last(served: Served) -> None:
    added = _add_revision(served, "acme/chat", "acme/chat-v3")
    assert added["job"]["status"] == "Complete"
    numbers = [r["number"] for r in _revisions(served, "acme/chat")]
    oldest = numbers[0]
    hardware = served.client.get("/v1/hardware", headers=served.headers).json()["data"][0]["id"]
    body = {"model": f"acme/chat@{oldest}", "hardware": hardware, "state": "STOPPED"}
    endpoint = served.post("/v1/endpoints", body)
    assert endpoint.status_code == 200, endpoint.text

    refused = served.client.delete(f"/v1/models/acme/chat@{oldest}", headers=served.headers)
    assert refused.status_code == 409
    assert f"pinned by endpoint {endpoint.json()['name']}" in refused.json()["error"]["message"]

    # Deleting the head moves it back to the newest ready revision left.
    head = next(r for r in _revisions(served, "acme/chat") if r["head"])
    deleted = served.client.delete(f"/v1/models/acme/chat@{head['number']}", headers=served.headers)
    assert deleted.json() == {"id": f"acme/chat@{head['number']}", "object": "model.revision", "deleted": True}
    assert next(r for r in _revisions(served, "acme/chat") if r["head"])["number"] < head["number"]
    # Numbers are never given twice: name@N always means one file set.
    again = _add_revision(served, "acme/chat", "acme/chat-v3")
    assert again["job"]["args"]["revision"] == head["number"] + 1

    assert served.client.delete(f"/v1/endpoints/{endpoint.json()['id']}", headers=served.headers).is_success
    refused = served.client.delete(f"/v1/models/acme/chat@{oldest}", headers=served.headers)
    assert refused.status_code == 409 and "base of adapters acme/lora" in refused.json()["error"]["message"]
    assert served.client.delete("/v1/models/acme/lora", headers=served.headers).status_code == 200
    for r in _revisions(served, "acme/chat")[:-1]:
        assert served.client.delete(f"/v1/models/acme/chat@{r['id']}", headers=served.headers).status_code == 200
    [last] = _revisions(served, "acme/chat")
    refused = served.client.delete(f"/v1/models/acme/chat@{last['number']}", headers=served.headers)
    assert refused.status_code == 409 and "delete the model instead" in refused.json()["error"]["message"]
    _greedy(served, "acme/chat")  # the one left still serves (it answers 200)


def test_revisions_are_the_owners_alone(served: Served) -> None:
    services = served.client.app.state.services  # type: ignore[attr-defined]
    other = {"Authorization": f"Bearer {services.accounts.create_key('intruder')}"}
    model_id = served.client.get("/v1/models/acme/chat", headers=served.headers).json()["model_id"]
    for path in (f"/api/v1/models/{model_id}/revisions", "/api/v1/models/acme/chat/revisions"):
        assert served.client.get(path, headers=other).status_code == 404
        assert served.client.post(path, json={"model_source": "acme/chat-v2"}, headers=other).status_code == 404
    assert served.client.delete("/v1/models/acme/chat@1", headers=other).status_code == 404
    assert (
        served.client.post("/v1/completions", json={"model": "acme/chat@1", "prompt": "a"}, headers=other).status_code
        == 404
    )


def test_the_cli_adds_and_lists_revisions(served: Served, tmp_path: Path) -> None:
    with serve_in_thread(served.client.app) as url:
        env = {"MODELPORT_BASE_URL": url, "MODELPORT_API_KEY": served.key, "COLUMNS": "200"}
        runner = CliRunner()
        added = runner.invoke(
            cli,
            ["models", "upload", "--model-name", "chat", "--model-source", "acme/chat-v2", "--new-revision"],
            env=env,
        )
        assert added.exit_code == 0, added.output
        run_all_jobs(served.client.app.state.services)  # type: ignore[attr-defined]
        listed = runner.invoke(cli, ["models", "revisions", "acme/chat"], env=env)
        assert listed.exit_code == 0, listed.output
        head = [line for line in listed.output.splitlines() if " * " in f"{line} "]
        assert len(head) == 1 and "ready" in head[0] and "acme/chat-v2" in head[0], listed.output
        missing = runner.invoke(
            cli,
            ["models", "upload", "--model-name", "nope", "--model-source", "acme/chat-v2", "--new-revision"],
            env=env,
        )
        assert missing.exit_code != 0 and "nope" in missing.output
