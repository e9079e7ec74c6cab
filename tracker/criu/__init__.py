"""CRIU itself: finding a usable `criu` and running it, its option syntax, its log read back.

- `runner`: the CRIU to use (`find_criu`, `criu_at`, `known_criu`, `probe_criu`) and trial
  dumps with it;
- `facts_cache`: what CRIU said of itself (version, features, libraries), kept across
  runs while nothing that decides it changes;
- `options`: CRIU's option syntax (sizes, the options a caller allows, the arguments
  the reasons of a verdict ask for, the options read back from CRIU's command line);
- `log`: CRIU's dump log read back into reasons.

This package sits low: it answers "which CRIU, which options, what did it say" and
judges nothing, so what judges (tracker.environment, which asks the CRIU found for its
features; tracker.profiles, which takes its version; tracker.verdict; the gate) builds
on it, never the other way round.

May import: the standard library and tracker.rules (the Finding type, in `log`); never
tracker.environment, tracker.profiles, tracker.verdict, tracker.checks, tracker.audit,
tracker.gate or tracker.live. `options` and `facts_cache` import the standard library only.
"""
