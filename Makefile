# Developer shortcuts; CI runs .ci/run. Python and pip are whatever `python` is on PATH.
PYTHON ?= python
IMAGE ?= pageferry

.PHONY: install install-bench run test test-fast lint format typecheck bench image

install:        ## Chromium (apt) + runtime, test, lint and type-check packages
	.ci/install

install-bench:  ## + matplotlib and xlsxwriter for the benchmarks
	$(PYTHON) -m pip install -q -r requirements-bench.txt

run:            ## the service on :8000 (PORT / BIND override), data under ./data (DATA_DIR)
	$(PYTHON) -m gunicorn -c gunicorn.conf.py

test:           ## every test, as CI runs them
	$(PYTHON) -m pytest -q

test-fast:      ## unit + integration, without the slow ones (markers: pyproject.toml, tests/conftest.py)
	$(PYTHON) -m pytest -q -m "(unit or integration) and not slow"

lint:
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

format:         ## rewrites files: sorts imports (ruff's I rules), then the formatter
	$(PYTHON) -m ruff check --select I --fix .
	$(PYTHON) -m ruff format .

typecheck:
	$(PYTHON) -m mypy

bench:          ## needs `make install-bench`
	$(PYTHON) tests/benchmarks/bench_engine.py

image:
	docker build -t $(IMAGE) .
