"""The model page's "Use this model" examples: valid code for the model's type, no key in them."""

from __future__ import annotations

import ast
import json
import shlex

from modelport.web.views import usage_snippets


def test_chat_examples_name_the_model_and_server_and_parse() -> None:
    snippets = {s.id: s.text for s in usage_snippets("acme/my-model", "chat", "http://example.test:8000/")}
    assert set(snippets) == {"snippet-curl", "snippet-openai", "snippet-together", "snippet-modelport"}
    ast.parse(snippets["snippet-openai"])  # runnable Python
    assert 'base_url="http://example.test:8000/v1"' in snippets["snippet-openai"]
    curl = shlex.split(snippets["snippet-curl"].replace("\\\n", " "))
    assert curl[1] == "http://example.test:8000/v1/chat/completions"
    assert json.loads(curl[curl.index("-d") + 1])["model"] == "acme/my-model"
    assert "Bearer $MODELPORT_API_KEY" in snippets["snippet-curl"]  # a variable, never a key
    assert snippets["snippet-modelport"].endswith('modelport chat acme/my-model --message "Hello" --max-tokens 64')


def test_embedding_models_get_embedding_examples_only() -> None:
    snippets = {s.id: s.text for s in usage_snippets("acme/embedder", "embedding", "https://mp.example")}
    assert set(snippets) == {"snippet-curl", "snippet-openai"}
    assert "https://mp.example/v1/embeddings" in snippets["snippet-curl"]
    ast.parse(snippets["snippet-openai"])
    assert 'client.embeddings.create(model="acme/embedder"' in snippets["snippet-openai"]
