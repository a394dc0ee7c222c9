"""The web console in headless Chromium (Debian's, driven by Playwright) against a live server.

``make screenshots`` runs the tour with ``MODELPORT_SCREENSHOTS=docs/images``: the README's pictures are
taken by this very test.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest

from tests.e2e.conftest import Live, Server
from tests.e2e.test_inference_clients import upload
from tests.support.fakehub import FakeHub
from tests.support.tinymodels import files_of

pytestmark = [pytest.mark.e2e, pytest.mark.db_agnostic]

CHROMIUM = "/usr/bin/chromium"
SHOTS = os.environ.get("MODELPORT_SCREENSHOTS")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{CHROMIUM} is missing: .ci/run installs Debian's chromium")
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1200, "height": 860})
    page = context.new_page()
    page.set_default_timeout(30_000)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    yield page
    context.close()
    assert not errors, f"JavaScript errors: {errors}"


def shot(page: Any, name: str) -> None:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SHOTS) / f"{name}.png"), full_page=True)


def sign_in(page: Any, server: Server) -> None:
    page.goto(f"{server.url}/models")
    assert "/signin" in page.url  # every page needs a session
    page.get_by_label("API key").fill("mp-wrong")
    page.get_by_role("button", name="Sign in").click()
    assert "not valid" in page.get_by_role("alert").inner_text()
    shot(page, "signin")
    page.get_by_label("API key").fill(server.admin_key)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{server.url}/models")


def pack(folder: Path, dest: Path) -> Path:
    with tarfile.open(dest, "w:gz" if dest.name.endswith(".gz") else "w") as tar:
        for path in sorted(folder.iterdir()):
            tar.add(path, arcname=path.name)
    return dest


def test_tour_upload_watch_deploy_and_chat(page: Any, server: Server, tiny_llama: Path, tmp_path: Path) -> None:
    """What a person who never used a terminal does: every step through the pages, nothing else."""
    sign_in(page, server)
    assert "No models yet" in page.content()
    # The dashboard of an empty account says what to do first.
    page.get_by_role("link", name="Dashboard").click()
    assert page.get_by_role("heading", name="Get started").is_visible()
    assert page.locator("#dash-models").inner_text() == "0"

    # Add custom model: a file from disk, sent through the resumable upload with a progress bar.
    page.get_by_role("link", name="Add custom model").first.click()
    page.get_by_label("Name").fill("tiny-chat")
    page.get_by_label("A file from this computer").check()
    page.get_by_label("Archive (.tar, .tar.gz, .zip)").set_input_files(str(pack(tiny_llama, tmp_path / "tiny.tar.gz")))
    page.get_by_label("Description").fill("a tiny Llama for the tour")
    shot(page, "add-model")
    page.get_by_role("button", name="Upload").click()

    # The job page follows the job live (server-sent events) until it is Complete.
    page.wait_for_url(re.compile(r".*/jobs/job-.*"))
    page.locator("#job-done").wait_for(state="visible", timeout=90_000)
    assert page.locator("#job-status").inner_text() == "Complete"
    updates = page.locator("#job-updates").inner_text()
    for stage in ("extracting", "validating", "admitting", "storing", "registering", "Complete"):
        assert stage in updates, updates
    shot(page, "job")

    # My models lists it; its page shows the manifest and what hardware fits.
    page.get_by_role("link", name="My models").click()
    row = page.locator("tr", has_text="admin/tiny-chat").first
    assert "model" in row.inner_text() and "ready" in row.inner_text()
    shot(page, "models")
    page.get_by_role("link", name="admin/tiny-chat").click()
    assert page.get_by_role("heading", name="admin/tiny-chat").is_visible()
    content = page.content()
    assert "LlamaForCausalLM" in content and "model.safetensors" in content
    # The manifest's files start folded, with short digests that open to the whole sha256.
    assert page.locator("#files code.hash").first.is_hidden()
    page.locator("#files > summary").click()
    page.locator("#files details.digest > summary").first.click()
    sha = re.search(r"[0-9a-f]{64}", page.locator("#files code.hash").first.inner_text())
    assert sha is not None
    # "Use this model": examples with this server and the model's name, which work as written.
    curl = page.locator("#snippet-curl").inner_text()
    assert curl.startswith(f"curl {server.url}/v1/chat/completions") and '"model": "admin/tiny-chat"' in curl
    assert "modelport chat admin/tiny-chat" in page.locator("#snippet-modelport").inner_text()
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.url)
    page.get_by_role("button", name="Copy the curl example").click()
    page.wait_for_function("document.querySelector('#copy-status').textContent === 'Copied to the clipboard.'")
    assert page.evaluate("navigator.clipboard.readText()") == curl
    env = {**os.environ, "MODELPORT_API_KEY": server.admin_key}
    answer = subprocess.run(["bash", "-c", curl], env=env, capture_output=True, timeout=120)
    assert answer.returncode == 0 and json.loads(answer.stdout)["choices"][0]["message"]["role"] == "assistant"
    shot(page, "model")

    # Create a dedicated endpoint from the model page; the endpoints page shows it start.
    page.get_by_label("Display name").fill("tour endpoint")
    page.get_by_role("button", name="Create dedicated endpoint").click()
    page.wait_for_url(f"{server.url}/endpoints")
    assert re.search("PENDING|STARTING", page.locator("#endpoints").inner_text())
    # No reload: the list follows the server by itself.
    page.wait_for_function("document.querySelector('#endpoints').textContent.includes('STARTED')", timeout=120_000)
    assert "Updated" in page.locator("#live-status").inner_text()
    row_text = page.locator("#endpoints tbody tr").first.inner_text()
    assert "STARTED" in row_text and "1/1" in row_text
    shot(page, "endpoints")

    # The playground streams a reply from the endpoint.
    page.get_by_role("link", name="Chat", exact=True).first.click()
    endpoint = page.get_by_label("Model, adapter or endpoint").input_value()
    assert endpoint.startswith("admin/tiny-chat-")
    page.get_by_label("Max tokens").fill("12")
    page.get_by_label("Temperature").fill("0")
    # Long enough (over 32 tokens) that asking again finds its first block in the engine's prefix cache.
    message = "Hello there, " + " ".join(["the capital of france is paris"] * 6)
    page.get_by_label("Message").fill(message)
    page.get_by_role("button", name="Send").click()
    reply = page.locator(".msg.assistant p").first
    page.wait_for_function(
        "document.querySelector('#pg-send').disabled === false && "
        "document.querySelector('.msg.assistant p').textContent.length > 0"
    )
    assert reply.inner_text().strip() and page.locator("#pg-error").is_hidden()
    # Each reply says what it cost: its tokens (12 asked for), the prompt's, first token and rate.
    stats = page.locator(".msg.assistant .stats").first.inner_text()
    assert re.fullmatch(r"\d+ tokens · prompt \d+ tokens · first token \d+ ms( · [\d.]+ tokens/s)?", stats), stats
    # Regenerate: the reply is asked for again (greedy here: the same words), in its place.
    first_reply = reply.inner_text()
    page.get_by_role("button", name="Regenerate").click()
    page.wait_for_function(
        "document.querySelector('#pg-regen').disabled === false && "
        "document.querySelectorAll('.msg.assistant').length === 1 && "
        "document.querySelector('.msg.assistant .stats') !== null"
    )
    assert page.locator(".msg.assistant p").first.inner_text() == first_reply
    again = page.locator(".msg.assistant .stats").first.inner_text()
    assert re.search(r"· prompt \d+ tokens \(32 cached\) ·", again), again  # the prompt's first block was reused
    # View code: this conversation as a request, ready to copy.
    page.get_by_text("View code").click()
    code = page.locator("#pg-code-text").inner_text()
    assert f'model="{endpoint}"' in code and f'"content": "{message}"' in code and "max_tokens=12" in code
    assert '"role": "assistant"' in code and "temperature=0" in code
    shot(page, "playground")
    # A refused message goes back into the box; nothing typed is lost.
    missing = "new Option('admin/no-such-model', 'admin/no-such-model', true, true)"
    page.evaluate(f"document.querySelector('#pg-model').add({missing})")
    page.get_by_label("Message").fill("Keep this")
    page.get_by_role("button", name="Send").click()
    page.locator("#pg-error").wait_for(state="visible")
    assert page.get_by_label("Message").input_value() == "Keep this"
    assert "Keep this" not in page.locator("#pg-log").inner_text()
    # The endpoint's page: its replica, how to call it, and charts drawn from the chat just made.
    for _ in range(3):  # two more requests, so the charts have something to draw
        httpx.post(
            f"{server.url}/v1/chat/completions",
            json={"model": endpoint, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4},
            headers={"Authorization": f"Bearer {server.admin_key}"},
            timeout=60,
        ).raise_for_status()
    page.goto(f"{server.url}/endpoints/{endpoint}")
    replica = page.locator("#replicas tbody tr").first.inner_text()
    assert "ready" in replica and "pid" in replica, replica
    assert endpoint in page.locator("#snippet-curl").inner_text()
    page.wait_for_function("Number(document.querySelector('#chart-requests .plot').dataset.points) > 0")
    assert page.locator("#chart-requests canvas").count() >= 1  # uPlot drew it
    assert re.search(r"requests/s [\d.]+ req/s", page.locator("#chart-requests .chart-now").inner_text())
    assert re.search(r"p50 [\d.]+ ms, p95 [\d.]+ ms", page.locator("#chart-ttft .chart-now").inner_text())
    tokens = float(page.locator("#chart-tokens .chart-now").inner_text().split()[1])
    assert tokens > 0
    label = page.locator("#chart-latency .plot").get_attribute("aria-label")
    assert label.startswith("Latency (ms): p50 "), label
    shot(page, "endpoint")
    # The dashboard now counts the model, the endpoint and today's requests (the chat above and the curl).
    page.goto(f"{server.url}/")
    assert page.locator("#dash-models").inner_text() == "1" and page.locator("#dash-endpoints").inner_text() == "1"
    today = page.locator("#usage tbody tr").first
    assert int(today.locator("td").first.inner_text()) >= 2
    assert page.get_by_role("heading", name="Get started").count() == 0
    shot(page, "dashboard")
    # Max tokens is bounded by the chosen model's context (128 tokens for this one).
    page.goto(f"{server.url}/playground?model=admin/tiny-chat")
    assert page.locator("#pg-max-tokens").get_attribute("max") == "127"
    assert page.locator("#pg-context").inner_text() == "context 128 tokens"

    # Stop the endpoint again from the endpoints page (keyboard only: Tab to the button, Enter).
    page.goto(f"{server.url}/endpoints")
    page.get_by_role("button", name=re.compile("^Stop ")).focus()
    with page.expect_navigation():  # the form posts, then lands on /endpoints again
        page.keyboard.press("Enter")
    assert re.search("STOPP(ING|ED)", page.locator("#endpoints").inner_text())
    # The playground no longer offers it; it lists it apart, with a button that starts it and comes back.
    page.wait_for_function("document.querySelector('#endpoints').textContent.includes('STOPPED')", timeout=60_000)
    page.goto(f"{server.url}/playground")
    assert endpoint not in page.locator("#pg-model").inner_text()
    with page.expect_navigation():
        page.get_by_role("button", name=f"Start {endpoint}").click()
    assert page.get_by_label("Model, adapter or endpoint").input_value() == endpoint
    assert page.locator(".pg-stopped").count() == 0


def test_a_failed_upload_lists_every_problem(page: Any, server: Server, tiny_llama: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(tiny_llama, bad)
    (bad / "pytorch_model.bin").write_bytes(b"pickle")
    (bad / "modeling_evil.py").write_text("import os\n")
    sign_in(page, server)
    page.goto(f"{server.url}/models/new")
    page.get_by_label("Name").fill("bad")
    page.get_by_label("A file from this computer").check()
    page.get_by_label("Archive (.tar, .tar.gz, .zip)").set_input_files(str(pack(bad, tmp_path / "bad.tar.gz")))
    page.get_by_role("button", name="Upload").click()
    page.locator("#job-failed").wait_for(state="visible", timeout=90_000)
    problems = page.locator("#job-problems li").all_inner_texts()
    assert any("pytorch_model.bin: pickle weight formats" in p for p in problems), problems
    assert any("modeling_evil.py: custom Python code is refused" in p for p in problems), problems
    shot(page, "job-failed")

    # A form error keeps what was typed (but never the token) and says what is wrong.
    page.goto(f"{server.url}/models/new")
    page.get_by_label("Name").fill("no-source")
    page.get_by_label("Hugging Face token (private repos)").fill("hf_secret_token_value")
    page.get_by_role("button", name="Upload").click()
    assert "choose a Hugging Face repo" in page.get_by_role("alert").inner_text()
    assert page.get_by_label("Name").input_value() == "no-source"
    assert "hf_secret_token_value" not in page.content()


def test_refusals_come_before_any_part_is_sent_and_the_file_stays_chosen(
    page: Any, server: Server, hub: FakeHub, tiny_llama: Path, tiny_lora: Path, tmp_path: Path
) -> None:
    hub.add("web/dup", files_of(tiny_llama))
    auth = {"Authorization": f"Bearer {server.admin_key}"}
    taken = httpx.post(f"{server.url}/v1/models", json={"model_name": "dup", "model_source": "web/dup"}, headers=auth)
    assert taken.status_code == 200, taken.text
    sign_in(page, server)
    sent: list[str] = []
    page.on("request", lambda r: sent.append(f"{r.method} {urlparse(r.url).path}"))
    page.goto(f"{server.url}/models/new")
    page.get_by_label("Name").fill("dup")
    page.get_by_label("A file from this computer").check()
    page.get_by_label("Archive (.tar, .tar.gz, .zip)").set_input_files(str(pack(tiny_lora, tmp_path / "lora.tar")))
    chosen = "e => e.files.length === 1 ? e.files[0].name : null"

    # A taken name: said next to Name, in the page's words, before the upload even starts.
    page.get_by_role("button", name="Upload").click()
    error = page.locator("#model_name-error")
    error.wait_for(state="visible")
    assert error.inner_text().startswith("You already have a model named “dup”"), error.inner_text()
    assert page.evaluate("document.activeElement.id") == "model_name"
    assert page.get_by_label("Name").get_attribute("aria-invalid") == "true"
    assert page.locator("#file").evaluate(chosen) == "lora.tar"
    assert "POST /api/v1/models/preflight" in sent and not [r for r in sent if "/api/v1/uploads" in r], sent

    # The archive holds an adapter but Model is chosen: its tar headers say so when the model is created,
    # after the upload; the file stays chosen and is not sent again once the type is fixed.
    page.get_by_label("Name").fill("my-lora")
    page.get_by_role("button", name="Upload").click()
    page.locator("#model_type-error").wait_for(state="visible")
    assert "holds a LoRA adapter" in page.locator("#model_type-error").inner_text()
    assert error.is_hidden() and page.locator("#file").evaluate(chosen) == "lora.tar"
    page.get_by_label("LoRA adapter").check()
    page.get_by_role("button", name="Upload").click()
    page.wait_for_url(re.compile(r".*/jobs/job-.*"))
    assert sent.count("POST /api/v1/uploads") == 1, sent
    assert [u["filename"] for u in server_get(server, "/api/v1/uploads")["data"]] == ["lora.tar"]


def server_get(server: Server, path: str) -> Any:
    return httpx.get(server.url + path, headers={"Authorization": f"Bearer {server.admin_key}"}, timeout=10).json()


def test_keys_page_shows_a_new_key_once_and_revokes(page: Any, server: Server) -> None:
    sign_in(page, server)
    page.get_by_role("link", name="API keys").click()
    page.get_by_label(re.compile("^Name")).fill("carol's laptop")
    page.get_by_label(re.compile("Account")).fill("carol")
    page.get_by_role("button", name="Create API key").click()
    new_key = page.locator("#new-key").inner_text()
    assert new_key.startswith("mp-") and "carol's laptop for carol" in page.locator(".notice").inner_text()
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.url)
    page.get_by_role("button", name="Copy the new key").click()
    page.wait_for_function("document.querySelector('#copy-status').textContent !== ''")
    assert page.evaluate("navigator.clipboard.readText()") == new_key
    shot(page, "keys")
    row = page.locator("tr", has_text="carol")
    assert row.get_by_role("rowheader").inner_text() == "carol's laptop"
    assert row.locator("td").nth(5).inner_text() == "-"  # never used yet
    assert server.cli("whoami", key=new_key).returncode == 0
    page.goto(f"{server.url}/keys")
    assert new_key not in page.content()  # shown once
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", row.locator("td").nth(5).inner_text())  # last used
    assert "this session" in page.locator("tr", has_text="admin").first.inner_text()
    page.once("dialog", lambda d: d.accept())
    with page.expect_navigation():
        page.locator("tr", has_text="carol").get_by_role("button", name=re.compile("^Revoke")).click()
    assert "revoked" in page.locator("tr", has_text="carol").inner_text()
    assert server.cli("whoami", key=new_key).returncode == 3


def test_an_error_page_keeps_the_navigation_and_every_page_has_a_favicon(page: Any, server: Server) -> None:
    sign_in(page, server)
    response = page.goto(f"{server.url}/no-such-page")
    assert response.status == 404 and page.get_by_role("heading", name="Not found").is_visible()
    nav = page.get_by_role("navigation", name="Main")
    assert nav.get_by_role("link", name="My models").is_visible()
    assert nav.get_by_role("link", name="API keys").is_visible()
    page.goto(f"{server.url}/models/admin/missing")  # a route's own 404 also names the account
    assert page.get_by_role("navigation", name="Main").is_visible() and "admin" in page.locator(".account").inner_text()
    icon = page.locator('link[rel="icon"]').get_attribute("href")
    assert httpx.get(server.url + icon).headers["content-type"].startswith("image/svg+xml")


def test_an_upload_tells_the_time_left(page: Any, server: Server) -> None:
    sign_in(page, server)
    page.goto(f"{server.url}/models/new")
    left = {
        "done": page.evaluate("eta(0, 1e6)"),
        "no rate yet": page.evaluate("eta(5e6, 0)"),
        "seconds": page.evaluate("eta(30e6, 1e6)"),
        "minutes": page.evaluate("eta(600e6, 1e6)"),
        "hours": page.evaluate("eta(9e9, 1e6)"),
    }
    assert left == {
        "done": "",
        "no rate yet": "",
        "seconds": ", about 30 s left",
        "minutes": ", about 10 min left",
        "hours": ", about 2.5 h left",
    }


def test_pages_are_usable_on_a_narrow_screen_and_by_keyboard(
    browser: Any, server: Server, hub: FakeHub, tiny_llama: Path
) -> None:
    # An endpoint, so that its page (replicas, charts, snippets) is checked at this width too.
    live = Live(server.url, server.admin_key, server.proc, server.env)
    upload(live, hub, "narrow", tiny_llama)
    hardware = server_get(server, "/v1/hardware")["data"][0]["id"]
    body = {"model": "admin/narrow", "hardware": hardware, "display_name": "narrow"}
    auth = {"Authorization": f"Bearer {server.admin_key}"}
    endpoint = httpx.post(f"{server.url}/v1/endpoints", json=body, headers=auth, timeout=30).json()["name"]
    context = browser.new_context(viewport={"width": 390, "height": 740})
    page = context.new_page()
    try:
        sign_in(page, server)
        pages = ("/models", "/models/new", "/endpoints", f"/endpoints/{endpoint}", "/playground", "/uploads", "/keys")
        for path in (*pages, "/no-such-page"):
            page.goto(server.url + path)
            overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
            assert overflow <= 1, (path, overflow)
            # Tables are cards here: every cell and button inside the screen, each cell named by its column.
            outside = page.evaluate(
                """[...document.querySelectorAll('table.cards td, table.cards button')]
                   .filter(e => e.getBoundingClientRect().right > window.innerWidth + 1).length"""
            )
            assert outside == 0, (path, outside)
            # Every form control has a label a screen reader announces.
            unlabeled = page.evaluate(
                """[...document.querySelectorAll('input:not([type=hidden]), select, textarea')]
                   .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label'))
                   .map(e => e.id || e.name)"""
            )
            assert unlabeled == [], (path, unlabeled)
        page.goto(f"{server.url}/endpoints/{endpoint}")
        assert page.locator("#chart-requests .chart-now").inner_text() in ("-", "no requests in the last hour")
        shot(page, "endpoint-390")
        page.goto(server.url + "/keys")  # the admin's own key is listed: a card with labelled cells
        card = page.locator("table.cards tbody tr").first
        assert card.locator('td[data-label="Status"]').is_visible()
        shot(page, "keys-390")
        assert page.get_by_role("table").first.is_visible() and page.get_by_role("cell").count() > 0
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.textContent") == "Skip to content"
        page.keyboard.press("Enter")
        assert page.evaluate("document.activeElement.id") == "main"
    finally:
        context.close()
