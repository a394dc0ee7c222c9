from scripts.gen_config_docs import DOC, render


def test_configuration_doc_matches_settings() -> None:
    assert DOC.read_text() == render(), "run: .venv/bin/python scripts/gen_config_docs.py"
