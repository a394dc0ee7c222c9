"""What the console's pages show: the model page's examples (valid code for the model's type, no key in
them) and the dashboard's usage by day."""

from __future__ import annotations

import ast
import json
import shlex
from datetime import date, timedelta

from modelport.serving.usage import UsageRow
from modelport.web.views import usage_days, usage_snippets


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


def test_usage_days_fill_the_window_and_sum_the_models() -> None:
    since, until = date(2026, 11, 25), date(2026, 12, 1)
    rows = [
        UsageRow("acme", "acme/a", date(2026, 12, 1), 2, 10, 30),
        UsageRow("acme", "acme/b", date(2026, 12, 1), 1, 5, 5),
        UsageRow("acme", "acme/a", date(2026, 11, 28), 1, 20, 5),
        UsageRow("acme", "acme/a", date(2026, 11, 1), 9, 9, 9),  # outside the window
    ]
    days = usage_days(rows, since, until)
    assert [d["day"] for d in days] == [date(2026, 12, 1) - timedelta(days=i) for i in range(7)]  # newest first
    assert (days[0]["requests"], days[0]["prompt_tokens"], days[0]["completion_tokens"], days[0]["share"]) == (
        3,
        15,
        35,
        1.0,
    )
    assert days[3]["share"] == 25 / 50 and days[1]["requests"] == 0 and days[1]["share"] == 0
    assert all(d["share"] == 0 for d in usage_days([], since, until))
