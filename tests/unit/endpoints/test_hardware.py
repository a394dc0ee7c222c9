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


def test_a_ray_cluster_offers_what_its_largest_node_holds_and_pools_the_memory() -> None:
    from modelport.endpoints.hardware import from_cluster

    nodes = [
        {"resources": {"CPU": 0.0, "memory": 1.0 * GIB}},  # a head that only coordinates
        {"resources": {"CPU": 2.0, "memory": 5.0 * GIB}},
        {"resources": {"CPU": 4.0, "memory": 3.0 * GIB}},
    ]
    inventory = from_cluster("10.0.0.1:6379", nodes)
    ids = {c.id for c in inventory.configs({})}
    # Cores up to the biggest node's 4, memory up to the biggest node's 5 GiB: a replica never spans nodes.
    assert {"1x_cpu_2gb", "4x_cpu_5gb"} <= ids and not any(i.endswith(("_8gb", "_9gb")) for i in ids)
    assert inventory.capacity == 9 * GIB and "3 node(s), 6 CPUs" in inventory.describe()
    assert not from_cluster("x", []).configs({}) and "no live node" in from_cluster("x", []).describe()
    # The serverless engine actors' share is not offered to endpoints.
    kept = from_cluster("10.0.0.1:6379", nodes, reserved_bytes=2 * GIB)
    assert kept.capacity == 7 * GIB and "2.0 GiB more kept for serverless engines" in kept.describe()


def test_ray_gpus_count_across_the_cluster_and_keep_their_model() -> None:
    from modelport.endpoints.hardware import from_cluster

    nodes = [{"resources": {"CPU": 8.0, "GPU": 2.0, "accelerator_type:H100": 1.0, "memory": 64.0 * GIB}}]
    inventory = from_cluster("head:6379", nodes)
    assert len(inventory.gpus) == 2 and {g.model for g in inventory.gpus} == {"h100"}
    assert [c.id for c in inventory.configs({})] == ["1x_nvidia_h100_80gb_pcie", "2x_nvidia_h100_80gb_pcie"]
    assert len(from_cluster("head:6379", nodes, reserved_gpus=1).gpus) == 1  # one for a serverless engine
