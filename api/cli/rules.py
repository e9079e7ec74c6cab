"""`crwatch rules [--json]`: the rule catalogue, as the chosen profile judges each rule."""
from __future__ import annotations

import argparse

from api import exit_codes
from api.cli import arguments
from api.render import rules_text
from api.rules_document import rules_document
from tracker.checks.catalogue import catalogue
from tracker.safe_text import json_text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true")
    arguments.add_profile_arguments(parser)


def run(args) -> int:
    chosen = arguments.judged_by(args)
    if args.json:
        print(json_text(rules_document(catalogue(), chosen), indent=2))
    else:
        print(rules_text(catalogue(), chosen))
    return exit_codes.OK
