"""Tool calls parsed out of generated text: each format whole and streamed, with every answer also fed in
1-character, 3-character and random-size deltas, which must give the same calls and the same content."""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterator

import pytest

from modelport.serving.toolcalls import (
    FORMATS,
    CallDelta,
    ContentDelta,
    ToolCall,
    ToolCallStream,
    detect_format,
    parse_tool_calls,
)

Expected = tuple[str | None, list[tuple[str, str]]]  # content, [(name, compact arguments)]

WEATHER = '{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}'
WEATHER_ARGS = '{"city":"Paris","unit":"celsius"}'
TIME = '{"name": "get_time", "arguments": {"tz": "Europe/Paris"}}'
TIME_ARGS = '{"tz":"Europe/Paris"}'

# (format, answer, content, calls): the answers models write, good and bad.
CASES: list[tuple[str, str, str | None, list[tuple[str, str]]]] = [
    # hermes
    ("hermes", f"<tool_call>\n{WEATHER}\n</tool_call>", None, [("get_weather", WEATHER_ARGS)]),
    (
        "hermes",
        f"<tool_call>\n{WEATHER}\n</tool_call>\n<tool_call>\n{TIME}\n</tool_call>",
        None,
        [("get_weather", WEATHER_ARGS), ("get_time", TIME_ARGS)],
    ),
    (
        "hermes",
        f"Let me check that.\n<tool_call>{WEATHER}</tool_call>\nOne moment.",
        "Let me check that.\n\nOne moment.",
        [("get_weather", WEATHER_ARGS)],
    ),
    ("hermes", "The capital of France is Paris.", "The capital of France is Paris.", []),
    ("hermes", "Is 1 < 2? Yes, and <b>bold</b> is HTML.", "Is 1 < 2? Yes, and <b>bold</b> is HTML.", []),
    (  # missing closing brace: stays content, the next good call still counts
        "hermes",
        f'<tool_call>{{"name": "f", "arguments": {{"a": 1}}</tool_call>\n<tool_call>{TIME}</tool_call>',
        '<tool_call>{"name": "f", "arguments": {"a": 1}</tool_call>',
        [("get_time", TIME_ARGS)],
    ),
    ("hermes", '<tool_call>{"arguments": {}}</tool_call>', '<tool_call>{"arguments": {}}</tool_call>', []),
    (
        "hermes",
        '<tool_call>{"name": "f", "arguments": [1, 2]}</tool_call>',
        '<tool_call>{"name": "f", "arguments": [1, 2]}</tool_call>',
        [],
    ),
    (
        "hermes",
        '<tool_call>{"name": "add", "arguments": "{\\"a\\": 1, \\"b\\": 2}"}</tool_call>',
        None,
        [("add", '{"a":1,"b":2}')],
    ),
    (
        "hermes",
        '<tool_call>{"name": "translate", "arguments": {"text": "Grüße aus Zürich 🌸", "to": "日本語"}}</tool_call>',
        None,
        [("translate", '{"text":"Grüße aus Zürich 🌸","to":"日本語"}')],
    ),
    ("hermes", f"Sure.\n<tool_call>\n{WEATHER}\n", "Sure.", [("get_weather", WEATHER_ARGS)]),  # EOS, no close
    ("hermes", 'Sure.\n<tool_call>\n{"name": "get_w', 'Sure.\n<tool_call>\n{"name": "get_w', []),
    ("hermes", '<tool_call>{"name": "now"}</tool_call>', None, [("now", "{}")]),
    ("hermes", "Tags look like <tool_", "Tags look like <tool_", []),
    # llama3_json
    (
        "llama3_json",
        '{"name": "get_weather", "parameters": {"city": "Paris", "unit": "celsius"}}',
        None,
        [("get_weather", WEATHER_ARGS)],
    ),
    ("llama3_json", f"<|python_tag|>{WEATHER}", None, [("get_weather", WEATHER_ARGS)]),
    (
        "llama3_json",
        f'\n {WEATHER}; {{"name": "get_time", "parameters": {{"tz": "Europe/Paris"}}}}\n',
        None,
        [("get_weather", WEATHER_ARGS), ("get_time", TIME_ARGS)],
    ),
    ("llama3_json", f"I will call it: {WEATHER}", f"I will call it: {WEATHER}", []),
    ("llama3_json", f"{WEATHER} and then more", f"{WEATHER} and then more", []),
    ("llama3_json", "The weather in Paris is mild.", "The weather in Paris is mild.", []),
    ("llama3_json", '{"answer": 42}', '{"answer": 42}', []),
    ("llama3_json", '{"name": "f", "parameters": {"a": 1}', '{"name": "f", "parameters": {"a": 1}', []),
    ("llama3_json", f"{WEATHER};", f"{WEATHER};", []),
    ("llama3_json", '{"name": "add", "parameters": "{\\"a\\": 1}"}', None, [("add", '{"a":1}')]),
    (
        "llama3_json",
        '{"name": "echo", "parameters": {"text": "a } b { c ; d \\" }", "city": "Zürich 東京"}}',
        None,
        [("echo", '{"text":"a } b { c ; d \\" }","city":"Zürich 東京"}')],
    ),
    ("llama3_json", "<3 you", "<3 you", []),
    ("llama3_json", "<|python_tag|>print(1 + 1)", "<|python_tag|>print(1 + 1)", []),
    ("llama3_json", "<|python", "<|python", []),
    ("llama3_json", "   ", None, []),
    # mistral
    ("mistral", f"[TOOL_CALLS][{WEATHER}]", None, [("get_weather", WEATHER_ARGS)]),
    (
        "mistral",
        f"[TOOL_CALLS] [{WEATHER}, {TIME}]",
        None,
        [("get_weather", WEATHER_ARGS), ("get_time", TIME_ARGS)],
    ),
    (
        "mistral",
        'I\'ll look it up.[TOOL_CALLS]get_weather[ARGS]{"city": "Paris", "unit": "celsius"}',
        "I'll look it up.",
        [("get_weather", WEATHER_ARGS)],
    ),
    (
        "mistral",
        '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris", "unit": "celsius"}'
        '[TOOL_CALLS]search[ARGS]{"q": "a ] b [ c", "filters": [{"k": "}"}]}',
        None,
        [("get_weather", WEATHER_ARGS), ("search", '{"q":"a ] b [ c","filters":[{"k":"}"}]}')],
    ),
    ("mistral", f"Checking.\n[TOOL_CALLS][{WEATHER}]\nDone.", "Checking.\n\nDone.", [("get_weather", WEATHER_ARGS)]),
    ("mistral", "See [1] and [2], or the [TOOL manual.", "See [1] and [2], or the [TOOL manual.", []),
    ("mistral", "No tools needed here.", "No tools needed here.", []),
    (
        "mistral",
        f"[TOOL_CALLS][{WEATHER}, oops]",
        f"[TOOL_CALLS][{WEATHER}, oops]",
        [],
    ),
    ("mistral", "[TOOL_CALLS] I cannot do that.", "[TOOL_CALLS] I cannot do that.", []),
    ("mistral", '[TOOL_CALLS]f[ARGS]{"a": 1', '[TOOL_CALLS]f[ARGS]{"a": 1', []),
    ("mistral", "[TOOL_CALLS]f[ARGS] [1]", "[TOOL_CALLS]f[ARGS] [1]", []),
    (
        "mistral",
        '[TOOL_CALLS][{"name": "add", "arguments": "{\\"a\\": 1}"}]',
        None,
        [("add", '{"a":1}')],
    ),
    (
        "mistral",
        '[TOOL_CALLS]translate[ARGS]{"text": "Grüße 🌸", "to": "日本語"}',
        None,
        [("translate", '{"text":"Grüße 🌸","to":"日本語"}')],
    ),
]


