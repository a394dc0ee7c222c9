"""The dtype the engine runs weights in, chosen once at start-up from what the hardware multiplies fast.

On a CPU with AMX or AVX512-BF16, bf16 weights halve the bytes every decode step reads and oneDNN's
bf16 matmuls accumulate in fp32, so serving is faster at a small, documented cost in precision
(docs/serving.md, "Precision"). Any other CPU emulates bf16 in software, slower than fp32, so it
stays in fp32. On CUDA a model stored in bf16 or fp16 runs in that dtype, and one stored in fp32 (or of
unknown dtype) in bf16, as vLLM's ``--dtype auto`` does: fp32 doubles the bytes per step for nothing
a served model needs. ``MODELPORT_ENGINE_DTYPE`` overrides all of this.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
HALF = {"BF16": torch.bfloat16, "F16": torch.float16}  # safetensors' names (``Manifest.dtype``) kept on CUDA


@dataclass(frozen=True)
class Precision:
    """``dtype``: what every model loads in; ``None`` on CUDA: each model's stored half precision."""

    dtype: torch.dtype | None
    reason: str

    @property
    def label(self) -> str:
        return "stored" if self.dtype is None else str(self.dtype).removeprefix("torch.")

    def for_model(self, stored: str | None) -> torch.dtype:
        """The dtype a model whose weights are mostly ``stored`` (a safetensors dtype, "F32") loads in."""
        if self.dtype is not None:
            return self.dtype
        return HALF.get(stored or "", torch.bfloat16)


def choose(setting: str, device: torch.device) -> Precision:
    if setting != "auto":
        return Precision(DTYPES[setting], "set by MODELPORT_ENGINE_DTYPE")
    if device.type != "cpu":
        return Precision(None, f"the model's stored bf16 or fp16 on {device.type}, else bf16")
    feature = cpu_bf16_feature()
    if feature is None:
        return Precision(torch.float32, "this CPU has no bf16 arithmetic (neither AMX nor AVX512-BF16)")
    return Precision(torch.bfloat16, f"this CPU multiplies bf16 in hardware ({feature})")


def cpu_bf16_feature() -> str | None:
    """The CPU's bf16 matrix instructions, by name, or None, as PyTorch's own CPU probe (cpuinfo) sees them."""
    probes = (("AMX", "_is_amx_tile_supported"), ("AVX512-BF16", "_is_avx512_bf16_supported"))
    for name, probe in probes:
        check: Callable[[], bool] | None = getattr(torch.cpu, probe, None)  # private; absent in some builds
        try:
            if check is not None and check():
                return name
        except RuntimeError:  # not an x86 build
            continue
    return None
