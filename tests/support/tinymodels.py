"""Tiny, real Hugging Face-format models and PEFT LoRA adapters, generated in code.

Weights are random but named and shaped exactly as transformers' ``LlamaForCausalLM`` and PEFT save
them, so the files load with ``from_pretrained`` / ``PeftModel.from_pretrained``.
"""

from __future__ import annotations

import io
import json
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file
from tokenizers import Tokenizer, models, pre_tokenizers

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
WORDS = ["the", "capital", "of", "france", "is", "paris", "hello", "world", "a", "b", "c", "model", "q", ":"]


def _tokenizer(path: Path) -> int:
    vocab = {tok: i for i, tok in enumerate(["<unk>", "<s>", "</s>", "<pad>", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "bos_token": "<s>",
                "eos_token": "</s>",
                "unk_token": "<unk>",
                "pad_token": "<pad>",
                "chat_template": CHAT_TEMPLATE,
            }
        )
    )
    return len(vocab)


def llama_config(
    vocab: int, hidden: int = 16, layers: int = 2, heads: int = 2, kv_heads: int = 2, intermediate: int = 32
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
        "max_position_embeddings": 128,
        "rms_norm_eps": 1e-6,
        "torch_dtype": "float32",
        "bos_token_id": 1,
        "eos_token_id": 2,
        "tie_word_embeddings": False,
    }


def llama_weights(cfg: dict[str, Any], seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    h, i, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    kv = cfg["num_key_value_heads"] * (h // cfg["num_attention_heads"])

    def w(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    tensors = {
        "model.embed_tokens.weight": w(v, h),
        "model.norm.weight": np.ones(h, np.float32),
        "lm_head.weight": w(v, h),
    }
    for n in range(cfg["num_hidden_layers"]):
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


def make_llama(path: Path, *, seed: int = 0, chat: bool = True, **sizes: int) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    vocab = _tokenizer(path)
    if not chat:
        cfg_path = path / "tokenizer_config.json"
        tok_cfg = json.loads(cfg_path.read_text())
        tok_cfg.pop("chat_template")
        cfg_path.write_text(json.dumps(tok_cfg))
    cfg = llama_config(vocab, **sizes)
    (path / "config.json").write_text(json.dumps(cfg))
    (path / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2}))
    save_file(llama_weights(cfg, seed), str(path / "model.safetensors"), metadata={"format": "pt"})
    return path


def make_lora(
    path: Path,
    base: Path,
    *,
    rank: int = 4,
    targets: tuple[str, ...] = ("q_proj", "v_proj"),
    base_name: str = "base",
    seed: int = 1,
) -> Path:
    """A PEFT LoRA adapter for the model at ``base`` (shapes read from its config)."""
    cfg = json.loads((base / "config.json").read_text())
    h = cfg["hidden_size"]
    kv = cfg["num_key_value_heads"] * (h // cfg["num_attention_heads"])
    out_features = {"q_proj": h, "k_proj": kv, "v_proj": kv, "o_proj": h}
    rng = np.random.default_rng(seed)
    tensors = {}
    for n in range(cfg["num_hidden_layers"]):
        for t in targets:
            key = f"base_model.model.model.layers.{n}.self_attn.{t}"
            tensors[f"{key}.lora_A.weight"] = (rng.standard_normal((rank, h)) * 0.1).astype(np.float32)
            tensors[f"{key}.lora_B.weight"] = (rng.standard_normal((out_features[t], rank)) * 0.1).astype(np.float32)
    path.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path / "adapter_model.safetensors"), metadata={"format": "pt"})
    (path / "adapter_config.json").write_text(
        json.dumps(
            {
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
        )
    )
    return path


def make_bert_embedder(path: Path, seed: int = 0) -> Path:
    """A tiny sentence-transformers layout around a BERT encoder."""
    path.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    h, inter, layers = 16, 32, 1
    cfg = {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "hidden_size": h,
        "num_hidden_layers": layers,
        "num_attention_heads": 2,
        "intermediate_size": inter,
        "vocab_size": len(vocab),
        "max_position_embeddings": 64,
        "type_vocab_size": 2,
    }
    (path / "config.json").write_text(json.dumps(cfg))
    rng = np.random.default_rng(seed)
    tensors = {"embeddings.word_embeddings.weight": rng.standard_normal((len(vocab), h)).astype(np.float32)}
    save_file(tensors, str(path / "model.safetensors"))
    (path / "modules.json").write_text(
        json.dumps(
            [
                {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            ]
        )
    )
    (path / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 32, "do_lower_case": True}))
    (path / "1_Pooling").mkdir(exist_ok=True)
    (path / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": h, "pooling_mode_mean_tokens": True})
    )
    return path


def files_of(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def archive_bytes(files: dict[str, bytes], fmt: str, *, wrap: str | None = None) -> bytes:
    """Pack ``{path: bytes}`` as tar, tar.gz or zip, at the root or inside folder ``wrap``."""
    buf = io.BytesIO()
    names = {(f"{wrap}/{k}" if wrap else k): v for k, v in files.items()}
    if fmt == "zip":
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            for name, data in names.items():
                zf.writestr(name, data)
    else:
        with tarfile.open(fileobj=buf, mode="w:gz" if fmt == "tar.gz" else "w") as tf:
            for name, data in names.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()
