"""The metrics' parts that need no server: label caps, engine stats, replica totals, stage timing."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from modelport.endpoints.supervisor import ReplicaLoad
from modelport.jobs.progress import JobProgress, StageTimed
from modelport.metrics import OTHER, LabelCap, Replicas, WorkerLoad, Workers


def samples(*collectors: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry()
    for collector in collectors:
        registry.register(collector)
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_a_label_cap_keeps_the_first_names_and_counts_the_rest_as_other() -> None:
    cap = LabelCap(2)
    assert [cap(n) for n in ("a/x", "a/y", "a/z", "a/x", "b/q")] == ["a/x", "a/y", OTHER, "a/x", OTHER]


TORCH_STATS = {  # the shape of TorchEngine.stats()
    "engine": "transformers",
    "device": "cpu",
    "dtype": "bfloat16",
    "dtype_reason": "this CPU multiplies bf16 in hardware (AMX)",
    "budget_bytes": 1000,
    "sequence_budget_bytes": 400,
    "sequence_bytes": 120,
    "models": {
        "model-a": {"bytes": 300, "running": 2, "waiting": 1, "adapters": ["model-l1", "model-l2"]},
        "model-b": {"bytes": 200, "running": 1, "waiting": 0, "adapters": []},
    },
    "prefix_cache": {"bytes": 64, "budget_bytes": 50, "blocks": 1, "hits": 2, "reused_tokens": 96},
}


def test_worker_load_from_the_torch_engines_stats() -> None:
    load = WorkerLoad.from_stats("api", TORCH_STATS)
    assert load == WorkerLoad("api", "transformers", 3, 1, 2, 2, 500, 1000, 120, 400, "bfloat16", 64, 96)
    got = samples(Workers([lambda: [load]]))
    labels = (("dtype", "bfloat16"), ("engine", "transformers"), ("worker", "api"))
    assert got[("modelport_worker_precision_info", labels)] == 1
    worker = (("engine", "transformers"), ("worker", "api"))
    assert got[("modelport_prefix_cache_bytes", worker)] == 64
    assert got[("modelport_prefix_cache_reused_tokens_total", worker)] == 96
    assert got[("modelport_kv_cache_used_bytes", (("engine", "transformers"), ("worker", "api")))] == 120
    assert got[("modelport_worker_queued_sequences", (("engine", "transformers"), ("worker", "api")))] == 1


def test_the_fake_engine_reports_what_it_knows_and_nothing_else() -> None:
    got = samples(Workers([lambda: [WorkerLoad.from_stats("api", {"engine": "fake", "running": 2})]]))
    assert got[("modelport_worker_running_sequences", (("engine", "fake"), ("worker", "api")))] == 2
    assert not any(
        name.startswith(("modelport_kv_cache", "modelport_worker_precision", "modelport_prefix")) for name, _ in got
    )


def test_replicas_are_summed_per_endpoint() -> None:
    loads = [
        ReplicaLoad("endpoint-1", 0, True, 3),
        ReplicaLoad("endpoint-1", 1, False, 0),
        ReplicaLoad("endpoint-2", 0, True, 1),
    ]
    got = samples(Replicas(lambda: loads))
    one = (("endpoint", "endpoint-1"),)
    assert (got[("modelport_endpoint_replicas", one)], got[("modelport_endpoint_replicas_ready", one)]) == (2, 1)
    assert got[("modelport_endpoint_in_flight_sequences", one)] == 3
    assert got[("modelport_endpoint_in_flight_sequences", (("endpoint", "endpoint-2"),))] == 1


class _Store:
    def stage(self, *args: object) -> None:
        pass


def test_each_stage_is_timed_once_and_the_last_one_ends_with_the_job() -> None:
    timed: list[StageTimed] = []
    progress = JobProgress(_Store(), "job-1", "w", on_stage_end=timed.append)  # type: ignore[arg-type]
    progress.stage("downloading", "fetching")
    progress.stage("extracting", "unpacking")
    progress.stage("extracting", "unpacked 3 files")  # new words, same stage
    progress.stage("validating", "checking")
    progress.finish(ok=False)
    progress.finish(ok=False)  # a second call finds no open stage
    assert [(t.stage, t.ok) for t in timed] == [("downloading", True), ("extracting", True), ("validating", False)]
    assert all(t.seconds >= 0 for t in timed)


def test_a_failing_stage_observer_never_fails_the_job() -> None:
    def broken(_: StageTimed) -> None:
        raise RuntimeError("observer bug")

    progress = JobProgress(_Store(), "job-1", "w", on_stage_end=broken)  # type: ignore[arg-type]
    progress.stage("downloading", "fetching")
    progress.stage("validating", "checking")
    progress.finish(ok=True)
