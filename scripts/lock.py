"""Lock files of exact versions, and what moved between two of them.

    python scripts/lock.py freeze VENV > requirements/lock.txt   exact pins of what VENV has installed
    python scripts/lock.py diff OLD NEW                            what moved, was added or was dropped

`make` and CI install from the lock (``pip install -c``), so a release that moves under us cannot turn
main red; ``make lock-refresh`` builds a venv from the newest releases that pyproject.toml allows,
runs the suite on it and only then writes these files (see the Makefile).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HEADER = "# Exact versions `make` and CI install (pip -c). Written by `make lock-refresh`; do not edit by hand.\n"


def freeze(venv: Path) -> str:
    """``pip freeze --all`` of ``venv`` without the project itself (it is installed from the tree)."""
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "freeze", "--all", "--exclude-editable"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    pins = sorted((line for line in out.splitlines() if "==" in line), key=str.lower)
    return HEADER + "".join(f"{pin}\n" for pin in pins)


def read(path: Path) -> dict[str, str]:
    """name (normalised) -> version of a lock file; an absent file is an empty lock."""
    if not path.exists():
        return {}
    pins = {}
    for line in path.read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==", 1)
            pins[name.strip().lower().replace("_", "-")] = version.strip()
    return pins


def diff(old: dict[str, str], new: dict[str, str]) -> list[str]:
    lines = []
    for name in sorted(old.keys() | new.keys()):
        before, after = old.get(name), new.get(name)
        if before == after:
            continue
        if before is None:
            lines.append(f"  + {name} {after}")
        elif after is None:
            lines.append(f"  - {name} {before}")
        else:
            lines.append(f"  ~ {name} {before} -> {after}")
    return lines


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "freeze":
        sys.stdout.write(freeze(Path(argv[1])))
        return 0
    if len(argv) == 3 and argv[0] == "diff":
        moved = diff(read(Path(argv[1])), read(Path(argv[2])))
        print(f"{argv[1]}: {len(moved)} package(s) moved" + (":" if moved else ""))
        for line in moved:
            print(line)
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
