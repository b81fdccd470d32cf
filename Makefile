# mdship: `make demo` and `make test` are the two commands a new user needs.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
MDSHIP := $(VENV)/bin/mdship
STAMP  := $(VENV)/.installed

.PHONY: venv demo test test-slow bench clean

venv: $(STAMP)

# The venv is rebuilt only when pyproject.toml changes. torch==2.13.0 (CPU) is pinned in pyproject.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: venv
	$(MDSHIP) init-checkpoint artifacts/demo/tiny --preset tiny --seed 0
	$(MDSHIP) generate artifacts/demo/tiny --prompt "a large red circle on a blue background, top left" \
		--seed 0 --out artifacts/demo/eager.png

test: venv
	$(PY) -m pytest -q -m "not slow" --timeout 900

test-slow: venv
	$(PY) -m pytest -q -m slow --timeout 3600

bench: venv
	@echo "no benchmarks yet"

clean:
	rm -rf artifacts .pytest_cache
