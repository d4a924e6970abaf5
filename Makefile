# Two entry points for a fresh machine: `make demo` and `make test`.
# Set-up installs torch explicitly first: on a machine that keeps a CPU wheel of
# torch 2.13.0 on disk this takes it from there; elsewhere set TORCH_SPEC (see README).
VENV ?= .venv
PYTHON ?= python3
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
DEMO_DIR ?= demo_output

.PHONY: setup demo test container-check clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

demo: setup
	$(VENV)/bin/medmamba demo $(DEMO_DIR)

test: setup
	$(PY) -m pytest -n 2 --durations=15

# A real image build and run with rootful podman (docker/README.md, "CI check").
container-check:
	bash docker/ci-check.sh

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache
