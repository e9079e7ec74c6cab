# Every target that runs code first runs scripts/setup.sh (idempotent, ~2 s).
PY := .venv/bin/python
ENV := set -a; . ./.deps/env; set +a

.PHONY: setup test serve bench clean

setup:
	bash scripts/setup.sh

test: setup
	$(ENV); $(PY) -m pytest -q -p no:cacheprovider tests

# Demo for now: audit a throwaway `sleep` process, then kill it.
serve: setup
	@sleep 600 & pid=$$!; \
	$(ENV); .venv/bin/crwatch check $$pid; rc=$$?; \
	kill $$pid; exit $$rc

bench: setup
	$(ENV); $(PY) bench/run.py

clean:
	rm -rf .venv .deps build *.egg-info
