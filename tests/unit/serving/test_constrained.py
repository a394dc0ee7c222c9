"""Grammar-constrained decoding in the real engine: tiny random-weight models, which never write valid
JSON by chance, answer JSON that validates, in batches mixed with free-text rows and with adapters."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import jsonschema
import pytest

from modelport.errors import InvalidRequest
from modelport.manifest import Manifest, ModelKind
from modelport.serving.constraint import Vocabulary
from modelport.serving.engine import Artifact, GenerationRequest, SamplingParams
from modelport.serving.engines.torch.engine import TorchEngine
from modelport.serving.grammar import json_grammar, response_format_grammar
from modelport.serving.text import load_text_model
from modelport.settings import Settings
from tests.support.tinymodels import make_json_llama, make_lora

MODEL = Manifest(kind=ModelKind.MODEL)
SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 12},
        "temp": {"type": "integer", "minimum": -50, "maximum": 60},
        "sunny": {"type": "boolean"},
        "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 3},
    },
    "required": ["city", "temp", "sunny", "tags"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module", params=["bytes", "pieces"])
def model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Artifact, Artifact]:
    root = tmp_path_factory.mktemp(f"json-{request.param}")
    folder = make_json_llama(root / "m", tokenizer=request.param)
    lora = make_lora(root / "lora", folder)
    size = (folder / "model.safetensors").stat().st_size
    adapter = Artifact(
        "lora", lora, Manifest(kind=ModelKind.ADAPTER), (lora / "adapter_model.safetensors").stat().st_size
    )
    return Artifact(f"m-{request.param}", folder, MODEL, size), adapter


def _request(
    base: Artifact, adapter: Artifact | None, grammar: str | None, i: int, *, max_tokens: int = 300
) -> GenerationRequest:
    prompt = load_text_model(base.path).encode("Hello! Tell me the weather.", special=False)
    params = SamplingParams(
        max_tokens=max_tokens, temperature=1.0, seed=i, stop_token_ids=frozenset({2}), grammar=grammar
    )
    return GenerationRequest(f"r{i}", base, adapter, prompt, params, 1024)


def _run(settings: Settings, body: object) -> None:
    engine = TorchEngine(settings)
    engine.start()
    try:
        asyncio.run(body(engine))  # type: ignore[operator]
    finally:
        engine.stop()


def test_every_constrained_row_of_a_mixed_batch_validates(tmp_path: Path, model: tuple[Artifact, Artifact]) -> None:
    base, adapter = model
    grammar = json_grammar(SCHEMA, "response_format")
    text = load_text_model(base.path)

    async def body(engine: TorchEngine) -> None:
        async def answer(req: GenerationRequest) -> tuple[list[int], str | None]:
            ids, reason = [], None
            async for step in engine.generate(req):
                ids.append(step.token_id)
                reason = step.finish_reason
            return ids, reason

        requests = [
            _request(base, adapter if i % 3 == 2 else None, grammar if i % 2 == 0 else None, i) for i in range(8)
        ]
        results = await asyncio.gather(*(answer(r) for r in requests))
        free_text_valid = 0
        for req, (ids, reason) in zip(requests, results, strict=True):
            out = text.decode(ids)
            if req.params.grammar is not None:
                assert reason == "stop", out
                jsonschema.validate(json.loads(out), SCHEMA)
                assert out.startswith('{"city":"')  # compact: no whitespace the model may choose
            else:
                try:
                    jsonschema.validate(json.loads(out), SCHEMA)
                    free_text_valid += 1
                except (ValueError, jsonschema.ValidationError):
                    pass
        assert free_text_valid == 0  # the same model unconstrained: no valid JSON by chance

    _run(Settings(data_dir=tmp_path, max_num_seqs=8), body)


def test_any_json_object_and_a_grammar_that_does_not_compile(tmp_path: Path, model: tuple[Artifact, Artifact]) -> None:
    base, _ = model
    any_object = response_format_grammar({"type": "json_object"})
    text = load_text_model(base.path)

    async def body(engine: TorchEngine) -> None:
        steps = [s async for s in engine.generate(_request(base, None, any_object, 3, max_tokens=200))]
        ids, reason = [s.token_id for s in steps], steps[-1].finish_reason
        # Any object may hold strings as long as the model likes: cut by max_tokens, the answer is still,
        # token for token, a beginning the grammar accepts.
        if reason == "stop":
            assert isinstance(json.loads(text.decode(ids)), dict)
        else:
            vocabulary = Vocabulary(text, len(text.tokenizer.get_vocab()))
            check = vocabulary.constraint(any_object)
            assert text.decode(ids).startswith("{") and check.matcher.consume_tokens(ids), text.decode(ids)
        with pytest.raises(InvalidRequest):
            await engine.prepare(_request(base, None, "not a grammar {", 4))

    _run(Settings(data_dir=tmp_path), body)


def test_a_token_outside_the_grammar_fails_the_constraint_with_its_reason(model: tuple[Artifact, Artifact]) -> None:
    """What the runner reads after each token: a row whose grammar broke ends with this reason, alone."""
    base, _ = model
    text = load_text_model(base.path)
    constraint = Vocabulary(text, text.vocab_size).constraint(response_format_grammar({"type": "json_object"}))
    brace, x = text.tokenizer.token_to_id("{"), text.tokenizer.token_to_id("x")
    assert constraint.failed is None and not constraint.advance(brace)
    assert constraint.advance(x)  # `{x`: no JSON begins so
    assert constraint.failed
