# Every target that runs crwatch first runs scripts/setup.sh (as root; idempotent, ~2 s).
# `lint` and `unit` need only the .venv it made, and no root: they do not run it.
PY := .venv/bin/python
ENV := set -a; . ./.deps/env; set +a

.PHONY: setup lint test unit serve demo bench clean

setup:
	bash scripts/setup.sh

# ruff, configured in pyproject.toml; `make test` (and so CI) lints first.
lint:
	$(PY) -m ruff check .

# The whole suite, as root (CI): nothing may skip.
test: setup lint
	$(ENV); $(PY) -m pytest -q -p no:cacheprovider tests

# The unit tests, for anyone: no root, no setup beyond a .venv with the dev extras
# (tests marked root, bpf or criu skip without root, each with its reason).
unit:
	set -a; [ ! -f .deps/env ] || . ./.deps/env; set +a; $(PY) -m pytest -q -p no:cacheprovider tests/unit

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
