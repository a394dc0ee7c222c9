"""What the CLI shows, without a server: times, sizes, the next command, tables that fit, the job bar."""

from __future__ import annotations

import io
import re
from typing import Any

import pytest
from click.testing import CliRunner
from rich.console import Console

from modelport.cli.commands.embed import summary
from modelport.cli.commands.endpoints import show_endpoints
from modelport.cli.main import cli
from modelport.cli.nextstep import next_step
from modelport.cli.output import Output, human_bytes, human_sizes, when
from modelport.cli.progress import JobBar, describe_progress, job_detail, stage_label


def test_times_have_seconds() -> None:
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:05", when("2026-01-02T03:04:05Z"))
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:07", when(1_699_999_980 + 7))  # a whole minute, plus 7 s
    assert when(None) == when("") == "-"


def test_one_unit_system() -> None:
    assert [human_bytes(n) for n in (0, 1023, 1024, 5 * 2**20 + 2**19, 3 * 2**30)] == [
        "0 B",
        "1023 B",
        "1.0 KiB",
        "5.5 MiB",
        "3.0 GiB",
    ]
    assert human_sizes("storing 2 files (3221225472 bytes), 2048 bytes/s") == "storing 2 files (3.0 GiB), 2.0 KiB/s"
    assert human_sizes("1 bytes is not 1 bytesize") == "1 B is not 1 bytesize"


@pytest.mark.parametrize(
    ("model", "command"),
    [
        ({"id": "admin/tiny", "type": "chat", "kind": "model"}, "`modelport chat admin/tiny`"),
        ({"id": "admin/lora", "type": "chat", "kind": "adapter"}, "`modelport chat admin/lora`"),
        ({"id": "admin/plain", "type": "language"}, "`modelport complete admin/plain PROMPT`"),
        ({"id": "admin/minilm", "type": "embedding"}, "`modelport embed admin/minilm TEXT`"),
        ({"id": "admin/odd", "type": None}, "`modelport complete admin/odd PROMPT`"),
    ],
)
def test_next_step_follows_the_models_type(model: dict[str, Any], command: str) -> None:
    assert next_step(model) == command


def test_endpoints_list_fits_100_columns(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    endpoint = {
        "id": "endpoint-0191f7a2-3c4d-7e5f-8a9b-0c1d2e3f4a5b",
        "name": "admin/my-model-3fa1c2d9",
        "display_name": "my-model on 1x_cpu_16gb",
        "model": "admin/my-model",
        "hardware": "1x_cpu_16gb",
        "state": "STARTED",
        "autoscaling": {"min_replicas": 1, "max_replicas": 1},
        "replicas": {"running": 1},
    }
    show_endpoints(Output(), [endpoint, {**endpoint, "name": "admin/my-model-77aa00bb", "state": "STOPPED"}])
    lines = capsys.readouterr().out.splitlines()
    assert max(len(line) for line in lines) <= 100, "\n".join(lines)
    assert re.match(r"NAME\s+DISPLAY NAME\s+MODEL\s+HARDWARE\s+STATE\s+REPLICAS", lines[0])
    row = r"^admin/my-model-3fa1c2d9\s+my-model on 1x_cpu_16gb\s+admin/my-model\s+1x_cpu_16gb\s+STARTED\s+1/1\s*$"
    assert any(re.match(row, line) for line in lines), "\n".join(lines)  # one line per endpoint


def _job(status: str, progress: dict[str, Any] | None = None, error: dict[str, str] | None = None) -> dict[str, Any]:
    return {"job_id": "job-1", "status": status, "progress": progress, "error": error, "status_updates": []}


def test_jobs_list_says_why_a_job_failed() -> None:
    message = "2 problem(s) found: pytorch_model.bin: pickle weight formats are refused; " + "x" * 80
    detail = job_detail(_job("Failed", error={"code": "validation_failed", "message": message}))
    assert detail.startswith("validation_failed: 2 problem(s) found: pytorch_model.bin") and detail.endswith("…")
    running = _job("Running", {"stage": "storing", "bytes_done": 2**20, "bytes_total": 2**21})
    assert job_detail(running) == "storing (5/6), 1.0 MiB / 2.0 MiB"
    assert job_detail(_job("Queued")) == "-"
    assert describe_progress({"stage": "cleaning"}) == "cleaning"  # a stage this CLI does not know yet
    assert stage_label("downloading") == "downloading (1/6)"


def test_the_job_bar_follows_the_stage() -> None:
    out = Output(out=Console(file=io.StringIO()), err=Console(file=io.StringIO()))
    bar = JobBar(out)
    bar.show(_job("Running", {"stage": "downloading", "bytes_done": 10, "bytes_total": 100}))
    bar.show(_job("Running", {"stage": "downloading", "bytes_done": 60, "bytes_total": 100}))
    (task,) = bar.progress.tasks
    assert (task.total, task.completed, task.description) == (100, 60, "downloading (1/6), 60 B / 100 B")
    bar.show(_job("Running", {"stage": "admitting", "bytes_done": 0, "bytes_total": None}))
    (task,) = bar.progress.tasks  # a new stage: no total or count left over from the last one
    assert (task.total, task.completed, task.description) == (None, 0, "admitting (4/6)")
    bar.show(_job("Running", {"stage": "storing", "bytes_done": 5 * 2**20, "bytes_total": 8 * 2**20}))
    (task,) = bar.progress.tasks
    assert task.total == 8 * 2**20 and task.description.startswith("storing (5/6), 5.0 MiB / 8.0 MiB")
    queued = {**_job("Queued"), "status_updates": [{"status": "Queued", "message": "", "timestamp": ""}]}
    bar.show(queued)
    assert bar.progress.tasks[0].description == "Queued"


def test_embed_summarises_each_vector() -> None:
    row = summary("a sentence that is rather longer than forty characters in all", [3.0, 4.0, 0.0, 0.0, 0.0], 1)
    index, text, dims, norm, values = row
    assert (index, dims, norm) == (1, 5, "5.0000") and len(text) == 40 and text.endswith("…")
    assert values == "[+3.0000, +4.0000, +0.0000, +0.0000, …]"


def test_delete_off_a_terminal_needs_yes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELPORT_API_KEY", "mp-unused")
    monkeypatch.setenv("MODELPORT_BASE_URL", "http://127.0.0.1:9")  # never reached: it refuses first
    result = CliRunner().invoke(cli, ["models", "delete", "admin/tiny"])
    assert result.exit_code == 2, result.output
    assert "--yes" in result.stderr and "modelport models delete admin/tiny --yes" in result.stderr
    assert result.stdout == ""


def test_embed_without_text_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELPORT_API_KEY", "mp-unused")
    result = CliRunner().invoke(cli, ["embed", "admin/minilm"], input="")
    assert result.exit_code == 2 and "modelport embed MODEL TEXT" in result.stderr
