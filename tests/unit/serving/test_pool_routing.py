"""The serverless pool's choice of engine worker: adapter affinity, then base affinity, then load."""

from __future__ import annotations

from pathlib import Path

from modelport.serving.ipc import EngineClient
from modelport.serving.pool import EnginePool, _Worker
from modelport.settings import Settings


def workers(tmp_path: Path, loads: list[int]) -> list[_Worker]:
    made = []
    for i, load in enumerate(loads):
        w = _Worker(i, EngineClient(tmp_path / f"w{i}.sock", "fake", f"worker {i}"), tmp_path / f"w{i}.log", ready=True)
        w.client.in_flight = load
        made.append(w)
    return made


def pool(tmp_path: Path, max_num_seqs: int = 4) -> EnginePool:
    return EnginePool(Settings(data_dir=tmp_path, engine="fake", max_num_seqs=max_num_seqs))


def test_a_new_model_goes_to_the_least_loaded_then_to_the_emptiest(tmp_path: Path) -> None:
    p, ws = pool(tmp_path), workers(tmp_path, [2, 1, 1])
    ws[1].bases.add("other")
    assert p._choose(ws, "m", None) is ws[2]  # as loaded as worker 1, with fewer models


def test_a_loaded_base_wins_over_an_idle_worker(tmp_path: Path) -> None:
    p, ws = pool(tmp_path), workers(tmp_path, [0, 3])
    ws[1].bases.add("m")
    assert p._choose(ws, "m", None) is ws[1]
    assert p._choose(ws, "m", "lora-a") is ws[1]  # an adapter is cheap to load beside its base


def test_the_worker_with_the_adapter_wins_over_one_with_the_base_only(tmp_path: Path) -> None:
    p, ws = pool(tmp_path), workers(tmp_path, [0, 2, 1])
    for w in ws[1:]:
        w.bases.add("m")
    ws[1].adapters.add("lora-a")
    assert p._choose(ws, "m", "lora-a") is ws[1]
    assert p._choose(ws, "m", "lora-b") is ws[2]  # the base's least loaded holder


def test_a_saturated_holder_spills_to_the_least_loaded(tmp_path: Path) -> None:
    p, ws = pool(tmp_path, max_num_seqs=4), workers(tmp_path, [4, 0])
    ws[0].bases.add("m")
    ws[0].adapters.add("lora-a")
    assert p._choose(ws, "m", "lora-a") is ws[1]
