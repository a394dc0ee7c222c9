"""What `models upload` sends from a local folder, and what it refuses before any byte moves."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from modelport.cli.client import ApiError
from modelport.cli.commands.models import _in_cli_terms
from modelport.cli.errors import CliFailure
from modelport.cli.localsource import inspect_local, local_path
from modelport.cli.pack import pack, pack_directory, select_files

MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


def _model(folder: Path, *extra: str) -> Path:
    for name in (*MODEL_FILES, *extra):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"{}" if name.endswith(".json") else b"x" * 100)
    return folder


def _refusal(path: Path | str, model_type: str = "model") -> CliFailure:
    source = str(path)
    with pytest.raises(CliFailure) as caught:
        found = local_path(source)
        assert found is not None
        inspect_local(found, source, model_type)
    return caught.value


def test_only_what_the_server_keeps_is_packed(tmp_path: Path) -> None:
    folder = _model(
        tmp_path / "m",
        "README.md",
        ".gitattributes",
        "images/logo.png",
        "onnx/model.onnx",
        "notes/extra.json",  # a json outside the root and the numbered module folders
        "1_Pooling/config.json",
        "a/b/c/deep.json",
    )
    found = select_files(folder)
    assert found.names == ["1_Pooling/config.json", *sorted(MODEL_FILES)]
    assert {"README.md", ".gitattributes", "images/logo.png", "notes/extra.json"} <= set(found.left_out)
    assert found.refused == [] and found.kind == "model"
    with tarfile.open(pack_directory(folder, tmp_path / "m.tar")) as tar:
        assert sorted(tar.getnames()) == found.names
    # The same folder packs to the same bytes (an interrupted upload resumes).
    assert (tmp_path / "m.tar").read_bytes() == pack(found.files, tmp_path / "again.tar").read_bytes()


def test_pickles_and_code_are_refused_with_the_servers_words(tmp_path: Path) -> None:
    folder = _model(tmp_path / "m", "pytorch_model.bin", "modeling_x.py", "README.md")
    failure = _refusal(folder)
    assert failure.exit_code == 1 and "nothing was sent" in failure.message
    assert "pytorch_model.bin: pickle weight formats (.bin/.pt/.pth/.pkl/.ckpt) can run code" in failure.message
    assert "modeling_x.py: custom Python code is refused" in failure.message
    assert "README.md" not in failure.message


def test_links_are_never_followed_out_of_the_folder(tmp_path: Path) -> None:
    outside = tmp_path / "secret.json"
    outside.write_text('{"key": "s3cr3t"}')
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "vocab.txt").write_text("a\n")
    folder = _model(tmp_path / "m")
    (folder / "tokenizer.model").symlink_to(folder / "model.safetensors")  # inside: packed
    (folder / "special_tokens_map.json").symlink_to(outside)
    (folder / "1_Pooling").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    found = select_files(folder)
    assert "tokenizer.model" in found.names and found.links_out == ["special_tokens_map.json"]
    assert not any(n.startswith("1_Pooling") for n in found.names)
    with tarfile.open(pack(found.files, tmp_path / "m.tar")) as tar:
        assert all(m.isfile() for m in tar.getmembers())
    failure = _refusal(folder)
    assert failure.exit_code == 1 and "special_tokens_map.json: a link to a file outside" in failure.message
    assert failure.hint is not None and "cp -rL" in failure.hint


@pytest.mark.parametrize("source", ["", "  "])
def test_an_empty_source_is_refused(source: str) -> None:
    with pytest.raises(CliFailure) as caught:
        local_path(source)
    assert caught.value.exit_code == 2 and "--model-source is empty" in caught.value.message
    assert caught.value.hint is not None and "not set" in caught.value.hint


def test_the_current_home_and_root_folders_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    here = _model(tmp_path / "home" / "me" / "work")  # even when they look like a model
    monkeypatch.setenv("HOME", str(here.parent))
    monkeypatch.chdir(here)
    for source in (".", "./", str(here)):
        failure = _refusal(source)
        assert failure.exit_code == 2 and "is the current folder" in failure.message
        assert failure.hint == "give the model's own folder, e.g. --model-source ./my-model"
    assert "./ is the current folder" in _refusal(".").message
    assert "your home folder" in _refusal("~").message
    assert "holds your home folder" in _refusal(tmp_path / "home").message
    assert "the filesystem root" in _refusal("/").message


def test_a_repository_with_a_venv_is_refused_naming_both(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = _model(tmp_path / "project")
    (project / ".git").mkdir()
    (project / ".git" / "config").write_text("[core]\n")
    (project / ".venv" / "bin").mkdir(parents=True)
    (project / ".venv" / "pyvenv.cfg").write_text("home = /usr/bin\n")
    monkeypatch.chdir(tmp_path)
    failure = _refusal("./project")
    assert failure.message == "./project holds .git and .venv (a virtual environment): it is not a model folder"
    assert failure.exit_code == 2 and failure.hint == "give the model's own folder, e.g. --model-source ./my-model"


def test_a_venv_is_found_as_deep_as_the_packer_walks(tmp_path: Path) -> None:
    folder = _model(tmp_path / "m")
    (folder / "env" / "bin").mkdir(parents=True)
    (folder / "env" / "bin" / "activate").write_text("")  # no pyvenv.cfg (virtualenv < 20)
    assert "env (a virtual environment)" in _refusal(folder).message
    deeper = _model(tmp_path / "d")
    (deeper / "tools" / "env").mkdir(parents=True)
    (deeper / "tools" / "env" / "pyvenv.cfg").write_text("")
    assert "tools/env (a virtual environment)" in _refusal(deeper).message
    itself = _model(tmp_path / "venv", "pyvenv.cfg")
    assert "pyvenv.cfg (it is a virtual environment)" in _refusal(itself).message


def test_modelports_data_dir_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "blobs" / "sha256" / "ab").mkdir(parents=True)
    (data / "admin-api-key").write_text("mp-secret\n")
    (data / "modelport.db").write_bytes(b"SQLite format 3\x00")
    (data / "config.json").write_text("{}")
    failure = _refusal(data)
    assert failure.exit_code == 2
    assert "admin-api-key, blobs/ and modelport.db (modelport's data dir)" in failure.message
    parent = _model(tmp_path / "outer")
    (parent / "data").mkdir()
    (parent / "data" / "admin-api-key").write_text("mp-secret\n")
    assert "data/admin-api-key (modelport's data dir)" in _refusal(parent).message
    code = _model(tmp_path / "code", "storage/blobs/local.py")  # a folder named blobs is not a blob store
    assert "data dir" not in _refusal(code).message
    # Given as a file, the key is not an archive: refused, never sent.
    key = _refusal(data / "admin-api-key")
    assert key.exit_code == 2 and "is not a .zip, .tar or .tar.gz archive" in key.message


def test_a_folder_without_a_config_is_not_a_model(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "notes.txt").write_text("hi")
    assert "holds no config.json or adapter_config.json" in _refusal(tmp_path / "docs").message
    wrapped = _model(tmp_path / "outer" / "inner")
    failure = _refusal(wrapped.parent)
    assert "found inner/config.json: give the folder that holds it" in failure.message


def test_an_adapter_needs_its_type_and_base(tmp_path: Path) -> None:
    adapter = tmp_path / "lora"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "adapter_model.safetensors").write_bytes(b"x")
    failure = _refusal(adapter)
    assert failure.exit_code == 2 and "is a LoRA adapter" in failure.message
    assert "--model-type adapter --base-model" in str(failure.hint)
    assert "is a full model" in _refusal(_model(tmp_path / "m"), "adapter").message
    found = local_path(str(adapter))
    assert found is not None and inspect_local(found, str(adapter), "adapter").selection is not None


@pytest.mark.parametrize("source", ["./nope", "/no/such/dir", "~/nope", "nope", "a/b/c", "model.tar.gz", "m.zip"])
def test_a_missing_local_path_is_named(source: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CliFailure) as caught:
        local_path(source)
    assert caught.value.message == f"no such file or folder: {source}" and caught.value.exit_code == 2


@pytest.mark.parametrize(
    "source",
    ["org/name", "org/name@refs/pr/1", "https://example.com/m.tar.gz", "file-0a1b2c3d-0000-4000-8000-0123456789ab"],
)
def test_remote_sources_go_to_the_server(source: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert local_path(source) is None


def test_the_summary_gives_sizes_for_people(tmp_path: Path) -> None:
    folder = _model(tmp_path / "m", "README.md")
    (folder / "model.safetensors").write_bytes(b"\0" * (3 * 2**20))
    lines = inspect_local(folder, "./m", "model").summary()
    assert lines[0] == "sending ./m: 4 files, 3.0 MiB"
    assert lines[1].split() == ["model.safetensors", "3.0", "MiB"]
    assert lines[-1] == "left out 1 file that serving does not use (README.md)"
    assert not any(str(3 * 2**20) in line for line in lines)


def test_server_errors_name_the_flags() -> None:
    err = ApiError(400, "base model 'tiny' is not one of your models; did you mean 'me/tiny-llama'?",
                   code="base_model_not_found", param="base_model")  # fmt: skip
    failure = _in_cli_terms(err)
    assert failure.message.startswith("--base-model: base model 'tiny'") and "did you mean" in failure.message
    assert failure.exit_code == 1 and "modelport models list" in str(failure.hint)
    mismatch = ApiError(400, "the files are a LoRA adapter but model_type is 'model'; send model_type 'adapter' "
                        "with its base_model", code="model_type_mismatch", param="model_type")  # fmt: skip
    failure = _in_cli_terms(mismatch)
    assert (
        "send --model-type 'adapter' with its --base-model" in failure.message and "model_type" not in failure.message
    )
    assert "--model-type adapter is for a LoRA adapter's folder" in str(failure.hint)
