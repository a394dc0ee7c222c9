"""Serverless multi-LoRA: many adapters of one base model resident at once, mixed in one batch.

Each targeted ``nn.Linear`` is wrapped once in ``MultiLoraLinear``, which holds every resident
adapter's A and B matrices stacked by *slot* (slot 0 is all zeros: "no adapter"). A decode pass
applies all the batch's slots in three kernels a layer and a prefill pass gathers each row's own
matrices (the BGMV and SGMV ideas of Punica/S-LoRA), so 16 rows on 16 different adapters cost about
what 16 rows on one do. Adapters are
read from disk off the engine thread (``read_adapter``) and copied into a free slot between steps;
slots are reused least-recently-used first, never while a running sequence holds them.
"""

from __future__ import annotations

import json
import math
import re
from collections import OrderedDict
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from modelport.adapter_patterns import PatternTable, UnsafePattern
from modelport.errors import EngineFailed
from modelport.serving.engines.torch.packed import LINEARS, PackedLinear, pack, packed_linear

_LORA_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.[^.]+)?\.weight$")


@dataclass
class AdapterWeights:
    id: str
    modules: dict[str, tuple[torch.Tensor, torch.Tensor, float]]  # module → (A [r,in], B [out,r], scale)


def read_adapter(adapter_id: str, path: Path, base_modules: Collection[str] | None = None) -> AdapterWeights:
    """Read a PEFT LoRA adapter into CPU tensors; refuse the variants the slot kernels cannot express.

    ``base_modules``: the base model's Linear layers. Given, an adapter naming any other module is
    refused before its patterns are matched, so they only ever see names the architecture made.
    """
    cfg = json.loads((path / "adapter_config.json").read_text())
    unsupported = [
        reason
        for reason, present in (
            (f"peft_type {cfg.get('peft_type')}", cfg.get("peft_type", "LORA") != "LORA"),
            ("DoRA (use_dora)", bool(cfg.get("use_dora"))),
            ("fan_in_fan_out (Conv1D layers)", bool(cfg.get("fan_in_fan_out"))),
            ("modules_to_save", bool(cfg.get("modules_to_save"))),
        )
        if present
    ]
    if unsupported:
        raise EngineFailed(f"the serving engine does not support adapters with {', '.join(unsupported)}")
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in load_file(str(path / "adapter_model.safetensors")).items():
        m = _LORA_KEY.match(key)
        if m is None:
            raise EngineFailed(f"adapter tensor {key!r} is not a LoRA A/B matrix (embedding LoRA is not supported)")
        pairs.setdefault(m["module"], {})[m["ab"]] = tensor
    unknown = sorted(set(pairs) - set(base_modules)) if base_modules is not None else []
    if unknown:
        raise EngineFailed(f"the adapter targets {unknown[0][:200]!r}, which is not a Linear layer of the base model")
    alphas = _alpha_table(cfg, list(pairs))
    modules: dict[str, tuple[torch.Tensor, torch.Tensor, float]] = {}
    for module, ab in pairs.items():
        if set(ab) != {"A", "B"}:
            raise EngineFailed(f"adapter module {module!r} lacks its lora_A or lora_B matrix")
        rank = ab["A"].shape[0]
        alpha = alphas.lookup(module, cfg.get("lora_alpha", rank))
        scale = alpha / math.sqrt(rank) if cfg.get("use_rslora") else alpha / rank
        modules[module] = (ab["A"], ab["B"], scale)
    return AdapterWeights(adapter_id, modules)


def _alpha_table(cfg: dict[str, Any], modules: list[str]) -> PatternTable:
    """``alpha_pattern`` as PEFT reads it, refused when evaluating it could take unbounded time.

    Validation refuses such adapters at upload; this holds for those stored before it did, and the
    patterns run in a worker thread that still holds the interpreter lock every request needs.
    """
    patterns = cfg.get("alpha_pattern") or {}
    if not isinstance(patterns, dict) or not all(_is_number(v) for v in patterns.values()):
        raise EngineFailed("adapter_config.json: alpha_pattern must map module patterns to numbers")
    try:
        table = PatternTable.build(patterns)
        table.check_budget(modules)
    except UnsafePattern as e:
        raise EngineFailed(f"adapter_config.json: alpha_pattern {e}") from None
    return table


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