def case_id(case: tuple[str, str, str | None, list[tuple[str, str]]]) -> str:
    return f"{case[0]}:{case[1][:40]!r}"


def stream(fmt: str, deltas: Iterator[str]) -> tuple[str, list[CallDelta]]:
    """Feed deltas; return the joined content and the call deltas, checking each delta's shape."""
    parser = ToolCallStream(fmt)
    events: list[ContentDelta | CallDelta] = []
    for delta in deltas:
        events += parser.feed(delta)
    events += parser.finish()
    calls = [e for e in events if isinstance(e, CallDelta)]
    assert [c.index for c in calls] == list(range(len(calls))) and parser.calls == len(calls)
    assert all(e.text for e in events if isinstance(e, ContentDelta))  # no empty content deltas
    return "".join(e.text for e in events if isinstance(e, ContentDelta)), calls


def pieces(text: str, size: Callable[[], int]) -> Iterator[str]:
    at = 0
    while at < len(text):
        step = size()
        yield text[at : at + step]
        at += step


def named(calls: list[ToolCall]) -> list[tuple[str, str]]:
    return [(c.name, c.arguments) for c in calls]


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_whole_answer(case: tuple[str, str, str | None, list[tuple[str, str]]]) -> None:
    fmt, text, content, calls = case
    got_content, got_calls = parse_tool_calls(fmt, text)
    assert got_content == content
    assert named(got_calls) == calls


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_stream_agrees_with_the_whole_answer_however_it_is_cut(
    case: tuple[str, str, str | None, list[tuple[str, str]]],
) -> None:
    # Content deltas join to the whole answer's content up to surrounding whitespace, which a stream
    # passes through and parse_tool_calls strips.
    fmt, text, content, calls = case
    rng = random.Random(text)
    cutters: list[Callable[[], int]] = [lambda: 1, lambda: 3] + [lambda: rng.randint(1, 12) for _ in range(5)]
    for cut in cutters:
        joined, call_deltas = stream(fmt, pieces(text, cut))
        assert joined.strip() == (content or "")
        assert named([d.call for d in call_deltas]) == calls


