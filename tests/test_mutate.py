"""EVOLVE-BLOCK enforcement and the built-in tunables operator."""

import random

import pytest

from conftest import PROGRAM
from gitevolve.mutate import MutationRejected, Program
from gitevolve.mutate import blocks, tunables
from gitevolve.mutate.tunables import TunablesOperator
from gitevolve.population import Candidate


def program(text: str, sha: str = "a" * 40, score: float = 1.0) -> Program:
    return Program(Candidate(sha, None, 0, 1, 0, "ok", score), {"prog.py": text})


def test_tunables_are_read_inside_blocks_only():
    text = "X = 1  # gitevolve: choices=[1, 2]\n" + PROGRAM
    found = tunables.parse("prog.py", text)
    assert [(t.name, t.value, t.choices) for t in found] == [
        ("A", 1, (1, 2, 3, 4, 5)), ("B", "slow", ("slow", "medium", "fast")), ("C", 0.5, (0.1, 0.5, 0.9))
    ]


def test_c_like_declarations_are_tunables_too():
    text = (
        "constexpr int BLOCK = 64;  // gitevolve: choices=[32, 64, 128]\n"
        "#define UNROLL 4  // gitevolve: choices=[1, 2, 4]\n"
        "const uint WIDTH = 8; // gitevolve: choices=[4, 8]\n"
    )
    found = tunables.parse("k.cu", text)
    assert [(t.name, t.value) for t in found] == [("BLOCK", 64), ("UNROLL", 4), ("WIDTH", 8)]
    changed = tunables.apply(text, {0: 128, 1: 2})
    assert changed.splitlines()[0] == "constexpr int BLOCK = 128;  // gitevolve: choices=[32, 64, 128]"
    assert changed.splitlines()[1] == "#define UNROLL 2  // gitevolve: choices=[1, 2, 4]"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("A = 1  # gitevolve: range=[1, 4]", "expected `gitevolve: choices"),
        ("A = 1  # gitevolve: choices=[1]", "at least two"),
        ("A = 1  # gitevolve: choices=[1, oops]", "not a literal"),
        ("A = f(1)  # gitevolve: choices=[1, 2]", "not a literal"),
    ],
)
def test_malformed_tunables_are_errors_with_the_line(line, message):
    with pytest.raises(MutationRejected, match=rf"k.py:1: .*{message}"):
        tunables.parse("k.py", line + "\n")


def test_string_values_keep_their_quotes():
    text = "MODE = 'a'  # gitevolve: choices=['a', 'b']\n"
    assert tunables.apply(text, {0: "b"}) == "MODE = 'b'  # gitevolve: choices=['a', 'b']\n"


def test_a_mutation_changes_declared_values_and_says_so():
    proposal = TunablesOperator(max_changes=2, crossover=0).propose(program(PROGRAM), [], random.Random(3))
    new = tunables.parse("prog.py", proposal.files["prog.py"])
    old = tunables.parse("prog.py", PROGRAM)
    changed = [(a.name, a.value, b.value) for a, b in zip(old, new) if a.value != b.value]
    assert 1 <= len(changed) <= 2
    assert proposal.subject == "Set " + ", ".join(f"{n} {a} -> {b}" for n, a, b in changed)
    assert proposal.operator == "tunables:mutate"
    blocks.check("prog.py", PROGRAM, proposal.files["prog.py"])


def test_crossover_takes_settings_from_the_inspiration():
    other = tunables.apply(PROGRAM, {4: 4, 6: '"fast"'.strip('"')})
    proposal = TunablesOperator(crossover=1.0).propose(program(PROGRAM), [program(other, "b" * 40, 3.0)], random.Random(0))
    assert proposal.operator == "tunables:crossover" and "from bbbbbbbbbb" in proposal.subject
    values = {t.name: t.value for t in tunables.parse("prog.py", proposal.files["prog.py"])}
    assert values["A"] in (1, 4) and values["B"] in ("slow", "fast") and (values["A"], values["B"]) != (1, "slow")


def test_the_same_seed_gives_the_same_proposals():
    op = TunablesOperator()
    runs = [[op.propose(program(PROGRAM), [], random.Random(s)).files for s in range(10)] for _ in range(2)]
    assert runs[0] == runs[1]


