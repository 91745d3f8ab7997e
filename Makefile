# resonate-patterns developer entry points.
#
#   make demo   set everything up, then run the local stack demo (no cluster needed)
#   make test   set everything up (venv, packages, helm, prometheus, and a Kubernetes control
#               plane built with Go: several minutes the first time), then run all tests
#               (SOAK=0 leaves out the 6-minute soak tests that run beside the others)
#   make bench  the benchmark suite (about 3 minutes on 2 cores): a table, plots in bench/results/
#   make bench-quick  the same suite reduced (about a minute; .ci/run runs it so it cannot rot)
#   make chaos  delete random worker pods of an installed release under load, then check
#               that nothing was lost, wrong or run twice (CHAOS_ARGS: scripts/chaos_cluster.py flags)
#
# These targets are idempotent: a second run reuses .venv and the tool cache.

SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TOOLS_DIR ?= .tools
# 1: `make test` also runs the minutes-long soak tests, beside the rest of the suite.
SOAK ?= 1

.PHONY: demo test setup tools lint typecheck bench bench-quick profile clean manifests chaos

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
	@$(PY) scripts/install_control_plane.py --dir $(TOOLS_DIR)

demo: setup
	@$(VENV)/bin/resonate-patterns demo

test: tools
	@$(PY) -m ruff check service tests bench scripts
	@$(PY) -m ruff format --check service tests bench scripts
	@$(PY) -m mypy
	@set -uo pipefail; export PATH="$(CURDIR)/$(TOOLS_DIR)/bin:$$PATH"; \
	if [[ "$(SOAK)" == 1 ]]; then \
	  echo "==> soak tests (about 6 minutes) run in the background; log: $(VENV)/soak.log"; \
	  $(PY) -m pytest -m soak -p no:cacheprovider -q > "$(VENV)/soak.log" 2>&1 & soak=$$!; \
	fi; \
	$(PY) -m pytest -m "not soak" $(PYTEST_ARGS); main=$$?; soakrc=0; \
	if [[ "$(SOAK)" == 1 ]]; then \
	  echo "==> waiting for the soak tests"; wait $$soak; soakrc=$$?; \
	  echo "==> soak tests:"; cat "$(VENV)/soak.log"; \
	fi; \
	exit $$(( main != 0 ? main : soakrc ))

lint: setup
	@$(PY) -m ruff check service tests bench scripts
	@$(PY) -m ruff format --check service tests bench scripts
	@$(PY) -m mypy

chaos: setup
	@$(PY) scripts/chaos_cluster.py $(CHAOS_ARGS)

# The suite's table, results.json and plots are committed in bench/results/ (docs/performance.md).
bench: setup
	@$(PY) bench/suite.py --out bench/results

# Fails if a benchmark crashes or yields no numbers; asserts no speed (CI hosts differ).
# Writes to the ignored bench/out/quick, never over the committed results.
bench-quick: setup
	@$(PY) bench/suite.py --quick --out bench/out/quick

# On-CPU profile of one cached factorial level (worker and server shares by category):
# perf plus a Python 3.13 venv made here on first use (3.13's perf trampolines carry
# unwind tables, so perf sees whole Python stacks). Not run by CI.
PROFILE_VENV ?= $(TOOLS_DIR)/profile-py313
PROFILE_ARGS ?=

profile: setup
	@set -euo pipefail; \
	if [[ ! -x "$(PROFILE_VENV)/bin/python" ]]; then \
	  interp=""; \
	  for c in python3.13 "$$HOME"/.pyenv/versions/3.13*/bin/python3.13; do \
	    if "$$c" -c 'import sys; assert sys.version_info >= (3, 13)' 2>/dev/null; then interp=$$c; break; fi; \
	  done; \
	  if [[ -z "$$interp" ]]; then echo "error: make profile needs python3.13 (its perf trampolines carry unwind tables)" >&2; exit 2; fi; \
	  echo "==> creating $(PROFILE_VENV) with $$interp (the project's runtime dependencies)"; \
	  "$$interp" -m venv "$(PROFILE_VENV)"; \
	  $(PY) -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > "$(PROFILE_VENV)/requirements.txt"; \
	  "$(PROFILE_VENV)/bin/pip" install -q --disable-pip-version-check -r "$(PROFILE_VENV)/requirements.txt"; \
	fi; \
	$(PY) bench/profile_level.py --python "$(PROFILE_VENV)/bin/python" $(PROFILE_ARGS)

manifests: tools
	@PATH="$(CURDIR)/$(TOOLS_DIR)/bin:$$PATH" $(PY) scripts/render_manifests.py

clean:
	rm -rf $(VENV) $(TOOLS_DIR) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
