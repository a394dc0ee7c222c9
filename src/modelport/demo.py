"""A tiny but real model and LoRA adapter, generated in code, to try modelport without downloading any.

``write_demo(root)`` writes two folders in Hugging Face layout:

- ``root/tiny-chat``: a two-layer Llama (``LlamaForCausalLM``) with safetensors weights, a BPE tokenizer
  trained here on a built-in text, and a chat template, so it can be uploaded, chatted with and deployed;
- ``root/tiny-lora``: a PEFT LoRA adapter for it (``q_proj`` and ``v_proj``, non-zero ``lora_B``, so it
  really changes the model's outputs, which the server's admission test requires).

Weights are random but seeded, and every file is written the same way each time, so two runs write the
same bytes (and a second upload of the folder resumes or deduplicates). The test suite builds its models
with the same functions. Nothing here touches the network.
"""

from __future__ import annotations

import json
import string
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

MODEL_FOLDER = "tiny-chat"
ADAPTER_FOLDER = "tiny-lora"
BOS, EOS, UNK, PAD = "<s>", "</s>", "<unk>", "<pad>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
# The Zephyr/TinyLlama layout without newlines: every turn is <|role|>content</s>.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
DEMO_SIZES = {"hidden": 64, "layers": 2, "heads": 4, "kv_heads": 2, "intermediate": 128}
DEMO_CONTEXT = 1024
DEMO_VOCAB = 512
LORA_TARGETS = ("q_proj", "v_proj")
# What the tokenizer learns its pieces from; the random model answers with pieces of it.
CORPUS = """\
modelport takes the models and adapters you trained and serves them behind an API that speaks OpenAI.
Upload a model folder with its config, its safetensors weights and its tokenizer, then watch the job
download, unpack, validate and store it. Every file is checked before anything runs: no pickles, no
custom code, shapes that match the architecture, a chat template that renders in a sandbox.
A LoRA adapter is small: a pair of low rank matrices for a few modules of its base model. Many adapters
share one copy of the base weights, and each request in a batch may use its own adapter.
Hello! How are you today? I am a tiny model with random weights, so my answers are nonsense, but the
words come from this text. Ask me about models, adapters, endpoints, tokens and chat templates.
The quick brown fox jumps over the lazy dog. One, two, three, four, five, six, seven, eight, nine, ten.
A dedicated endpoint reserves hardware for one model and runs replicas of it until you stop it.
"""


def train_tokenizer(vocab_size: int = DEMO_VOCAB, corpus: str = CORPUS) -> Tokenizer:
    """A SentencePiece-style BPE (words keep their leading space as ``▁``) trained on ``corpus``.

    Not byte-level: every piece is readable text, so even a random model's output decodes to words.
    Every printable ASCII character has a piece; other characters encode as ``<unk>``.
    """
    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    specials = [UNK, BOS, EOS, PAD, *ROLE_TOKENS]
    alphabet = list(string.ascii_letters + string.digits + string.punctuation)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=alphabet, show_progress=False
    )
    tok.train_from_iterator(corpus.splitlines(), trainer=trainer)
    return tok


def tokenizer_config(*, chat_template: str | None = CHAT_TEMPLATE, max_length: int | None = None) -> dict[str, Any]:
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": EOS,
        "unk_token": UNK,
        "pad_token": PAD,
    }
    if max_length is not None:
        config["model_max_length"] = max_length
    if chat_template is not None:
        config["chat_template"] = chat_template
    return config


def llama_config(
    vocab: int,
    *,
    hidden: int,
    layers: int,
    heads: int,
    kv_heads: int,
    intermediate: int,
    context: int = 128,
    bos_id: int = 1,
    eos_id: int = 2,
) -> dict[str, Any]:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "vocab_size": vocab,
        "max_position_embeddings": context,
        "rms_norm_eps": 1e-6,
        "torch_dtype": "float32",
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "tie_word_embeddings": False,
    }


