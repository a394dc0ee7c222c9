"""What crosses between the API server and an engine process (``ipc.py``): requests, token steps,
pooling and errors, as plain maps and lists that msgpack (or JSON, in a replica's spec file) can carry."""

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
        "cache_salt": r.cache_salt,
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
        str(d.get("cache_salt", "")),
    )


def step_to_wire(s: TokenStep) -> list[Any]:
    """A token step as a 5-item list: the hot path sends one per generated token, so no key names."""
    top = [[t, lp] for t, lp in s.top_logprobs] if s.top_logprobs is not None else None
    return [s.token_id, s.logprob, top, s.finish_reason, s.cached_tokens]


def step_from_wire(d: list[Any]) -> TokenStep:
    token, logprob, top, finish, cached = d
    tops = [(int(t), float(lp)) for t, lp in top] if top is not None else None
    return TokenStep(int(token), logprob, tops, finish, int(cached))


def pooling_to_json(p: Pooling) -> dict[str, Any]:
    return asdict(p)


def pooling_from_json(d: dict[str, Any]) -> Pooling:
    return Pooling(**d)
