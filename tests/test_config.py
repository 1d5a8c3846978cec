"""Malformed settings are one-line errors that name the key."""

import pytest

from conftest import CONFIG
from gitevolve.config import load_config
from gitevolve.errors import GitevolveError


def write(repo, text):
    (repo / ".gitevolve.yml").write_text(text)


def test_the_fixture_config_loads_with_defaults_filled_in(repo):
    config = load_config(repo)
    assert config.files == ["prog.py"] and config.islands == 3
    assert config.selection.elite == 0.2 and config.evaluator.stage_list()[0].name == "main"


def test_flags_override_the_file_and_are_checked_the_same_way(repo):
    assert load_config(repo, {"islands": 7}).islands == 7
    # A bad flag is blamed on the flag, not on the file it overrides.
    with pytest.raises(GitevolveError, match=r"^--islands: .*greater than or equal to 1 \(got 0\)$"):
        load_config(repo, {"islands": 0})
    (repo / ".gitevolve.yml").write_text((repo / ".gitevolve.yml").read_text().replace("islands: 3", "islands: 0"))
    with pytest.raises(GitevolveError, match=r"^\.gitevolve\.yml: islands: .*greater than or equal to 1 \(got 0\)$"):
        load_config(repo)
    assert load_config(repo, {"islands": 2}).islands == 2  # the flag's good value wins over the file's bad one


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (CONFIG + "iteratoins: 5\n", r"iteratoins: unknown key"),
        (CONFIG.replace("timeout: 20", "timeout: soon"), r"evaluator\.timeout: .*valid number.*'soon'"),
        (CONFIG.replace("timeout: 20", "timeout: -1"), r"evaluator\.timeout: .*greater than 0"),
        (CONFIG.replace("files: [prog.py]", "files: [missing.py]"), r"files\[0\]: 'missing.py' does not exist"),
        (CONFIG.replace("files: [prog.py]", "files: [../x.py]"), r"files\[0\]: .*inside the repository"),
        (CONFIG.replace("files: [prog.py]\n", ""), r"files: required key is missing"),
        (CONFIG + "selection: {elite: 0.5, exploitation: 0.5, exploration: 0.5}\n", r"selection: .*sum to 1"),
        (CONFIG + "migration: {topology: star}\n", r"migration\.topology: .*'ring' or 'random'"),
        (CONFIG + "features: [{name: x, bins: 3, range: [5, 1]}]\n", r"features\.0: range must be"),
        (CONFIG.replace("  command: python score.py\n", ""), r"evaluator: give either 'command'"),
        ("files: [prog.py\n", r"line \d+: not valid YAML"),
        ("- just\n- a list\n", r"a mapping of settings"),
        (CONFIG.replace("islands: 3", "islands: '3'"), r"islands: .*valid integer"),
        (CONFIG + "mutation: {weights: {search: 1, model: 1}}\n", r"mutation\.weights\.model: .*'llm', 'search' or 'tunables'"),
        (CONFIG + "mutation: {weights: {search: 1}}\n", r"mutation\.weights mixes the model .*add an llm section"),
        (CONFIG + "mutation: {weights: {search: -1, llm: 2}}\n", r"mutation\.weights: .*0 or more"),
    ],
)
def test_malformed_configs_name_the_key(repo, text, message):
    write(repo, text)
    with pytest.raises(GitevolveError, match=message) as info:
        load_config(repo)
    assert "\n" not in str(info.value)


def test_a_missing_config_says_how_to_make_one(tmp_path):
    with pytest.raises(GitevolveError, match="gitevolve init"):
        load_config(tmp_path)


def test_the_projects_own_settings_are_valid():
    from conftest import ROOT

    config = load_config(ROOT)
    assert config.files == ["examples/gqa-mlx/attention.py"]
    assert all((ROOT / f).is_file() for f in config.files)
