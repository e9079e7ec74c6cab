"""The rule catalogue (tracker/checks/catalogue.py): every check module's rules, each
with the family of the module that declares it, the declared rules left as they are."""
from __future__ import annotations

from tracker.checks import MODULES
from tracker.checks.catalogue import catalogue


def test_every_declared_rule_is_in_the_catalogue_with_its_module_as_family():
    declared = {rule.code: (module.__name__.rsplit(".", 1)[-1], rule)
                for module in MODULES for rule in module.RULES}
    assert len(declared) == len(catalogue())
    for code, (family, rule) in declared.items():
        assert catalogue()[code] == rule
        assert catalogue()[code].family == family, code


def test_the_rules_a_module_declares_are_not_changed_by_the_catalogue():
    assert all(rule.family == "" for module in MODULES for rule in module.RULES)