class LoraContext:
    """Which slot each batch row uses in the coming forward pass; ``None`` skips LoRA entirely."""

    def __init__(self) -> None:
        self.slots: torch.Tensor | None = None
        self.top = 0  # one past the highest slot in the batch
        self._masks: dict[tuple[int, torch.dtype], torch.Tensor] = {}

    def set(self, slots: torch.Tensor | None, top: int) -> None:
        self.slots, self.top = slots, top
        self._masks.clear()

    def mask(self, rank: int, dtype: torch.dtype) -> torch.Tensor:
        """Rows x (slots 1..top-1, each ``rank`` columns): 1 where the column belongs to the row's slot.
        Built once per pass and rank, shared by every layer of that rank."""
        key = (rank, dtype)
        mask = self._masks.get(key)
        if mask is None:
            assert self.slots is not None
            columns = torch.arange(1, self.top, device=self.slots.device).repeat_interleave(rank)
            mask = (self.slots.view(-1, 1) == columns.view(1, -1)).to(dtype)
            self._masks[key] = mask
        return mask


class MultiLoraLinear(nn.Module):
    """A Linear plus every resident adapter's delta, ``scale * B @ A``, each row its own slot's.

    A is stored (slots, rank, in) and B, scale folded in, (slots, rank, out): slot s's rows of both are
    contiguous, so the first ``top`` slots are one matrix each without a copy. A decode pass (one token
    per row) multiplies every row by all the batch's slots' A at once, zeroes the columns of other slots
    (``LoraContext.mask``) and adds the product with B to the base output in one ``addmm``: three kernels
    a layer, whatever the mix of adapters (over a packed bf16 base, A and B are packed for oneDNN too,
    once per set of resident adapters, ``packed.py``). A prefill pass, many tokens per row, gathers each
    row's own A and B and uses two batched matmuls, which cost rows x tokens x rank, not x slots x rank.
    """

    def __init__(self, base: nn.Linear | PackedLinear, ctx: LoraContext, num_slots: int) -> None:
        super().__init__()
        self.base, self.ctx, self.num_slots = base, ctx, num_slots
        self.rank = 0
        dtype, device = base.weight.dtype, base.weight.device
        self.a = torch.zeros((num_slots, 0, base.in_features), dtype=dtype, device=device)
        self.b = torch.zeros((num_slots, 0, base.out_features), dtype=dtype, device=device)
        # Over a packed base, the decode pass's A and B of slots 1..top-1, packed too, by top; rebuilt
        # after an adapter is installed or removed.
        self._packed: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.base(x)
        slots = self.ctx.slots
        if slots is None or self.rank == 0:
            return y
        if x.shape[1] == 1:
            return self._decode(x, y)
        shrunk = torch.bmm(x, self.a[slots].transpose(1, 2))
        return torch.baddbmm(y, shrunk, self.b[slots])

    def _decode(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        top, rows, base = self.ctx.top, x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1])
        if isinstance(self.base, PackedLinear):  # bf16 on a CPU: oneDNN would reorder A and B each call
            a, b = self._packed.get(top) or self._pack(top)
            shrunk = packed_linear(rows, a)
            shrunk *= self.ctx.mask(self.rank, shrunk.dtype)
            return (base + packed_linear(shrunk, b)).view(y.shape)
        shrunk = rows @ self.a[1:top].reshape(-1, x.shape[-1]).T
        shrunk *= self.ctx.mask(self.rank, shrunk.dtype)
        return torch.addmm(base, shrunk, self.b[1:top].reshape(-1, y.shape[-1])).view(y.shape)

    def _pack(self, top: int) -> tuple[torch.Tensor, torch.Tensor]:
        a = pack(self.a[1:top].reshape(-1, self.a.shape[2]))
        b = pack(self.b[1:top].reshape(-1, self.b.shape[2]).T.contiguous())
        self._packed[top] = (a, b)
        return a, b

    def load(self, slot: int, a: torch.Tensor, b: torch.Tensor, scale: float) -> None:
        rank = a.shape[0]
        if rank > self.rank:
            self._grow(rank)
        self.clear(slot)
        self.a[slot, :rank] = a.to(self.a.dtype)
        self.b[slot, :rank] = (b.float().T * scale).to(self.b.dtype)

    def clear(self, slot: int) -> None:
        self.a[slot].zero_()
        self.b[slot].zero_()
        self._packed.clear()

    def _grow(self, rank: int) -> None:
        # Smaller adapters are zero-padded to the largest rank: zeros add exactly nothing.
        a = self.a.new_zeros((self.num_slots, rank, self.a.shape[2]))
        b = self.b.new_zeros((self.num_slots, rank, self.b.shape[2]))
        a[:, : self.rank], b[:, : self.rank] = self.a, self.b
        self.a, self.b, self.rank = a, b, rank
        self._packed.clear()


