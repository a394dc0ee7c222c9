from scripts.gen_config_docs import DOC, render


def test_configuration_doc_matches_settings() -> None:
    assert DOC.read_text() == render(), "run: .venv/bin/python scripts/gen_config_docs.py"


def test_cli_doc_matches_help() -> None:
    from scripts.gen_cli_docs import DOC as CLI_DOC
    from scripts.gen_cli_docs import render as render_cli

    assert CLI_DOC.read_text() == render_cli(), "run: .venv/bin/python scripts/gen_cli_docs.py"
