"""The argument types and argument groups several commands share, and the profile
the judging commands' arguments choose."""
from __future__ import annotations

import argparse
import signal
from pathlib import Path

from tracker.profiles import PROFILE_NAMES, Profile, parse_version, profile


def criu_version(text: str):
    try:
        return parse_version(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"not a number of seconds (0 to 3600): {text!r}")
    return value


def signal_number(text: str) -> int:
    name = text.upper()
    try:
        return int(signal.Signals(int(name)) if name.isdigit() else
                   signal.Signals[name if name.startswith("SIG") else f"SIG{name}"])
    except (KeyError, ValueError):
        raise argparse.ArgumentTypeError(f"not a signal: {text!r}") from None


def pid(text: str) -> int:
    if not text.isdigit() or int(text) <= 0:
        raise argparse.ArgumentTypeError(f"not a pid: {text!r}")
    return int(text)


def socket_path(text: str) -> Path | None:
    """A unix socket's path, absolute; `none`: no socket."""
    if text == "none":
        return None
    if not text.startswith("/"):
        raise argparse.ArgumentTypeError(f"not an absolute path (or none): {text!r}")
    return Path(text)


def add_scope_arguments(command: argparse.ArgumentParser, only_help: str) -> None:
    """--only (the pid's own findings); --tree, the default now, kept so scripts don't break."""
    scope = command.add_mutually_exclusive_group()
    scope.add_argument("--only", action="store_true", help=only_help)
    scope.add_argument("--tree", action="store_true", help=argparse.SUPPRESS)


def add_profile_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", choices=PROFILE_NAMES, default="criu",
                        help="dumper profile to judge by (default: criu)")
    parser.add_argument("--criu-version", type=criu_version, metavar="X.Y[.Z]",
                        help="judge for this CRIU release (default: the CRIU set-up found)")


def judged_by(args: argparse.Namespace) -> Profile:
    """The profile of --profile and --criu-version (by default, the CRIU set-up found)."""
    return profile(args.profile, args.criu_version)
