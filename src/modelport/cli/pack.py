"""Choose the files of a model folder that the server keeps, and pack them as a tar with them at its root.

The choice is the server's own (``ingest/layout.file_role``): what serving needs is packed, everything
else stays behind. The walk also notes what says the folder is not a model at all (a git repository, a
virtual environment, modelport's own data dir), so the caller can refuse it before any byte moves.

Entries are sorted and their owners and times fixed, so packing the same folder twice gives the same
bytes and the same sha256: an interrupted upload of it can resume.
"""

from __future__ import annotations

import os
import stat
import tarfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from modelport.ingest.layout import MAX_DEPTH, FileRole, detect_kind, file_role

# What modelport's data dir holds (settings.py: the API key written on first start, the SQLite
# database, the local blob store); any of them means the folder holds secrets and other users' models.
DATA_DIR_FILES = ("admin-api-key",)
DATA_DIR_FOLDERS = ("blobs",)  # the local blob store: blobs/sha256/<ab>/<digest>
SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3", ".db-wal", ".db-shm", ".db-journal")


@dataclass(frozen=True)
class PackedFile:
    name: str  # relative, with / separators: the name in the archive
    path: Path  # where the bytes are read from (a link's target, always inside the folder)
    size: int


@dataclass
class Selection:
    """What walking a folder found: the files to send, and everything that bears on whether to send them."""

    folder: Path
    files: list[PackedFile] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)  # not needed for serving (README, images, …)
    refused: list[str] = field(default_factory=list)  # pickles and code: the server refuses them by name
    links_out: list[str] = field(default_factory=list)  # wanted files that are links leading out of the folder
    git: list[str] = field(default_factory=list)
    venvs: list[str] = field(default_factory=list)
    data_dir: list[str] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.files]

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def kind(self) -> str | None:
        """``model`` or ``adapter`` as the server will read it from the names; None for neither."""
        return detect_kind(self.names)


def select_files(folder: Path) -> Selection:
    """Walk ``folder`` as deep as the server's rules look (``MAX_DEPTH``), never through a link to a folder."""
    root = folder.resolve()
    found = Selection(root)
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        depth = len(here.relative_to(root).parts)
        _note_markers(found, root, here, dirnames, filenames)
        # Files at depth MAX_DEPTH are the deepest the rules look at: no need to go further down.
        dirnames[:] = sorted(d for d in dirnames if d != ".git") if depth + 1 < MAX_DEPTH else []
        for name in sorted(filenames):
            _consider(found, root, here / name)
    found.files.sort(key=lambda f: f.name)
    return found


def _note_markers(found: Selection, root: Path, here: Path, dirnames: list[str], filenames: list[str]) -> None:
    rel = here.relative_to(root).as_posix()
    prefix = "" if rel == "." else rel + "/"
    if ".git" in dirnames or ".git" in filenames:  # a file in worktrees and submodules
        found.git.append(prefix + ".git")
    venv = here if "pyvenv.cfg" in filenames else here.parent if _is_activate(here, filenames, root) else None
    if venv is not None:
        name = venv.relative_to(root).as_posix()
        shown = "./" if name == "." else name
        if shown not in found.venvs:
            found.venvs.append(shown)
    data = [n for n in filenames if n in DATA_DIR_FILES or n.endswith(SQLITE_SUFFIXES)]
    data += [d + "/" for d in dirnames if d in DATA_DIR_FOLDERS and (here / d / "sha256").is_dir()]
    found.data_dir.extend(prefix + n for n in sorted(data))


def _is_activate(here: Path, filenames: list[str], root: Path) -> bool:
    return here != root and here.name in ("bin", "Scripts") and "activate" in filenames


def _consider(found: Selection, root: Path, path: Path) -> None:
    name = path.relative_to(root).as_posix()
    role = file_role(name)
    if role == FileRole.SKIP:
        found.left_out.append(name)
        return
    if role == FileRole.REPORT:
        found.refused.append(name)
        return
    target = path.resolve() if path.is_symlink() else path
    if not target.is_relative_to(root):  # security: never read outside the folder the user named
        found.links_out.append(name)
        return
    try:
        info = target.stat()
    except OSError:  # a broken link
        found.left_out.append(name)
        return
    if not stat.S_ISREG(info.st_mode):  # a fifo or device would block or never end
        found.left_out.append(name)
        return
    found.files.append(PackedFile(name, target, info.st_size))


def pack(files: list[PackedFile], dest: Path) -> Path:
    with tarfile.open(dest, "w") as tar:
        for f in files:
            info = tar.gettarinfo(str(f.path), arcname=str(PurePosixPath(f.name)))
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = 0
            info.mode = 0o644
            with open(f.path, "rb") as data:
                tar.addfile(info, data)
    return dest


def pack_directory(folder: Path, dest: Path) -> Path:
    """Pack what the server keeps of ``folder`` (no checks: the CLI refuses unsafe folders first)."""
    return pack(select_files(folder).files, dest)