def _kv_width(config: dict[str, Any]) -> int:
    return int(config["num_key_value_heads"] * (config["hidden_size"] // config["num_attention_heads"]))


def llama_weights(config: dict[str, Any], seed: int = 0) -> dict[str, np.ndarray]:
    """Random weights named and shaped as transformers' ``LlamaForCausalLM`` saves them."""
    rng = np.random.default_rng(seed)
    h, i, v, kv = config["hidden_size"], config["intermediate_size"], config["vocab_size"], _kv_width(config)

    def w(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    tensors = {
        "model.embed_tokens.weight": w(v, h),
        "model.norm.weight": np.ones(h, np.float32),
        "lm_head.weight": w(v, h),
    }
    for n in range(config["num_hidden_layers"]):
        p = f"model.layers.{n}"
        tensors |= {
            f"{p}.self_attn.q_proj.weight": w(h, h),
            f"{p}.self_attn.k_proj.weight": w(kv, h),
            f"{p}.self_attn.v_proj.weight": w(kv, h),
            f"{p}.self_attn.o_proj.weight": w(h, h),
            f"{p}.mlp.gate_proj.weight": w(i, h),
            f"{p}.mlp.up_proj.weight": w(i, h),
            f"{p}.mlp.down_proj.weight": w(h, i),
            f"{p}.input_layernorm.weight": np.ones(h, np.float32),
            f"{p}.post_attention_layernorm.weight": np.ones(h, np.float32),
        }
    return tensors


def write_llama(
    path: Path, tokenizer: Tokenizer, tok_config: dict[str, Any], config: dict[str, Any], seed: int = 0
) -> Path:
    """A model folder: config, generation config, safetensors weights, tokenizer and its config."""
    path.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(path / "tokenizer.json"))
    _write_json(path / "tokenizer_config.json", tok_config)
    _write_json(path / "config.json", config)
    ids = {"bos_token_id": config["bos_token_id"], "eos_token_id": config["eos_token_id"]}
    _write_json(path / "generation_config.json", ids)
    save_file(llama_weights(config, seed), str(path / "model.safetensors"), metadata={"format": "pt"})
    return path


def lora_weights(base_config: dict[str, Any], *, rank: int, targets: Iterable[str], seed: int) -> dict[str, np.ndarray]:
    """LoRA pairs as PEFT saves them; ``lora_B`` is not zero (an untrained adapter would change nothing)."""
    h, kv = base_config["hidden_size"], _kv_width(base_config)
    out_features = {"q_proj": h, "k_proj": kv, "v_proj": kv, "o_proj": h}
    rng = np.random.default_rng(seed)
    tensors = {}
    for n in range(base_config["num_hidden_layers"]):
        for t in targets:
            key = f"base_model.model.model.layers.{n}.self_attn.{t}"
            tensors[f"{key}.lora_A.weight"] = (rng.standard_normal((rank, h)) * 0.1).astype(np.float32)
            tensors[f"{key}.lora_B.weight"] = (rng.standard_normal((out_features[t], rank)) * 0.1).astype(np.float32)
    return tensors


def write_lora(
    path: Path,
    base_config: dict[str, Any],
    *,
    rank: int = 4,
    targets: tuple[str, ...] = LORA_TARGETS,
    base_name: str = "base",
    seed: int = 1,
) -> Path:
    """A PEFT LoRA adapter folder (adapter_config.json, adapter_model.safetensors) for that base."""
    path.mkdir(parents=True, exist_ok=True)
    weights = lora_weights(base_config, rank=rank, targets=targets, seed=seed)
    save_file(weights, str(path / "adapter_model.safetensors"), metadata={"format": "pt"})
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": rank,
        "lora_alpha": 2 * rank,
        "lora_dropout": 0.0,
        "target_modules": list(targets),
        "base_model_name_or_path": base_name,
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
    }
    _write_json(path / "adapter_config.json", config)
    return path


@dataclass(frozen=True)
class Demo:
    model: Path
    adapter: Path


def write_demo(root: Path) -> Demo:
    """Write (or overwrite, with the same bytes) ``root/tiny-chat`` and ``root/tiny-lora``."""
    tokenizer = train_tokenizer()
    config = llama_config(
        tokenizer.get_vocab_size(),
        **DEMO_SIZES,
        context=DEMO_CONTEXT,
        bos_id=_token_id(tokenizer, BOS),
        eos_id=_token_id(tokenizer, EOS),
    )
    model = write_llama(root / MODEL_FOLDER, tokenizer, tokenizer_config(max_length=DEMO_CONTEXT), config, seed=0)
    adapter = write_lora(root / ADAPTER_FOLDER, config, rank=8, base_name=MODEL_FOLDER, seed=1)
    return Demo(model, adapter)


def _token_id(tokenizer: Tokenizer, token: str) -> int:
    found = tokenizer.token_to_id(token)
    if found is None:  # cannot happen: the trainer adds every special token first
        raise ValueError(f"the tokenizer lacks {token}")
    return int(found)


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2) + "\n")