def test_ids_are_fresh_openai_style_ids() -> None:
    _, calls = parse_tool_calls("hermes", f"<tool_call>{WEATHER}</tool_call><tool_call>{WEATHER}</tool_call>")
    assert all(re.fullmatch(r"call_[0-9a-f]{24}", c.id) for c in calls)
    assert calls[0].id != calls[1].id


def test_content_streams_at_once_and_only_a_partial_marker_is_held() -> None:
    parser = ToolCallStream("hermes")
    assert parser.feed("Let me check <tool") == [ContentDelta("Let me check ")]
    assert parser.feed("_call>\n" + WEATHER[:20]) == []
    assert parser.feed(WEATHER[20:] + "\n</tool_call") == []  # not whole until the closing tag
    [event] = parser.feed(">")
    assert isinstance(event, CallDelta) and event.index == 0 and event.call.name == "get_weather"
    assert parser.feed("\nDone") == [ContentDelta("\nDone")]
    assert parser.finish() == [] and parser.calls == 1


def test_a_lone_angle_bracket_is_released_once_it_is_not_a_marker() -> None:
    parser = ToolCallStream("hermes")
    assert parser.feed("1 <") == [ContentDelta("1 ")]
    assert parser.feed(" 2") == [ContentDelta("< 2")]
    assert parser.feed(" <tool_c") == [ContentDelta(" ")]
    assert parser.finish() == [ContentDelta("<tool_c")]  # the end of the answer: it was text


def test_mistral_marker_split_across_deltas_and_array_emitted_when_it_closes() -> None:
    parser = ToolCallStream("mistral")
    assert parser.feed("Sure.[TOOL") == [ContentDelta("Sure.")]
    assert parser.feed("_CALLS][" + WEATHER) == []
    [event] = parser.feed("]")
    assert isinstance(event, CallDelta) and event.call.arguments == WEATHER_ARGS
    assert parser.finish() == []


def test_mistral_args_call_emitted_when_its_object_closes() -> None:
    parser = ToolCallStream("mistral")
    assert parser.feed('[TOOL_CALLS]get_weather[ARGS]{"city": {"name": "Paris"') == []
    [event] = parser.feed("}}")
    assert isinstance(event, CallDelta) and event.call.arguments == '{"city":{"name":"Paris"}}'


def test_llama_holds_a_json_answer_and_streams_text() -> None:
    held = ToolCallStream("llama3_json")
    assert held.feed("  ") == [] and held.feed(WEATHER) == []
    [event] = held.finish()
    assert isinstance(event, CallDelta) and event.call.name == "get_weather"

    text = ToolCallStream("llama3_json")
    assert text.feed("The weather") == [ContentDelta("The weather")]
    assert text.feed(" is mild.") == [ContentDelta(" is mild.")]
    assert text.finish() == []


