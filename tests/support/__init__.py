"""What the tests share, and no test: subjects (real processes set up in a state) and
their code, a real service, tracker and gate to drive, the CRIU agreement harness, the
import graph, and the plugin that skips a test whose marked need is unmet here.

Test modules import helpers from here only, never from one another (tests/unit/
test_layout.py holds that); nothing here imports a test module."""
