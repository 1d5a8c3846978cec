"""gitevolve.hookkit is the one part of gitevolve that hooks may import (docs/hooks.md)."""

from __future__ import annotations

import ast
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from gitevolve import hookkit

ROOT = Path(__file__).resolve().parent.parent
BLOCKED = "x = 1\n# EVOLVE-BLOCK-START\ny = 2\n# EVOLVE-BLOCK-END\nz = 3\n"


def _gitevolve_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "gitevolve":
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names if a.name.split(".")[0] == "gitevolve")
    return names


@pytest.mark.parametrize("path", sorted([*ROOT.glob("evaluators/**/*.py"), *ROOT.glob("hooks/*.py")]),
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_evaluators_import_nothing_of_gitevolve_but_hookkit(path):
    assert _gitevolve_imports(path) <= {"gitevolve.hookkit"}


def test_hookkit_needs_only_the_standard_library():
    code = "import sys; import gitevolve.hookkit; print(sorted(m for m in sys.modules if m.startswith('gitevolve')))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['gitevolve', 'gitevolve.hookkit']"


def test_an_edit_inside_the_block_passes_and_outside_raises():
    hookkit.check_frame("f.py", BLOCKED, BLOCKED.replace("y = 2", "y = 4"))
    with pytest.raises(hookkit.FrameChanged, match="after the last block: 'z = 3'"):
        hookkit.check_frame("f.py", BLOCKED, BLOCKED.replace("z = 3", "z = 4"))
    with pytest.raises(hookkit.FrameChanged, match="broke the EVOLVE-BLOCK markers"):
        hookkit.check_frame("f.py", BLOCKED, BLOCKED.replace("# EVOLVE-BLOCK-END\n", ""))


def test_exit_words_name_the_signal():
    assert hookkit.exit_words(-signal.SIGSEGV) == "was killed by SIGSEGV"
    assert hookkit.exit_words(3) == "exited with status 3"
