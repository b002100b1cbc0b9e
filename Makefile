# The two commands: `make demo` and `make test`. Each bootstraps .venv on first use.
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.modelmill-installed
EXTRAS  ?= all,dev
PYTEST_ARGS ?= -m "not slow"
# The whole of 2013: train on January-February, then ten months served, monitored, retrained and rolled
# out (about 4 minutes on 2 cores). `make demo DEMO_MONTHS=6` stops after June.
DEMO_MONTHS ?= 12

.PHONY: demo test lint typecheck pytest bench mutation services clean docs docs-build

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[$(EXTRAS)]'
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/modelmill demo --months $(DEMO_MONTHS)

test: $(STAMP) lint typecheck pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

typecheck: $(STAMP)
	$(VENV)/bin/mypy

pytest: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	bash scripts/install-wrk.sh
	@for b in benchmarks/*.py; do case $$b in */_*) continue;; esac; echo "== $$b"; $(PY) $$b || exit 1; done

# Mutation testing of the safety-carrying modules (long: hours on 2 cores; not part of `make test` or .ci/run).
# `make mutation MUTATION_MODULES="serving.limits rollout.guardrails"` runs only those.
mutation: $(STAMP)
	VENV=$(VENV) bash scripts/mutation.sh $(MUTATION_MODULES)

services:
	bash scripts/services.sh

# The documentation site (mkdocs.yml): `make docs` serves it with live reload on http://$(DOCS_ADDR),
# `make docs-build` builds it into build/site and fails on any warning (.ci/run). Fully offline.
DOCS_ADDR ?= 127.0.0.1:8000
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve --dev-addr $(DOCS_ADDR)

docs-build: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

clean:
	rm -rf $(VENV) .modelmill .pytest_cache .mypy_cache .ruff_cache mutants
