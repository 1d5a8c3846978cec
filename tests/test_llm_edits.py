"""Replies turned into edits: what applies, and every way a reply is refused with its reason."""

import pytest

from conftest import PROGRAM
from gitevolve.llm.edits import apply
from gitevolve.mutate import MutationRejected

FILES = {"prog.py": PROGRAM}


def diff(search: str, replace: str, head: str = "SUMMARY: Raise A\nRATIONALE: A adds to the score.\n") -> str:
    return f"{head}\n<<<<<<< SEARCH\n{search}=======\n{replace}>>>>>>> REPLACE\n"


def refused(reply: str, kind: str, files=FILES, edit_format="diff") -> str:
    with pytest.raises(MutationRejected) as info:
        apply(reply, files, edit_format)
    message = str(info.value)
    assert message.split(":")[0] == kind, message
    return message


def test_a_search_replace_block_applies_and_brings_its_summary_and_rationale():
    edit = apply(diff("A = 1  # gitevolve: choices=[1, 2, 3, 4, 5]\n", "A = 4  # gitevolve: choices=[1, 2, 3, 4, 5]\n"), FILES, "diff")
    assert edit.files["prog.py"] == PROGRAM.replace("A = 1 ", "A = 4 ")
    assert (edit.summary, edit.rationale, edit.edits, edit.fuzzy) == ("Raise A", "A adds to the score.", 1, 0)


def test_blocks_apply_in_order_and_markdown_labels_are_read():
    reply = (
        "<think>first A, then B</think>\n**Summary:** `Raise A and B`\n\n**Rationale:** both add.\nMore words.\n\n```python\n"
        "<<<<<<< SEARCH\nA = 1  # gitevolve: choices=[1, 2, 3, 4, 5]\n=======\nA = 2  # gitevolve: choices=[1, 2, 3, 4, 5]\n>>>>>>> REPLACE\n"
        "<<<<<<< SEARCH\nA = 2  # gitevolve: choices=[1, 2, 3, 4, 5]\n\nB = \"slow\"\n=======\nA = 3\n\nB = \"fast\"\n>>>>>>> REPLACE\n```\n"
    )
    refused(reply, "SEARCH not found")  # B's line has a trailing comment the SEARCH text lacks
    edit = apply(reply.replace('B = \"slow\"\n=', 'B = "slow"  # gitevolve: choices=["slow", "medium", "fast"]\n='), FILES, "diff")
    assert "A = 3\n\nB = \"fast\"\n" in edit.files["prog.py"]
    assert edit.summary == "Raise A and B" and edit.rationale == "both add.\nMore words." and edit.edits == 2


def test_whitespace_is_tolerated_where_the_match_is_unambiguous():
    program = "def f(x):\n    if x:\n        return 1   \n    return 0\n"
    files = {"f.py": program}
    # Trailing spaces differ, then indentation differs: REPLACE is shifted like SEARCH was.
    edit = apply(diff("        return 1\n", "        return 2\n"), files, "diff")
    assert edit.files["f.py"] == program.replace("return 1   ", "return 2") and edit.fuzzy == 1
    edit = apply(diff("if x:\n    return 1\n", "if x > 0:\n    return 2\n"), files, "diff")
    assert edit.files["f.py"] == "def f(x):\n    if x > 0:\n        return 2\n    return 0\n"
    ambiguous = {"f.py": "def f():\n    x = 1\n    y = 2\n\ndef g():\n  x = 1\n"}
    assert "occurs 2 times (ignoring whitespace)" in refused(diff("x = 1\n", "x = 3\n"), "SEARCH ambiguous", ambiguous)


def test_a_search_text_found_twice_is_refused():
    files = {"k.py": "# EVOLVE-BLOCK-START\nx = 0\nx = 0\n# EVOLVE-BLOCK-END\n"}
    message = refused(diff("x = 0\n", "x = 1\n"), "SEARCH ambiguous", files)
    assert "occurs 2 times in k.py" in message and "more surrounding lines" in message


def test_a_search_text_not_found_says_which_line_differs():
    message = refused(diff("A = 1  # gitevolve: choices=[1, 2, 3, 4, 5]\nB = 'slow'\n", "A = 2\n"), "SEARCH not found")
    assert "first line matches prog.py:5" in message and "SEARCH line 2" in message
    assert "`nothing like this` does not occur" in refused(diff("nothing like this\n", "x\n"), "SEARCH not found")


