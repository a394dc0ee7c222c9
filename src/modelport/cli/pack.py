"""Pack a model directory as a tar archive with its files at the root, as the seeds require.

Entries are sorted and their owners and times fixed, so packing the same directory twice gives the
same bytes and the same sha256: an interrupted upload of it can resume.
"""

from __future__ import annotations

import tarfile
from pathlib import Path


def pack_directory(folder: Path, dest: Path) -> Path:
    with tarfile.open(dest, "w") as tar:
        for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.is_symlink()):
            info = tar.gettarinfo(str(path), arcname=path.relative_to(folder).as_posix())
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = 0
            info.mode = 0o644
            with open(path, "rb") as f:
                tar.addfile(info, f)
    return dest
