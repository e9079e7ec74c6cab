# Every target that runs code, but `unit`, first runs scripts/setup.sh (idempotent, ~2 s; root).
PY := .venv/bin/python
ENV := set -a; . ./.deps/env; set +a

.PHONY: setup test unit serve demo bench clean

setup:
	bash scripts/setup.sh

# The whole suite, as root (CI): nothing may skip.
test: setup
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