def test_an_edit_outside_the_evolve_block_is_refused():
    message = refused(diff("import math\n", "import math, os\n"), "edit outside EVOLVE-BLOCK")
    assert "before the first block" in message and "only the lines between the markers may change" in message
    refused(diff("# EVOLVE-BLOCK-END\n", ""), "edit outside EVOLVE-BLOCK")


@pytest.mark.parametrize(
    ("reply", "kind"),
    [
        ("", "empty reply"),
        (None, "empty reply"),
        ("<think>hmm</think>   ", "empty reply"),
        ("SUMMARY: nothing\nI would make it faster.", "no edit in the reply"),
        ("<<<<<<< SEARCH\nA = 1\n=======\nA = 2\n", "unparsable reply"),
        (diff("A = 1  # gitevolve: choices=[1, 2, 3, 4, 5]\n", "A = 2\n") + "<<<<<<< SEARCH\nC = 0.5\n", "unparsable reply"),
        (diff("\n", "x = 1\n"), "empty SEARCH"),
        (diff("A = 1  # gitevolve: choices=[1, 2, 3, 4, 5]\n", "A = 1  # gitevolve: choices=[1, 2, 3, 4, 5]\n"), "edit changes nothing"),
    ],
)
def test_replies_that_are_not_edits_are_refused(reply, kind):
    refused(reply, kind)


def test_no_summary_is_not_a_refusal():
    line = "C = 0.5  # gitevolve: choices=[0.1, 0.5, 0.9]\n"
    edit = apply(diff(line, line.replace("C = 0.5", "C = 0.9"), head=""), FILES, "diff")
    assert edit.summary is None and edit.rationale == ""


REWRITE = "SUMMARY: Use the fastest settings\nRATIONALE: measured best.\n\n```python\n{code}```\n"


def test_a_rewrite_replaces_the_block_and_keeps_the_frame():
    edit = apply(REWRITE.format(code='A = 4\nB = "fast"\nC = 0.9\n'), FILES, "rewrite")
    text = edit.files["prog.py"]
    assert text.startswith(PROGRAM.split("# EVOLVE-BLOCK-START")[0]) and text.endswith(PROGRAM.split("# EVOLVE-BLOCK-END")[1])
    assert '# EVOLVE-BLOCK-START\nA = 4\nB = "fast"\nC = 0.9\n# EVOLVE-BLOCK-END\n' in text
    assert edit.summary == "Use the fastest settings" and edit.edits == 1


def test_a_rewrite_may_repeat_the_markers_or_the_whole_file():
    with_markers = apply(REWRITE.format(code="# EVOLVE-BLOCK-START\nA = 4\n# EVOLVE-BLOCK-END\n"), FILES, "rewrite")
    assert "# EVOLVE-BLOCK-START\nA = 4\n# EVOLVE-BLOCK-END\n" in with_markers.files["prog.py"]
    whole = PROGRAM.replace("A = 1 ", "A = 3 ")
    assert apply(REWRITE.format(code=whole), FILES, "rewrite").files["prog.py"] == whole
    refused(REWRITE.format(code=whole.replace("import math", "import os")), "edit outside EVOLVE-BLOCK", edit_format="rewrite")


def test_a_rewrite_takes_one_code_block_per_evolve_block():
    files = {"k.py": "x = 0\n# EVOLVE-BLOCK-START\na = 1\n# EVOLVE-BLOCK-END\ny = 0\n# EVOLVE-BLOCK-START\nb = 1\n# EVOLVE-BLOCK-END\n"}
    edit = apply("SUMMARY: both\n```python\na = 2\n```\n```python\nb = 3\n```\n", files, "rewrite")
    assert edit.files["k.py"] == "x = 0\n# EVOLVE-BLOCK-START\na = 2\n# EVOLVE-BLOCK-END\ny = 0\n# EVOLVE-BLOCK-START\nb = 3\n# EVOLVE-BLOCK-END\n"
    assert "expected 2 fenced code blocks" in refused("```python\na = 2\n```\n", "wrong number of code blocks", files, "rewrite")
    refused("I would rewrite it.", "no code in the reply", files, "rewrite")
    refused(REWRITE.format(code="\n"), "empty rewrite", edit_format="rewrite")


def test_the_summary_is_read_from_the_prose_not_from_the_code():
    reply = diff('B = "slow"  # gitevolve: choices=["slow", "medium", "fast"]\n',
                 'summary: str = "fast"\nB = "fast"  # gitevolve: choices=["slow", "medium", "fast"]\n', head="Making B fast.\n")
    edit = apply(reply, FILES, "diff")
    assert edit.summary is None and 'summary: str = "fast"\n' in edit.files["prog.py"]
