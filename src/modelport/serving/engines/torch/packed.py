"""Linear layers whose bf16 weights oneDNN lays out once, at load, for the CPU's matrix units.

``nn.Linear`` in bf16 on a CPU goes to oneDNN with the weight in PyTorch's row-major layout, which its
AMX and AVX512-BF16 kernels reorder into their blocked layout on every call: at one row per step the
reorder costs more than the product. ``PackedLinear`` reorders once (``mkldnn._reorder_linear_weight``,
the op inductor's CPU freezing pass uses) and calls the kernel on the packed weight, with the same
result to the bit. Measured on a 2-core AMX machine, 57.9M-parameter Llama, whole decode steps: 1 row
+17%, 16 rows +9% over plain bf16 (docs/serving.md, "Precision").

The packed weight replaces the plain one (no memory is added), except for a weight shared with another
module (tied input and output embeddings), which stays a plain ``nn.Linear``: packing it would hold the
matrix twice.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

log = logging.getLogger(__name__)


class PackedLinear(nn.Module):
    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        # An opaque oneDNN tensor of shape (out, in), kept as ``weight`` for code that reads its shape.
        self.weight = pack(linear.weight.detach())
        self.bias = linear.bias
        self.dtype, self.device = linear.weight.dtype, linear.weight.device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return packed_linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


LINEARS = (nn.Linear, PackedLinear)  # what LoRA can target


def pack(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` (out, in) in oneDNN's layout for ``packed_linear``."""
    packed: torch.Tensor = torch.ops.mkldnn._reorder_linear_weight(weight, None)
    return packed


def packed_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear`` on a weight from ``pack``."""
    out: torch.Tensor = torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    return out


def can_pack(model: nn.Module) -> bool:
    """bf16 weights on a CPU whose oneDNN runs bf16 (it refuses CPUs without AVX-512 or an Arm equivalent)."""
    first = next(model.parameters(), None)
    if first is None or first.device.type != "cpu" or first.dtype != torch.bfloat16:
        return False
    supported = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(torch.backends.mkldnn.is_available() and supported is not None and supported())  # type: ignore[no-untyped-call]


def pack_linears(model: nn.Module) -> int:
    """Replace ``model``'s untied ``nn.Linear`` layers by ``PackedLinear`` where ``can_pack``; how many."""
    if not can_pack(model):
        return 0
    modules = list(model.named_modules(remove_duplicate=False))
    linears = [(name, m) for name, m in modules if type(m) is nn.Linear]
    # Everything else's own weights (an embedding's), and weights two Linear layers share.
    shared = {p.data_ptr() for _, m in modules if type(m) is not nn.Linear for p in m.parameters(recurse=False)}
    seen: set[int] = set()
    for _, m in linears:
        (shared if m.weight.data_ptr() in seen else seen).add(m.weight.data_ptr())
    packed = 0
    for name, linear in linears:
        if linear.weight.data_ptr() in shared:
            continue  # tied to an embedding, which still needs the plain matrix
        parent_name, _, attr = name.rpartition(".")
        try:
            replacement = PackedLinear(linear)
        except RuntimeError as e:  # an oneDNN build that cannot pack this shape: the plain layer serves
            log.warning("could not pack %s for oneDNN (%s); it runs unpacked", name, e)
            continue
        setattr(model.get_submodule(parent_name), attr, replacement)
        packed += 1
    return packed