def test_no_tunables_is_a_clear_rejection():
    with pytest.raises(MutationRejected, match="no tunables"):
        TunablesOperator().propose(program("x = 1\n"), [], random.Random(0))


def test_edits_outside_the_block_are_refused():
    inside = PROGRAM.replace("C = 0.5", "C = 0.9")
    blocks.check("prog.py", PROGRAM, inside)
    for bad, where in [
        (PROGRAM.replace("import math", "import os"), "before the first block"),
        (PROGRAM.replace("return A", "return 2 * A"), "after the last block"),
        (PROGRAM.replace("# EVOLVE-BLOCK-END\n", ""), "markers"),
    ]:
        with pytest.raises(MutationRejected, match=where):
            blocks.check("prog.py", PROGRAM, bad)


def test_a_file_without_markers_may_change_anywhere():
    blocks.check("k.py", "a = 1\n", "b = 2\n")
    assert list(blocks.editable_lines("a\nb\n")) == [0, 1]


def test_c_style_markers_count():
    text = "int a;\n// EVOLVE-BLOCK-START\nint b;\n// EVOLVE-BLOCK-END\n"
    assert blocks.regions(text) == [(2, 2)]
    with pytest.raises(MutationRejected):
        blocks.check("k.cu", text, text.replace("int a;", "int z;"))


CONDITIONAL = '''\
# EVOLVE-BLOCK-START
PATH = "mma"  # gitevolve: choices=["mma", "vector"]
VECTOR = 4  # gitevolve: choices=[1, 2, 4, 8], when=PATH == "vector"
SPLIT = 2  # gitevolve: choices=[1, 2], when=VECTOR in [4, 8] and PATH != "scalar"
LABEL = "a]"  # gitevolve: choices=["a]", "b"]
# EVOLVE-BLOCK-END
'''


def test_a_condition_says_when_a_tunable_matters_and_dead_ones_make_no_new_program():
    found = tunables.parse("k.py", CONDITIONAL)
    assert [(t.name, t.needs) for t in found] == [("PATH", ()), ("VECTOR", ("PATH",)), ("SPLIT", ("VECTOR", "PATH")),
                                                  ("LABEL", ())]
    assert found[3].choices == ("a]", "b")  # a "]" inside the list does not end it
    assert tunables.live(found, {"PATH": "mma", "VECTOR": 4, "SPLIT": 2}) == {"PATH", "LABEL"}
    # SPLIT's condition holds, but it names VECTOR, which is dead: so is SPLIT.
    assert tunables.live(found, {"PATH": "vector", "VECTOR": 1, "SPLIT": 2}) == {"PATH", "VECTOR", "LABEL"}
    canonical = tunables.canonical("k.py", CONDITIONAL)
    assert [t.value for t in tunables.parse("k.py", canonical)] == ["mma", 1, 1, "a]"]  # dead ones at their first choice
    same = tunables.apply(CONDITIONAL, {2: 2, 3: 1})  # other values of dead tunables only
    assert tunables.canonical("k.py", same) == canonical


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('X = 1  # gitevolve: choices=[1, 2], when=Y == 1', "names Y, which is not a tunable"),
        ('X = 1  # gitevolve: choices=[1, 2], when=__import__("os")', "not Call"),
        ('X = 1  # gitevolve: choices=[1, 2], when=X ==', "not an expression"),
        ('X = 1  # gitevolve: choices=[1, 2], when=X == 1', "round in a circle: X -> X"),
    ],
)
def test_malformed_conditions_are_errors_with_the_line(line, message):
    with pytest.raises(MutationRejected, match=rf"k.py:1: .*{message}"):
        tunables.parse("k.py", line + "\n")


def test_the_tunables_operator_leaves_dead_tunables_alone():
    op = TunablesOperator(max_changes=1, crossover=0)
    for seed in range(20):
        proposal = op.propose(program(CONDITIONAL), [], random.Random(seed))
        assert {t.name for t in tunables.parse("prog.py", proposal.files["prog.py"])} and "VECTOR" not in proposal.subject
