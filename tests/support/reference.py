"""What transformers (and PEFT, for an adapter) answer: the ground truth the engine's tokens are checked against."""

from __future__ import annotations

from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM


def greedy(
    base: Path, lora: Path | None, prompt: list[int], max_new: int, eos_token_id: int | None = None
) -> list[int]:
    """The greedy continuation of ``prompt`` by the model in ``base``, through the adapter in ``lora``."""
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    if lora is not None:
        model = PeftModel.from_pretrained(model, lora)
    out = model.generate(torch.tensor([prompt]), max_new_tokens=max_new, do_sample=False, eos_token_id=eos_token_id)
    return list(out[0, len(prompt) :].tolist())
