"""Tiny, real Hugging Face-format models and PEFT LoRA adapters, generated in code.

Weights are random but named and shaped exactly as transformers' ``LlamaForCausalLM`` and PEFT save
them, so the files load with ``from_pretrained`` / ``PeftModel.from_pretrained``. The Llama and LoRA
writers are ``modelport.demo``'s (what ``modelport demo`` writes); the models here are smaller and use a
word-level tokenizer whose ids tests can spell.
"""

from __future__ import annotations

import io
import json
import tarfile
import zipfile
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

from modelport.demo import (
    CHAT_TEMPLATE,
    CORPUS,
    llama_config,
    tokenizer_config,
    train_tokenizer,
    write_llama,
    write_lora,
)

__all__ = [
    "CHAT_TEMPLATE",
    "TOOLS_TEMPLATE",
    "WORDS",
    "archive_bytes",
    "files_of",
    "make_bert_embedder",
    "make_json_llama",
    "make_llama",
    "make_lora",
]

# A Hermes / Qwen 2.5-style template: tools in the system turn, calls as <tool_call> JSON, results as
# <tool_response>, as those templates render them.
TOOLS_TEMPLATE = (
    "{% if tools %}<|im_start|>system\n# Tools\n<tools>\n{% for t in tools %}{{ t | tojson }}\n{% endfor %}"
    '</tools>\nCall a tool as <tool_call>\n{"name": <name>, "arguments": <args>}\n</tool_call><|im_end|>\n{% endif %}'
    "{% for m in messages %}{% if m.role == 'tool' %}"
    "<|im_start|>user\n<tool_response>\n{{ m.content }}\n</tool_response><|im_end|>\n"
    "{% else %}<|im_start|>{{ m.role }}\n{{ m.content or '' }}"
    "{% for c in m.tool_calls or [] %}<tool_call>\n"
    '{"name": "{{ c.function.name }}", "arguments": {{ c.function.arguments | tojson }}}\n</tool_call>'
    "{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
JSON_SPECIALS = ["<unk>", "<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>"]
# What the byte-level tokenizer learns its merges from: prose and JSON, so both have multi-byte pieces.
JSON_CORPUS = CORPUS + '{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}\n[1, 2, 3]\n'


# Token i + 4 is WORDS[i] (after <unk>, <s>, </s>, <pad>): tests spell prompts as ids with it.
WORDS = ["the", "capital", "of", "france", "is", "paris", "hello", "world", "a", "b", "c", "model", "q", ":"]


def _word_tokenizer() -> Tokenizer:
    vocab = {tok: i for i, tok in enumerate(["<unk>", "<s>", "</s>", "<pad>", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return tok


def make_llama(
    path: Path,
    *,
    seed: int = 0,
    chat: bool = True,
    hidden: int = 16,
    layers: int = 2,
    heads: int = 2,
    kv_heads: int = 2,
    intermediate: int = 32,
) -> Path:
    """A tiny Llama with a word-level tokenizer over ``WORDS`` (the demo model's recipe, smaller)."""
    tok = _word_tokenizer()
    sizes = {"hidden": hidden, "layers": layers, "heads": heads, "kv_heads": kv_heads, "intermediate": intermediate}
    cfg = llama_config(tok.get_vocab_size(), **sizes)
    return write_llama(path, tok, tokenizer_config(chat_template=CHAT_TEMPLATE if chat else None), cfg, seed)


def _byte_tokenizer() -> Tokenizer:
    """A byte-level BPE as GPT-2, Llama 3 and Qwen use (every byte a token, then merges), trained here."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=JSON_SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(JSON_CORPUS.splitlines(), trainer=trainer)
    return tok


def make_json_llama(path: Path, *, seed: int = 0, tokenizer: str = "bytes", hidden: int = 16) -> Path:
    """A tiny Llama whose tokenizer can spell JSON, with a tools-aware chat template.

    ``tokenizer``: "bytes", a byte-level BPE (llguidance reads it itself), or "pieces", the demo model's
    SentencePiece-style BPE without byte fallback (modelport reads its pieces). ``<tool_call>`` and
    ``</tool_call>`` are added tokens that are not special, as in Qwen's tokenizer: they stay in the text."""
    tok = _byte_tokenizer() if tokenizer == "bytes" else train_tokenizer(vocab_size=400, corpus=JSON_CORPUS)
    tok.add_tokens([AddedToken("<tool_call>", special=False), AddedToken("</tool_call>", special=False)])
    if tokenizer == "bytes":
        tok.add_special_tokens([AddedToken(t, special=True) for t in JSON_SPECIALS])
    sizes = {"hidden": hidden, "layers": 2, "heads": 2, "kv_heads": 2, "intermediate": 2 * hidden}
    cfg = llama_config(tok.get_vocab_size(), **sizes, context=4096)
    config = tokenizer_config(chat_template=TOOLS_TEMPLATE)
    return write_llama(path, tok, config, cfg, seed)


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
    return write_lora(path, cfg, rank=rank, targets=targets, base_name=base_name, seed=seed)


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
