# Two commands on a fresh machine: `make run` (the pipeline on the default preset) and `make test`.
# Each creates .venv from requirements.lock and checks the system libraries rendering needs first.
SHELL := /bin/bash
VENV := .venv
# The interpreter .venv is made from: Python 3.11 (pyproject.toml), e.g. `make test PYTHON=python3.11`.
PYTHON ?= python3
# Where torch 2.13.0 comes from: pip's own configuration by default (these machines' find-links hold the CPU wheel);
# on public PyPI a plain `torch==2.13.0` is the multi-GB CUDA build, so CPU-only machines there want
# `make test TORCH_INDEX=https://download.pytorch.org/whl/cpu`.
TORCH_INDEX ?=
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements.lock pyproject.toml | cksum | cut -d' ' -f1)
RENDER_PKGS := libegl1 libegl-mesa0 libgl1-mesa-dri

# The runtime environment (MUJOCO_GL, PREFECT_HOME, analytics off, ...) has one source: viper/runtime.env.
# `?=`: a value already in the environment wins, as runtime.env says (its values hold no spaces).
$(foreach line,$(shell sed -n 's/^\([A-Z_][A-Z0-9_]*\)=/\1?=/p' viper/runtime.env),$(eval $(line)))
export $(shell sed -n 's/^\([A-Z_][A-Z0-9_]*\)=.*/\1/p' viper/runtime.env)
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: run test learn-check lint format venv sysdeps lock clean

run: venv sysdeps
	dvc repro

test: venv sysdeps
	ruff check .
	ruff format --check .
	pytest -x -q

# Does the agent still learn? ~1.5 h on 2 cores, so a nightly job rather than CI (benchmarks/learning_check.py).
learn-check: venv sysdeps
	python benchmarks/learning_check.py data/learning_check

lint: venv
	ruff check . && ruff format --check .

format: venv
	ruff format . && ruff check --fix .

venv: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	@test -x $(PY) || $(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null || { \
	  echo "this project needs Python 3.11 (pyproject.toml); $(PYTHON) is $$($(PYTHON) -c 'import platform; \
	    print(platform.python_version())' 2>/dev/null || echo 'not found'): run make again with PYTHON=python3.11"; \
	  exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: an unpinned torch would pull a multi-GB CUDA build (see TORCH_INDEX above).
	$(PY) -m pip install -q torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps -e .
	rm -f $(VENV)/.installed-* && touch $@

# Headless MuJoCo rendering needs EGL + Mesa. Installed via apt when root, otherwise we say what to install.
sysdeps:
	@if ! ldconfig -p | grep -q 'libEGL.so.1' || ! ldconfig -p | grep -q 'libEGL_mesa.so.0' \
	    || ! ls /usr/lib/*/dri/swrast_dri.so >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing rendering libraries: $(RENDER_PKGS)"; \
	    DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(RENDER_PKGS) >/dev/null; \
	  else \
	    echo "MuJoCo rendering needs EGL and Mesa. Install them, then re-run:"; \
	    echo "    sudo apt-get install $(RENDER_PKGS)"; exit 1; \
	  fi; \
	fi

# Re-resolve the lock file from requirements.in (maintainers only).
lock:
	rm -rf .lockenv && $(PYTHON) -m venv .lockenv \
	  && .lockenv/bin/pip install -q torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) \
	  && .lockenv/bin/pip install -q -r requirements.in \
	  && .lockenv/bin/pip freeze | sed 's/^torch==.*/torch==2.13.0/' > requirements.lock && rm -rf .lockenv

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
