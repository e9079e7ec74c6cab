# Every target that runs code first runs scripts/setup.sh (idempotent, ~2 s).
PY := .venv/bin/python
ENV := set -a; . ./.deps/env; set +a

.PHONY: setup lint test serve demo bench clean

setup:
	bash scripts/setup.sh

# ruff, configured in pyproject.toml; `make test` (and so CI) lints first.
lint: setup
	$(PY) -m ruff check .

test: setup lint
	$(ENV); $(PY) -m pytest -q -p no:cacheprovider tests

# The service on 127.0.0.1:8642, probes attached (Ctrl-C stops it).
serve: setup
	$(ENV); .venv/bin/crwatch serve

# `crwatch check` of a demo process tree (examples/demo_subject.py).
demo: setup
	$(ENV); $(PY) examples/demo.py

bench: setup
	$(ENV); $(PY) bench/run.py

clean:
	rm -rf .venv .deps build *.egg-info
