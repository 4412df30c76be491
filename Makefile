# Two commands: `make demo` and `make test`. Each creates .venv if missing and installs what it needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# the suite in this many processes (pytest-xdist, each file's tests in one; tests/conftest.py gives
# each its share of the cores); `make test PYTEST_WORKERS=0` runs it in this one
PYTEST_WORKERS ?= 2

.PHONY: demo test install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# `$(PIP_INSTALL) ARGS` is `pip install -q ARGS`, tried up to three times, 30 s apart: a download the network
# breaks off (an 80 MB wheel cut short at the same byte six times in one pip run) then gets a new
# connection; an error that is not the network's fails all three tries, and make stops; a pip stopped by
# a signal (killed, or Ctrl-C) is not tried again
PIP_INSTALL = sh -c 'for try in 1 2 3; do "$$0" -m pip install -q "$$@"; rc=$$?; [ $$rc = 0 ] && exit 0; \
	[ $$rc -gt 128 ] && exit $$rc; echo "make: pip install $$* failed (try $$try of 3)" >&2; \
	[ $$try = 3 ] || sleep 30; done; exit 1' $(BIN)/python

# torch==2.13.0 first: on this machine it is a CPU build on local disk; pyproject declares torch>=2.7
# so the package install afterwards adds nothing torch-related.
$(STAMP): $(BIN)/python pyproject.toml
	$(PIP_INSTALL) --upgrade pip
	$(PIP_INSTALL) torch==2.13.0
	$(PIP_INSTALL) -e '.[test,onnx,import,face,tune,tensorboard]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/ramer demo

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadfile tests

clean:
	rm -rf $(VENV) runs .pytest_cache
