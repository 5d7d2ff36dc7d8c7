# Two entry points for a fresh machine (Debian/Ubuntu, Python 3.11):
#   make demo   set up .venv and run the main job: a local sweep, original vs SNP-pruned DeiT-T
#   make test   set up .venv and run the test suite
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python

.PHONY: setup demo test clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[dev]'
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(PY) -m bench sweep

# one worker per core (2 on CI), a test file per worker: module fixtures (a sweep, an sshd) are built once
test: setup
	$(PY) -m pytest -q -n auto --dist loadfile

clean:
	rm -rf $(VENV) runs build *.egg-info
