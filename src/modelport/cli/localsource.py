"""What a ``--model-source`` names on this machine, and whether it may be sent: every refusal happens here,
before the server is asked anything and before any byte moves.

A local source must be named on purpose: an empty value (an unset shell variable), the current folder,
the home folder or the filesystem root is refused, and so is any folder that holds a git repository, a
virtual environment or modelport's own data dir (its API key and database). Of a model folder only what
the server keeps is sent (``pack.select_files``).

Exit codes (``cli/errors.py``): 2 when the source is not a model folder or archive at all (the wrong
argument was given: a usage error); 1 when a model folder holds what the server would refuse anyway
(the server's answer, given before the upload instead of after it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from modelport.cli.errors import CliFailure
from modelport.cli.pack import Selection, select_files
from modelport.humanize import human_bytes
from modelport.ids import UPLOAD_ID
from modelport.ingest.layout import CODE_REFUSED, PICKLE_REFUSED, archive_format, detect_kind

ARCHIVE_SUFFIXES = (".tar", ".zip", ".tar.gz", ".tgz")
LARGEST_SHOWN = 3
EXAMPLE = "give the model's own folder, e.g. --model-source ./my-model"
SOURCES = "a local model folder or archive, a Hugging Face repo (org/name), an https:// URL or a file-… id"


@dataclass(frozen=True)
class LocalSource:
    path: Path
    shown: str  # as the user typed it
    selection: Selection | None  # None for an archive, sent as it is
    size: int

    def summary(self) -> list[str]:
        """What will be sent, for people: counts and sizes, the largest files, what is left behind."""
        if self.selection is None:
            return [f"sending {self.shown}: an archive of {human_bytes(self.size)}"]
        files, left = self.selection.files, self.selection.left_out
        lines = [f"sending {self.shown}: {_count(len(files), 'file')}, {human_bytes(self.size)}"]
        largest = sorted(files, key=lambda f: (-f.size, f.name))[:LARGEST_SHOWN]
        width = max(len(f.name) for f in largest)
        lines += [f"  {f.name.ljust(width)}  {human_bytes(f.size)}" for f in largest]
        if len(files) > LARGEST_SHOWN:
            lines.append(f"  … and {_count(len(files) - LARGEST_SHOWN, 'smaller file')}")
        if left:
            shown = ", ".join(left[:LARGEST_SHOWN]) + (", …" if len(left) > LARGEST_SHOWN else "")
            lines.append(f"left out {_count(len(left), 'file')} that serving does not use ({shown})")
        return lines


def local_path(source: str) -> Path | None:
    """The file or folder ``source`` names here; None when the server resolves it (a repo id, a URL, a
    ``file-…`` id). Raises when it is empty, or looks local and does not exist."""
    if not source.strip():
        raise CliFailure(
            "--model-source is empty",
            hint=f"{EXAMPLE} (a shell variable that is not set expands to nothing)",
            exit_code=2,
        )
    path = Path(source).expanduser()
    if path.exists() or path.is_symlink():
        return path
    if _is_remote(source):
        return None
    raise CliFailure(f"no such file or folder: {source}", hint=f"--model-source takes {SOURCES}", exit_code=2)


def inspect_local(path: Path, source: str, model_type: str) -> LocalSource:
    """Refuse what must not be sent; otherwise say what will be."""
    shown = "./" if source.strip() in (".", "./") else source
    _refuse_location(path, shown)
    if path.is_file():
        _refuse_non_archive(path, shown)
        return LocalSource(path, shown, None, path.stat().st_size)
    if not path.is_dir():
        raise CliFailure(f"{shown} is neither a folder nor a file", hint=EXAMPLE, exit_code=2)
    selection = select_files(path)
    _refuse_non_model(selection, shown)
    _refuse_content(selection, shown)
    _refuse_wrong_type(selection, shown, model_type)
    return LocalSource(path, shown, selection, selection.total_bytes)


def _is_remote(source: str) -> bool:
    """What only the server can resolve: URLs, upload ids and Hugging Face ids (``org/name[@revision]``)."""
    if "://" in source or UPLOAD_ID.match(source):
        return True
    if source.startswith((".", "/", "~")) or source.lower().endswith(ARCHIVE_SUFFIXES):
        return False
    repo = source.partition("@")[0]
    return repo.count("/") == 1 and all(repo.split("/"))


def _refuse_location(path: Path, shown: str) -> None:
    where = path.resolve()
    home = _home()
    places = {Path(where.anchor): "the filesystem root", Path.cwd().resolve(): "the current folder"}
    if home is not None:
        places[home] = "your home folder"
    if where in places:
        raise CliFailure(f"{shown} is {places[where]} ({where}), not a model folder", hint=EXAMPLE, exit_code=2)
    if home is not None and where in home.parents:
        raise CliFailure(f"{shown} holds your home folder ({home}), not a model folder", hint=EXAMPLE, exit_code=2)


def _home() -> Path | None:
    try:
        return Path.home().resolve()
    except RuntimeError:  # no HOME and no passwd entry
        return None


def _refuse_non_archive(path: Path, shown: str) -> None:
    # By content, as the server recognises archives: a key file or a database given by mistake is refused
    # here rather than sent.
    with open(path, "rb") as f:
        if archive_format(f.read(512)) is not None:
            return
    raise CliFailure(
        f"{shown} is not a .zip, .tar or .tar.gz archive (checked by content, not by name)",
        hint=f"{EXAMPLE}, or an archive of it",
        exit_code=2,
    )


def _refuse_non_model(found: Selection, shown: str) -> None:
    findings = list(found.git)
    for venv in found.venvs:
        findings.append(
            "pyvenv.cfg (it is a virtual environment)" if venv == "./" else f"{venv} (a virtual environment)"
        )
    if found.data_dir:
        findings.append(f"{_listed(found.data_dir[:LARGEST_SHOWN])} (modelport's data dir)")
    if findings:
        raise CliFailure(f"{shown} holds {_listed(findings)}: it is not a model folder", hint=EXAMPLE, exit_code=2)
    if detect_kind(found.names + found.links_out) is None:  # a link out is reported next, by name
        nested = [n for n in found.left_out if n.rsplit("/", 1)[-1] in ("config.json", "adapter_config.json")]
        where = f"; found {nested[0]}: give the folder that holds it" if nested else ""
        raise CliFailure(
            f"{shown} holds no config.json or adapter_config.json at its top level{where}",
            hint="a model folder holds config.json, a LoRA adapter's adapter_config.json, next to their weights",
            exit_code=2,
        )


def _refuse_content(found: Selection, shown: str) -> None:
    problems = [(CODE_REFUSED if n.endswith(".py") else PICKLE_REFUSED).format(n) for n in found.refused]
    for name in found.links_out:
        problems.append(f"{name}: a link to a file outside {shown}; links out of the folder are never followed")
    if not problems:
        return
    hints = ["remove these files from the folder (or copy the model's own files to a new one) and run again"]
    if found.links_out:
        hints = [f"copy the files in first, e.g. `cp -rL {shown} ./my-model`, then upload ./my-model"]
    raise CliFailure(
        f"{shown} holds files the server refuses; nothing was sent:\n  " + "\n  ".join(problems),
        hint=hints[0],
        exit_code=1,
    )


def _refuse_wrong_type(found: Selection, shown: str, model_type: str) -> None:
    if found.kind == model_type:
        return
    if found.kind == "adapter":
        raise CliFailure(
            f"{shown} is a LoRA adapter (it holds adapter_config.json, no config.json), but --model-type is model",
            hint="add --model-type adapter --base-model BASE, BASE being the model it was trained on "
            "(`modelport models list` shows yours)",
            exit_code=2,
        )
    raise CliFailure(
        f"{shown} is a full model (it holds config.json), but --model-type is adapter",
        hint="leave out --model-type adapter and --base-model, or give the adapter's own folder "
        "(adapter_config.json and adapter_model.safetensors)",
        exit_code=2,
    )


def _listed(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")
