# psfmap: two commands for a fresh machine (`make demo`, `make test`), plus docs, bench and lint.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test docs bench lint env clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch pinned: installs from the local CPU wheel here, from the registry elsewhere
	$(PY) -m pip install --quiet "torch==2.13.0"
	# the dev extra holds the test and the docs tools (pytest, hypothesis, mkdocs, mkdocstrings);
	# the napari extra the plugin and its viewer tests (napari, PyQt5, pytest-qt, pytest-xvfb);
	# the vectorial extra psf-generator (two small wheels, < 1 s), so its tests run here too
	$(PY) -m pip install --quiet -e ".[dev,napari,vectorial]"
	touch $(STAMP)

env: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/psfmap demo -o demo-output

# the docs are part of the tests: a broken page, link or docstring fails `make test`
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet

test: docs
	$(PY) -m pytest -n 2 -q tests

bench: $(STAMP)
	for script in benchmarks/bench_*.py; do echo "== $$script"; $(PY) $$script || exit 1; done

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks examples

clean:
	rm -rf $(VENV) demo-output site build *.egg-info src/*.egg-info