class LoraSlots:
    """Adapter residency for one base model: an LRU over ``max_adapters`` slots with reference counts."""

    def __init__(self, model: nn.Module, max_adapters: int) -> None:
        self.model, self.max_adapters = model, max_adapters
        self.targets = frozenset(name for name, m in model.named_modules() if isinstance(m, LINEARS))
        self.ctx = LoraContext()
        self.layers: dict[str, MultiLoraLinear] = {}
        self.resident: OrderedDict[str, int] = OrderedDict()  # adapter id → slot, least recent first
        self.users: dict[str, int] = {}
        self.loads = 0

    def acquire(self, adapter: AdapterWeights) -> int | None:
        """The adapter's slot (installing it if needed), or None while every slot is in use."""
        slot = self.resident.get(adapter.id)
        if slot is None:
            slot = self._free_slot()
            if slot is None:
                return None
            self._install(adapter, slot)
        self.resident.move_to_end(adapter.id)
        self.users[adapter.id] = self.users.get(adapter.id, 0) + 1
        return slot

    def release(self, adapter_id: str) -> None:
        self.users[adapter_id] -= 1

    def set_batch(self, slots: list[int]) -> None:
        device = next(iter(self.layers.values())).a.device if self.layers else None
        self.ctx.set(torch.tensor(slots, device=device) if any(slots) else None, max(slots, default=0) + 1)

    def _free_slot(self) -> int | None:
        used = set(self.resident.values())
        for slot in range(1, self.max_adapters + 1):
            if slot not in used:
                return slot
        for adapter_id, slot in self.resident.items():  # least recently used first
            if self.users.get(adapter_id, 0) == 0:
                del self.resident[adapter_id]
                self.users.pop(adapter_id, None)
                return slot
        return None

    def _install(self, adapter: AdapterWeights, slot: int) -> None:
        for name in adapter.modules:
            if name not in self.layers:
                self._wrap(name)
        for name, layer in self.layers.items():
            if name in adapter.modules:
                layer.load(slot, *adapter.modules[name])
            else:
                layer.clear(slot)
        self.resident[adapter.id] = slot
        self.loads += 1

    def _wrap(self, name: str) -> None:
        parent_name, _, attr = name.rpartition(".")
        try:
            parent = self.model.get_submodule(parent_name)
            target = getattr(parent, attr)
        except AttributeError:
            raise EngineFailed(f"the adapter targets {name!r}, which the base model does not have") from None
        if not isinstance(target, LINEARS):
            raise EngineFailed(f"the adapter targets {name!r}, a {type(target).__name__}; only Linear layers work")
        wrapped = MultiLoraLinear(target, self.ctx, self.max_adapters + 1)
        setattr(parent, attr, wrapped)
        self.layers[name] = wrapped
