# Every target that runs code first runs scripts/setup.sh (idempotent, ~2 s).
PY := .venv/bin/python
ENV := set -a; . ./.deps/env; set +a

.PHONY: setup test serve bench clean

setup:
	bash scripts/setup.sh

test: setup
	$(ENV); $(PY) -m pytest -q -p no:cacheprovider tests

# Until the service exists: audit a demo process tree (examples/demo_subject.py).
serve: setup
	$(ENV); $(PY) examples/demo.py

bench: setup
	$(ENV); $(PY) bench/run.py

clean:
	rm -rf .venv .deps build *.egg-info
