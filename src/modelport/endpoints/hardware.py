"""What this host really has, as Together-style hardware configurations.

GPU configurations follow Together's ids, ``{count}x_nvidia_{model}_{memory}gb_{link}`` (e.g.
``2x_nvidia_h100_80gb_sxm``), one per power-of-two GPU count the host can hold. Without GPUs, CPU
configurations follow the same spirit: ``{cores}x_cpu_{memory}gb`` is a replica that may use that many
cores (shared, not pinned) and reserves that much RAM from the pool endpoints may use
(``MODELPORT_ENDPOINT_MEMORY_BYTES``). Memory is what is reserved: GPUs are handed out whole, by index,
and host RAM by the gigabyte, so endpoints can never oversubscribe either.

Shares: one account's running endpoints may hold at most ``MODELPORT_QUOTA_ENDPOINT_SHARE`` of the
host together (``Inventory.account_cap``), counted in *units*: GPUs on a GPU host, bytes of the RAM
pool without GPUs. A fraction rather than a count of endpoints, because one endpoint on eight GPUs
starves the others as surely as eight endpoints on one GPU each, and because it means the same on a
laptop and on an 8-GPU server. The cap is never below the smallest configuration, so every account
can run one endpoint (on a one-GPU host that is the whole host: no share can split one GPU).

Fit (``estimate_bytes``): weights at the serving dtype, plus the KV cache of one full-context sequence,
plus 20% for activations and allocator slack::

    need = parameters x dtype_bytes + 2 x layers x kv_heads x head_dim x context x dtype_bytes, x 1.2
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from modelport.manifest import Manifest, context_length_of

GIB = 2**30
OVERHEAD = 1.2
_NOMINAL_GB = {"b200": 192, "h200": 141, "h100": 80, "a100": 80, "a10g": 24, "a10": 24, "l40s": 48, "l40": 48}
_NOMINAL_GB |= {"l4": 24, "t4": 16, "v100": 32, "rtx_6000_ada": 48}
_GPU_MODELS = ("b200", "h200", "h100", "a100", "a10g", "a10", "l40s", "l40", "l4", "t4", "v100", "rtx_6000_ada")


@dataclass(frozen=True)
class Gpu:
    index: int
    model: str  # e.g. "h100"
    memory_gb: int
    link: str  # "sxm" (NVLink) or "pcie"


@dataclass(frozen=True)
class HardwareConfig:
    id: str
    gpu_type: str
    gpu_count: int
    gpu_memory_gb: float  # per GPU; for CPU configurations, the RAM reserved
    gpu_link: str
    cents_per_minute: float

    @property
    def is_cpu(self) -> bool:
        return self.gpu_type == "cpu"

    @property
    def memory_bytes(self) -> int:
        return int(self.gpu_memory_gb * GIB * (1 if self.is_cpu else self.gpu_count))


@dataclass(frozen=True)
class Inventory:
    gpus: tuple[Gpu, ...]
    cpu_cores: int
    cpu_pool_bytes: int  # RAM that endpoint replicas may reserve together
    detected_at: datetime
    where: str = ""  # empty: this host; else the cluster it describes ("Ray cluster at …: 3 nodes")
    node_bytes: int = 0  # a cluster's largest node's RAM for replicas: no configuration may ask for more

    def configs(self, prices: dict[str, float]) -> list[HardwareConfig]:
        if self.gpus:
            return self._gpu_configs(prices)
        return self._cpu_configs(prices)

    def _gpu_configs(self, prices: dict[str, float]) -> list[HardwareConfig]:
        out = []
        first = self.gpus[0]
        n = 1
        while n <= len(self.gpus):
            link = "pcie" if first.model == "a100" and n == 1 else first.link
            hw_id = f"{n}x_nvidia_{first.model}_{first.memory_gb}gb_{link}"
            out.append(HardwareConfig(hw_id, f"{first.model}-{first.memory_gb}gb", n, first.memory_gb, link, 0.0))
            n *= 2
        return [_priced(c, prices) for c in out]

    def _cpu_configs(self, prices: dict[str, float]) -> list[HardwareConfig]:
        pool_gb = min(self.cpu_pool_bytes, self.node_bytes or self.cpu_pool_bytes) // GIB
        tiers = [gb for gb in (2, 4, 8, 16, 32, 64, 128, 256, 512) if gb < pool_gb] + [pool_gb]
        cores = sorted({1, self.cpu_cores})
        configs = [
            HardwareConfig(f"{c}x_cpu_{gb}gb", "cpu", c, float(gb), "host", 0.0) for c in cores for gb in tiers if gb
        ]
        return [_priced(c, prices) for c in configs]

    @property
    def capacity(self) -> int:
        """Units endpoints can reserve on this host: GPUs, or bytes of the RAM pool without GPUs."""
        return len(self.gpus) if self.gpus else self.cpu_pool_bytes

    def account_cap(self, share: float) -> int:
        """Units one account's endpoints may hold together: ``share`` of the host, at least one configuration."""
        smallest = min((config_units(c) for c in self.configs({})), default=0)
        return max(smallest, int(self.capacity * share))

    def describe_units(self, units: int) -> str:
        return f"{units} GPU(s)" if self.gpus else f"{units / GIB:.1f} GiB of endpoint RAM"

    def describe(self) -> str:
        if self.where:
            return self.where
        if self.gpus:
            return f"{len(self.gpus)} x NVIDIA {self.gpus[0].model.upper()} {self.gpus[0].memory_gb} GB"
        return f"no GPU; {self.cpu_cores} CPU cores, {self.cpu_pool_bytes / GIB:.0f} GiB of RAM for endpoints"


