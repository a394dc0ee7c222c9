"""The replica spec builder: device, memory and environment from the reservation; the file its engine
process reads (``serving/host.py``)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from modelport.endpoints.hardware import GIB, HardwareConfig
from modelport.endpoints.states import initialize
from modelport.endpoints.supervisor import replica_spec
from modelport.manifest import Manifest, ModelKind
from modelport.serving.engine import Artifact, Pooling
from modelport.serving.host import ENGINE_FIELDS, EngineSpec
from modelport.serving.wire import artifact_from_json
from modelport.settings import Settings
from modelport.storage.db.tables import Endpoint, Model

H100X2 = HardwareConfig("2x_nvidia_h100_80gb_sxm", "h100-80gb", 2, 80, "sxm", 0.0)
CPU = HardwareConfig("2x_cpu_4gb", "cpu", 2, 4.0, "host", 0.0)
# What ``host.run`` reads from ``--spec``.
SPEC_KEYS = {"parent_pid", "settings", "model", "context_length", "pooling"}


def parts(tmp_path: Path, reservation: dict[str, object]) -> tuple[Endpoint, Model, Artifact, Settings]:
    endpoint = Endpoint(id="endpoint-1", name="acme/base-1234", model_id="model-1", hardware="x")
    initialize(endpoint)
    endpoint.reservation = reservation
    manifest = Manifest(kind=ModelKind.MODEL, context_length=4096)
    model = Model(id="model-1", name="acme/base", kind="model", type="language", manifest=manifest)
    artifact = Artifact("model-1", tmp_path / "model", manifest, 123)
    return endpoint, model, artifact, Settings(data_dir=tmp_path, max_num_seqs=8, max_loras=3)


def test_each_gpu_replica_sees_its_own_slice_of_the_reserved_gpus(tmp_path: Path) -> None:
    held: dict[str, object] = {"gpus": [2, 3, 4, 5], "gpus_per_replica": 2, "replicas": 2}
    endpoint, model, artifact, settings = parts(tmp_path, held)
    first = replica_spec(endpoint, model, artifact, settings, H100X2, 0, None, 4242)
    second = replica_spec(endpoint, model, artifact, settings, H100X2, 1, None, 4242)
    assert (first.env, second.env) == ({"CUDA_VISIBLE_DEVICES": "2,3"}, {"CUDA_VISIBLE_DEVICES": "4,5"})
    assert first.settings["engine_device"] == "cuda"
    assert first.settings["engine_memory_bytes"] == int(2 * 80 * GIB * 0.9)
    assert (first.settings["max_num_seqs"], first.settings["max_loras"]) == (8, 3)
    assert (first.context_length, first.parent_pid, first.model) == (4096, 4242, artifact)


def test_a_cpu_replica_gets_its_configurations_memory_and_threads(tmp_path: Path) -> None:
    endpoint, model, artifact, settings = parts(tmp_path, {"memory_bytes": 4 * GIB, "replicas": 1})
    spec = replica_spec(endpoint, model, artifact, settings, CPU, 0, None, 1)
    assert (spec.settings["engine_device"], spec.settings["engine_memory_bytes"]) == ("cpu", 4 * GIB)
    assert spec.env == {"OMP_NUM_THREADS": "2"} and spec.settings["engine_workers"] == 1


def test_the_spec_file_is_what_the_replica_reads(tmp_path: Path) -> None:
    endpoint, model, artifact, settings = parts(tmp_path, {"memory_bytes": 4 * GIB, "replicas": 1})
    spec_of_chat = replica_spec(endpoint, model, artifact, settings, CPU, 0, None, 1)
    chat = spec_of_chat.to_json()
    assert set(chat) == SPEC_KEYS and chat["pooling"] is None  # no pooling: the replica preloads the model
    assert chat["settings"]["data_dir"] == str(settings.data_dir) and artifact_from_json(chat["model"]) == artifact
    assert "env" not in chat and EngineSpec.from_json(chat) == replace(spec_of_chat, env={})
    # Only what an engine reads: no database URL, keys or storage credentials reach its process.
    assert set(chat["settings"]) == set(ENGINE_FIELDS)
    pooling = Pooling("cls", normalize=True, max_seq_length=128)
    embed = replica_spec(endpoint, model, artifact, settings, CPU, 0, pooling, 1).to_json()
    assert embed["pooling"] == {"mode": "cls", "normalize": True, "max_seq_length": 128}
    assert Pooling(**embed["pooling"]) == pooling
