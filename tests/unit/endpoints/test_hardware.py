from __future__ import annotations

from datetime import UTC, datetime

from modelport.endpoints.hardware import GIB, Inventory, estimate_bytes, parse_nvidia_smi
from modelport.manifest import Manifest, ModelKind

TOPO_NVLINK = "\tGPU0\tGPU1\nGPU0\t X \tNV18\nGPU1\tNV18\t X \n"


def test_nvidia_gpus_become_together_ids() -> None:
    gpus = parse_nvidia_smi("0, NVIDIA H100 80GB HBM3, 81559\n1, NVIDIA H100 80GB HBM3, 81559\n", TOPO_NVLINK)
    inventory = Inventory(tuple(gpus), 16, 64 * GIB, datetime.now(UTC))
    assert [c.id for c in inventory.configs({})] == ["1x_nvidia_h100_80gb_sxm", "2x_nvidia_h100_80gb_sxm"]
    pcie = parse_nvidia_smi("0, NVIDIA A100-PCIE-40GB, 40960\n", "\tGPU0\nGPU0\t X \n")
    assert pcie[0].model == "a100" and pcie[0].memory_gb == 40 and pcie[0].link == "pcie"


def test_without_gpus_cpu_configurations_split_the_memory_pool() -> None:
    inventory = Inventory((), 2, 12 * GIB, datetime.now(UTC))
    configs = inventory.configs({"2x_cpu_4gb": 1.5})
    ids = [c.id for c in configs]
    assert ids == [
        "1x_cpu_2gb",
        "1x_cpu_4gb",
        "1x_cpu_8gb",
        "1x_cpu_12gb",
        "2x_cpu_2gb",
        "2x_cpu_4gb",
        "2x_cpu_8gb",
        "2x_cpu_12gb",
    ]
    assert {c.id: c.cents_per_minute for c in configs}["2x_cpu_4gb"] == 1.5
    assert all(c.is_cpu and c.gpu_link == "host" for c in configs)
    assert configs[1].memory_bytes == 4 * GIB


def test_fit_counts_weights_and_a_full_context_kv_cache() -> None:
    config = {"num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "hidden_size": 64}
    need = estimate_bytes(Manifest(kind=ModelKind.MODEL, parameters=1000, context_length=128), config, 4)
    kv = 2 * 2 * 2 * 16 * 128 * 4
    assert need == int((1000 * 4 + kv) * 1.2)


def test_the_kv_cache_is_sized_for_the_served_context_not_the_declared_one() -> None:
    config = {"num_hidden_layers": 2, "num_attention_heads": 4, "hidden_size": 64}
    declared = Manifest(kind=ModelKind.MODEL, parameters=1000, context_length=131072)
    assert estimate_bytes(declared, config, 4, max_context=1024) == estimate_bytes(
        Manifest(kind=ModelKind.MODEL, parameters=1000, context_length=1024), config, 4
    )
