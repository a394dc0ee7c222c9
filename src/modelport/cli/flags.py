"""The CLI's words for the server's: API fields become the flags a user types.

The server's messages name its wire fields (``base_model``, ``model_type``), as they must for API
clients; a CLI user never typed those, so the CLI names ``--base-model`` and ``--model-type`` instead.
``cli/errors.py`` applies these tables to every message it explains.
"""

from __future__ import annotations

API_FLAGS = {
    "model_name": "--model-name",
    "model_type": "--model-type",
    "base_model": "--base-model",
    "tool_call_parser": "--tool-call-parser",
    "model_source": "--model-source",
    "lora_model": "--lora-model",
    "hf_token": "--hf-token",
}
# API calls a message may suggest, and the command that does the same.
API_COMMANDS = {"GET /v1/models": "`modelport models list`", "GET /v1/jobs": "`modelport jobs list`"}
