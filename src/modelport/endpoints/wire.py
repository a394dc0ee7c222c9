"""The JSON that crosses between the API server and a replica process: engine requests and token steps."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from pydantic import TypeAdapter

from modelport.serving.engine import Artifact, GenerationRequest, Pooling, SamplingParams, TokenStep

# ``{"id", "path", "manifest", "weight_bytes"}``; the manifest in its stored JSON form (``Manifest.to_json``).
_ARTIFACT = TypeAdapter(Artifact)


def artifact_to_json(a: Artifact) -> dict[str, Any]:
    data: dict[str, Any] = _ARTIFACT.dump_python(a, mode="json")
    return data


def artifact_from_json(d: dict[str, Any]) -> Artifact:
    return _ARTIFACT.validate_python(d)


def request_to_json(r: GenerationRequest) -> dict[str, Any]:
    params = asdict(r.params)
    params["logit_bias"] = {str(k): v for k, v in r.params.logit_bias.items()}
    params["stop_token_ids"] = sorted(r.params.stop_token_ids)
    return {
        "request_id": r.request_id,
        "base": artifact_to_json(r.base),
        "adapter": artifact_to_json(r.adapter) if r.adapter else None,
        "prompt_ids": r.prompt_ids,
        "params": params,
        "context_length": r.context_length,
    }


def request_from_json(d: dict[str, Any]) -> GenerationRequest:
    p = dict(d["params"])
    p["logit_bias"] = {int(k): float(v) for k, v in p["logit_bias"].items()}
    p["stop_token_ids"] = frozenset(p["stop_token_ids"])
    return GenerationRequest(
        d["request_id"],
        artifact_from_json(d["base"]),
        artifact_from_json(d["adapter"]) if d["adapter"] else None,
        list(d["prompt_ids"]),
        SamplingParams(**p),
        int(d["context_length"]),
    )


def step_to_json(s: TokenStep) -> dict[str, Any]:
    return {"t": s.token_id, "lp": s.logprob, "top": s.top_logprobs, "f": s.finish_reason}


def step_from_json(d: dict[str, Any]) -> TokenStep:
    top = [(int(t), float(lp)) for t, lp in d["top"]] if d.get("top") is not None else None
    return TokenStep(int(d["t"]), d.get("lp"), top, d.get("f"))


def pooling_to_json(p: Pooling) -> dict[str, Any]:
    return asdict(p)