def test_llama_releases_json_that_cannot_be_a_call_without_waiting_for_the_end() -> None:
    parser = ToolCallStream("llama3_json")
    assert parser.feed('{"answer": 4') == []
    assert parser.feed("2}") == [ContentDelta('{"answer": 42}')]
    assert parser.feed(" more") == [ContentDelta(" more")]


def test_feeding_after_finish_is_an_error() -> None:
    parser = ToolCallStream("hermes")
    parser.finish()
    with pytest.raises(RuntimeError):
        parser.feed("x")


def test_unknown_format_raises() -> None:
    with pytest.raises(ValueError, match="unknown tool call format"):
        parse_tool_calls("xml", "<tool_call>{}</tool_call>")
    with pytest.raises(ValueError, match="unknown tool call format"):
        ToolCallStream("openai")


QWEN25 = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query." }}
    {%- for tool in tools %}{{- "\\n" }}{{- tool | tojson }}{%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments
within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\":
<args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- endif %}"""

MISTRAL_V03 = """{%- for message in loop_messages %}
    {%- if message["role"] == "user" %}
        {%- if tools is not none and (message == user_messages[-1]) %}
            {{- "[AVAILABLE_TOOLS] [" }}{%- for tool in tools %}{{- tool|tojson }}{%- endfor %}
            {{- "[/AVAILABLE_TOOLS]" }}
        {%- endif %}
        {{- "[INST] " + message["content"] + "[/INST]" }}
    {%- elif message.tool_calls is defined and message.tool_calls is not none %}
        {{- "[TOOL_CALLS] [" }}
    {%- endif %}
{%- endfor %}"""

LLAMA31 = """{%- if builtin_tools is defined or tools is not none %}
    {{- "Environment: ipython\\n" }}
{%- endif %}
{%- for message in messages %}
    {%- if 'tool_calls' in message %}
        {%- if builtin_tools is defined and tool_call.name in builtin_tools %}
            {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}
            {{- "<|python_tag|>" + tool_call.name + ".call(" }}
        {%- endif %}
    {%- endif %}
{%- endfor %}"""

LLAMA_TOOLS_ONLY = """{%- if tools is not none %}
    {{- '<|start_header_id|>user<|end_header_id|>\\n\\n' -}}
    {{- "Given the following functions, respond with a JSON for a function call." }}
    {%- for t in tools %}{{- t | tojson(indent=4) }}{%- endfor %}
{%- endif %}"""

LLAMA3_NO_TOOLS = """{% for message in messages %}{{ '<|start_header_id|>' + message['role'] +
'<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"""

CHATML = """{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] +
'<|im_end|>' + '\\n'}}{% endfor %}"""


@pytest.mark.parametrize(
    ("template", "fmt"),
    [
        (QWEN25, "hermes"),
        (MISTRAL_V03, "mistral"),
        ('{{- "[TOOL_CALLS]" + tool.function.name + "[ARGS]" + arguments }}', "mistral"),
        (LLAMA31, "llama3_json"),
        (LLAMA_TOOLS_ONLY, "llama3_json"),
        (LLAMA3_NO_TOOLS, None),
        (CHATML, None),
        ("", None),
        (None, None),
    ],
)
def test_detect_format(template: str | None, fmt: str | None) -> None:
    assert detect_format(template) == fmt
    assert fmt is None or fmt in FORMATS


@pytest.mark.parametrize(
    ("fmt", "answer"),
    [
        ("llama3_json", '{"name": "Alice", "age": 30}'),  # an ordinary JSON answer: no arguments key
        ("llama3_json", '{"name": "Alice", "parameters": {"age": 30}}'),  # not one of the functions
        ("hermes", '<tool_call>{"name": "Alice", "arguments": {}}</tool_call>'),
        ("mistral", '[TOOL_CALLS][{"name": "get_weather", "arguments": {}}, {"name": "Alice", "arguments": {}}]'),
    ],
)
def test_only_the_requests_own_functions_are_calls(fmt: str, answer: str) -> None:
    names = frozenset({"get_weather", "get_time"})
    content, calls = parse_tool_calls(fmt, answer, names)
    assert calls == [] and content == answer
    stream = ToolCallStream(fmt, names)
    events = [e for piece in pieces(answer, lambda: 3) for e in stream.feed(piece)] + stream.finish()
    assert all(isinstance(e, ContentDelta) for e in events)
    assert "".join(e.text for e in events if isinstance(e, ContentDelta)) == answer
