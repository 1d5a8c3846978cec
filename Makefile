# Two entry points for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-gpu clean

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

# The GPU tests alone (CUDA: an NVIDIA GPU with mlx[cuda13]; Metal: Apple Silicon); elsewhere they
# skip. test-gpu.xml becomes the run's record: python benchmarks/test_record.py test-gpu.xml ...
test-gpu: $(STAMP)
	$(BIN)/python -m pytest -m "cuda or metal" -rfE --junitxml=test-gpu.xml

clean:
	rm -rf $(VENV) demo-run
