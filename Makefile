# One entry point for people and CI. Every target sets up the virtual environment first,
# so `make run` and `make test` work on a fresh clone with nothing installed but Python.

VENV        := .venv
VENV_PY     := $(VENV)/bin/python
STAMP       := $(VENV)/.installed
REQUIREMENTS := requirements-dev.txt layers/em/requirements.txt functions/poller/requirements.txt

# The best Python on this machine: the Lambda runtime's 3.13 first (on PATH or under pyenv),
# then the newest 3.x that the code supports (3.11 and later).
find_python = for candidate in python3.13 \
	    "$$(PYENV_VERSION=3.13.0 pyenv which python3.13 2>/dev/null)" \
	    "$$(ls -d "$${PYENV_ROOT:-$$HOME/.pyenv}"/versions/3.13*/bin/python3.13 2>/dev/null | tail -n 1)" \
	    python3.12 python3.11 python3; do \
	  [ -n "$$candidate" ] || continue; \
	  path=$$(command -v "$$candidate" 2>/dev/null) || continue; \
	  "$$path" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || continue; \
	  echo "$$path"; exit 0; \
	done; exit 1

.PHONY: venv run check test lint typecheck cfn-lint unit bench clean

venv: $(STAMP)

$(STAMP): $(REQUIREMENTS) pyproject.toml
	@python=$$($(find_python)) || { echo "make: no Python 3.11 or later found; install Python 3.13" >&2; exit 1; }; \
	  echo "make: using $$python ($$("$$python" --version 2>&1))" >&2; \
	  [ -x $(VENV_PY) ] || "$$python" -m venv $(VENV)
	@$(VENV_PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	@# The project's own packages, importable by the venv's Python wherever it is started.
	@$(VENV_PY) -c 'import os, site; open(os.path.join(site.getsitepackages()[0], "cloud-failover-notifier.pth"), "w").write("".join(os.path.abspath(p) + "\n" for p in ("layers/em", "functions/poller", "local")))'
	@touch $@

run: $(STAMP)
	@$(VENV_PY) -m failover_local.run $(ARGS)

check: $(STAMP)
	@$(VENV_PY) -m failover_local.check $(ARGS)

test: lint typecheck cfn-lint
	@$(VENV_PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	@$(VENV)/bin/ruff check .
	@$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	@$(VENV)/bin/mypy

cfn-lint: $(STAMP)
	@$(VENV)/bin/cfn-lint template.yaml

bench: $(STAMP)
	@$(VENV_PY) -m failover_local.bench $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .aws-sam
