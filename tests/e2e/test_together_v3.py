"""Together's 3.x client (SDK and ``tg``), as far as modelport speaks its wire today: identity, projects
and inference, with either base URL (``shared/WIRE-v2.md`` §1). Its project-scoped model routes are
issue 19's next steps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.conftest import Live
from tests.e2e.test_inference_clients import upload
from tests.support.fakehub import FakeHub

pytestmark = [pytest.mark.e2e, pytest.mark.db_agnostic]

V3 = "3.1.1"

SDK = """
import json
from together import Together
client = Together(max_retries=0)
me = client.whoami()
projects = client.projects.list()
chat = client.chat.completions.create(
    model="devuser/tiny", messages=[{"role": "user", "content": "the capital of france is"}], max_tokens=4,
    temperature=0,
)
print(json.dumps({
    "type": me.type,
    "project": me.project.slug,
    "projects": [[p.id, p.slug, p.organization_name] for p in projects.data],
    "text": chat.choices[0].message.content,
    "tokens": chat.usage.completion_tokens,
}))
"""


def test_the_3x_sdk_and_cli_identify_list_projects_and_chat_with_either_base_url(
    live: Live, hub: FakeHub, tiny_llama: Path
) -> None:
    upload(live, hub, "tiny", tiny_llama)
    me = live.get("/v3/whoami")
    answers = []
    for base in (live.url, f"{live.url}/v1"):  # 3.x's own base, and the one 2.x users already set
        got = live.sdk(V3, SDK, base_url=base)
        assert got["type"] == "project_api_key" and got["project"] == "devuser"
        assert got["projects"] == [[me["project"]["id"], "devuser", "devuser"]]
        assert got["tokens"] == 4
        answers.append(got["text"])
        cli = json.loads(live.together(V3, "whoami", "--json", base_url=base, program="tg").stdout)
        assert cli["project"]["slug"] == "devuser" and cli["api_key"]["id"] == me["api_key"]["id"]
        listed = live.together(V3, "projects", "list", base_url=base, program="tg").stdout
        assert "devuser" in listed
    assert answers[0] == answers[1]