def config_units(config: HardwareConfig, replicas: int = 1) -> int:
    """What ``replicas`` of ``config`` reserve, in the host's units (see ``Inventory.capacity``)."""
    return (config.memory_bytes if config.is_cpu else config.gpu_count) * replicas


def reservation_units(reservation: dict[str, Any] | None) -> int:
    """What a recorded reservation holds, in the host's units."""
    held = reservation or {}
    return len(held.get("gpus", [])) or int(held.get("memory_bytes", 0))


def _priced(config: HardwareConfig, prices: dict[str, float]) -> HardwareConfig:
    return HardwareConfig(**{**config.__dict__, "cents_per_minute": prices.get(config.id, 0.0)})


def detect(pool_bytes: int = 0) -> Inventory:
    """Read the host: NVIDIA GPUs from ``nvidia-smi`` (never initializing CUDA here), else the CPU."""
    gpus = _nvidia_gpus()
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    cores = len(os.sched_getaffinity(0))
    return Inventory(tuple(gpus), cores, pool_bytes or int(ram * 0.5), datetime.now(UTC))


def from_cluster(
    address: str, nodes: list[dict[str, Any]], reserved_bytes: int = 0, reserved_gpus: int = 0
) -> Inventory:
    """A Ray cluster's capacity as an inventory (``nodes``: the live nodes' ``resources``).

    Replicas never span nodes, so a configuration is at most what the largest node has: its CPUs, and
    GPUs of one model per id (``accelerator_type:H100`` as Ray labels them). The RAM pool is the sum of
    the nodes' ``memory`` resource (what Ray lets tasks reserve), and GPUs count across the cluster.
    ``reserved_*``: what the serverless engine actors take (``endpoints/serverless.py``), not for endpoints."""
    resources = [n.get("resources", {}) for n in nodes]
    cores = int(max((r.get("CPU", 0) for r in resources), default=0))
    memory = max(0, int(sum(r.get("memory", 0) for r in resources)) - reserved_bytes)
    gpus: list[Gpu] = []
    for r in resources:
        model = _gpu_model(next((k.split(":", 1)[1] for k in r if k.startswith("accelerator_type:")), "gpu"))
        # Ray does not say how much memory a GPU has: the model's nominal size (0, refusing every model,
        # for a GPU it does not name).
        memory_gb = _NOMINAL_GB.get(model, 0)
        gpus += [Gpu(len(gpus) + i, model, memory_gb, "pcie") for i in range(int(r.get("GPU", 0)))]
    gpus = gpus[: max(0, len(gpus) - reserved_gpus)]
    total_cpus = int(sum(r.get("CPU", 0) for r in resources))
    where = (
        f"Ray cluster at {address}: {len(nodes)} node(s), {total_cpus} CPUs, {len(gpus)} GPU(s), "
        f"{memory / GIB:.1f} GiB of memory for replicas"
        + (f" ({reserved_bytes / GIB:.1f} GiB more kept for serverless engines)" if reserved_bytes else "")
        if nodes
        else f"Ray cluster at {address}: no live node"
    )
    largest = int(max((r.get("memory", 0) for r in resources), default=0))
    return Inventory(tuple(gpus), cores, memory, datetime.now(UTC), where, largest)


def _nvidia_gpus() -> list[Gpu]:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        query = [exe, "--query-gpu=index,name,memory.total", "--format=csv,noheader,nounits"]
        rows = subprocess.run(query, capture_output=True, text=True, timeout=20, check=True).stdout
        topo = subprocess.run([exe, "topo", "-m"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return parse_nvidia_smi(rows, topo)


def parse_nvidia_smi(rows: str, topo: str) -> list[Gpu]:
    """``rows``: ``index, name, memory MiB`` lines; ``topo``: ``nvidia-smi topo -m`` (NV# means NVLink)."""
    link = "sxm" if re.search(r"\bNV\d+\b", topo) else "pcie"
    gpus = []
    for row in rows.strip().splitlines():
        index, name, mib = (part.strip() for part in row.split(","))
        gb = round(float(mib) / 1024)
        # Nominal sizes, as the ids use them: 81559 MiB is an "80gb" H100.
        gpus.append(Gpu(int(index), _gpu_model(name), round(gb, -1) if gb >= 40 else gb, link))
    return gpus


def _gpu_model(name: str) -> str:
    flat = name.lower().replace("-", "_").replace(" ", "_")
    return next((m for m in _GPU_MODELS if m in flat), re.sub(r"[^a-z0-9]+", "_", flat).strip("_"))


def estimate_bytes(manifest: Manifest, config: dict[str, Any], dtype_bytes: int, max_context: int | None = None) -> int:
    """The module docstring's formula; ``config`` is the model's config.json; the KV cache is sized for
    the context the model is served with (``max_context``: the server's cap)."""
    nested = config.get("text_config")
    text: dict[str, Any] = nested if isinstance(nested, dict) else config
    params = manifest.parameters or 0
    layers = int(text.get("num_hidden_layers") or text.get("n_layer") or 0)
    heads = int(text.get("num_attention_heads") or text.get("n_head") or 1)
    kv_heads = int(text.get("num_key_value_heads") or heads)
    hidden = int(text.get("hidden_size") or text.get("n_embd") or 0)
    head_dim = int(text.get("head_dim") or (hidden // heads if heads else 0))
    context = context_length_of(manifest, max_context)
    kv = 2 * layers * kv_heads * head_dim * context * dtype_bytes
    return int((params * dtype_bytes + kv) * OVERHEAD)
