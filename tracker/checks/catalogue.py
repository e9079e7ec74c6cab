"""The rule catalogue: every check module's rules, looked up by code, each with its family.

Each check module declares its own RULES (it owns their text); tracker.checks gathers
them here once, as it imports the modules (`gather`), and each rule in the catalogue
carries its family, the module that declares it. `crwatch rules`, `GET /rules`, the
reasons of a verdict and the checks that judge findings of other families (a file in
flight, the connections a network lock covers) all read `catalogue()`, so a code means
the same thing everywhere. The catalogue imports no check module: that is what lets the
check modules read it.

May import: tracker.rules only.
"""
from __future__ import annotations

from types import ModuleType
from typing import Iterable

from tracker.rules import Rule


class Catalogue:
    def __init__(self, rules: Iterable[Rule] = ()):
        self._rules: dict[str, Rule] = {}
        for rule in rules:
            self.add(rule)

    def add(self, rule: Rule) -> None:
        if rule.code in self._rules:
            raise ValueError(f"rule {rule.code} is declared twice")
        if problems := rule.problems():
            raise ValueError(f"rule {rule.code}: {'; '.join(problems)}")
        self._rules[rule.code] = rule

    def __getitem__(self, code: str) -> Rule:
        return self._rules[code]

    def __contains__(self, code: str) -> bool:
        return code in self._rules

    def __iter__(self):
        return iter(sorted(self._rules.values(), key=lambda rule: rule.code))

    def __len__(self) -> int:
        return len(self._rules)


_catalogue = Catalogue()


def gather(modules: Iterable[ModuleType]) -> None:
    """Add the RULES of each check module, each rule with its family (the module's name)."""
    for module in modules:
        family = module.__name__.rsplit(".", 1)[-1]
        for rule in module.RULES:
            _catalogue.add(rule._replace(family=family))


def catalogue() -> Catalogue:
    """Every rule of every check module (tracker.checks gathers them as it is imported)."""
    return _catalogue
