# resonate-patterns developer entry points.
#
#   make demo   set everything up, then run the local stack demo (no cluster needed)
#   make test   set everything up (venv, packages, helm, prometheus), then run all tests
#
# Both targets are idempotent: a second run reuses .venv and the tool cache.

SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TOOLS_DIR ?= .tools

.PHONY: demo test setup tools lint typecheck bench clean manifests

$(STAMP): pyproject.toml scripts/find-python.sh
	@set -euo pipefail; \
	if [[ ! -x "$(PY)" ]]; then \
	  interp=$$(scripts/find-python.sh); \
	  echo "==> creating $(VENV) with $$interp"; \
	  "$$interp" -m venv "$(VENV)"; \
	fi; \
	echo "==> installing resonate-patterns and its dev dependencies"; \
	if ! "$(PY)" -m pip install --disable-pip-version-check -e '.[dev]' > "$(VENV)/pip.log" 2>&1; then \
	  cat "$(VENV)/pip.log"; echo "error: installing Python packages failed (log above)" >&2; exit 1; \
	fi; \
	touch "$(STAMP)"

setup: $(STAMP)

tools: setup
	@$(PY) scripts/install_tools.py --dir $(TOOLS_DIR)

demo: setup
	@$(VENV)/bin/resonate-patterns demo

test: tools
	@$(PY) -m ruff check service tests bench scripts
	@$(PY) -m ruff format --check service tests bench scripts
	@$(PY) -m mypy
	@PATH="$(CURDIR)/$(TOOLS_DIR)/bin:$$PATH" $(PY) -m pytest $(PYTEST_ARGS)

lint: setup
	@$(PY) -m ruff check service tests bench scripts
	@$(PY) -m ruff format --check service tests bench scripts
	@$(PY) -m mypy

bench: setup
	@$(PY) bench/throughput.py

manifests: tools
	@PATH="$(CURDIR)/$(TOOLS_DIR)/bin:$$PATH" $(PY) scripts/render_manifests.py

clean:
	rm -rf $(VENV) $(TOOLS_DIR) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
