"""What transformers knows: model types and architecture class names, read from its auto mappings."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cache


def _names(mapping: Mapping[str, str | Sequence[str]]) -> set[str]:
    out: set[str] = set()
    for value in mapping.values():
        out.update((value,) if isinstance(value, str) else value)
    return out


@cache
def known_model_types() -> frozenset[str]:
    from transformers.models.auto import configuration_auto

    return frozenset(configuration_auto.CONFIG_MAPPING_NAMES)  # type: ignore[attr-defined]


@cache
def architectures() -> dict[str, frozenset[str]]:
    """Architecture names by what they do: ``generation``, ``encoder``, and ``all``."""
    from transformers.models.auto import modeling_auto as m

    generation = _names(m.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES) | _names(m.MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES)
    encoder = _names(m.MODEL_MAPPING_NAMES) | _names(m.MODEL_FOR_MASKED_LM_MAPPING_NAMES)
    everything: set[str] = set()
    for name in dir(m):
        if name.endswith("MAPPING_NAMES") and name != "CONFIG_MAPPING_NAMES":
            everything |= _names(getattr(m, name))
    return {"generation": frozenset(generation), "encoder": frozenset(encoder), "all": frozenset(everything)}
