# Two entry points for a fresh machine (Debian/Ubuntu, Python 3.11):
#   make demo   set up .venv and run the main job: a local sweep, original vs SNP-pruned DeiT-T
#   make test   set up .venv and run the test suite
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python

.PHONY: setup demo test clean distclean

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

# everything the tool and pip made, except the results store (runs/bench.sqlite*: every measured run and the
# nightly's baseline); `make distclean` removes that too
clean:
	rm -rf $(VENV) build *.egg-info
	if [ -d runs ]; then find runs -mindepth 1 -maxdepth 1 ! -name 'bench.sqlite*' -exec rm -rf {} +; fi

distclean: clean
	rm -rf runs
