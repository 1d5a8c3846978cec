"""Which file a benchmark measures: a path, or a file at any commit-ish of the repository."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path


def candidate_file(kernel: str, file: str = "attention.py") -> Path:
    """`kernel` as a path if one exists there, else `<kernel>:<file>` read from git into a temporary file.

    A commit-ish is read with `git show`, never checked out: measuring a candidate must not touch
    the user's working tree.
    """
    path = Path(kernel)
    if path.is_file():
        return path
    shown = subprocess.run(["git", "show", f"{kernel}:{file}"], capture_output=True, text=True)  # the current repository
    if shown.returncode != 0:
        raise SystemExit(f"--kernel {kernel}: neither a file nor a commit-ish with {file} ({shown.stderr.strip()})")
    handle = tempfile.NamedTemporaryFile("w", suffix=f"-{Path(file).name}", delete=False)
    with handle:
        handle.write(shown.stdout)
    return Path(handle.name)
