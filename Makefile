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

# torch==2.13.0 first: on this machine it is a CPU build on local disk; pyproject declares torch>=2.7
# so the package install afterwards adds nothing torch-related.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[test,onnx,import,face,tune,tensorboard]'
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
