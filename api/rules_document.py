"""The rule catalogue as a JSON document (schema crwatch.rules/1)."""
from __future__ import annotations

from tracker.checks.catalogue import Catalogue
from tracker.profiles import Profile

SCHEMA = "crwatch.rules/1"


def rules_document(catalogue: Catalogue, profile: Profile) -> dict:
    return {
        "schema": SCHEMA,
        "profile": profile.name,
        "criu_version": ".".join(map(str, profile.criu_version)),
        "rules": [{
            "code": rule.code,
            "family": rule.family,
            "title": rule.title,
            "severity": profile.severity(rule),
            "severities": {"criu": rule.criu, "strict": rule.strict or rule.criu},
            "option": rule.option,
            "remedy": rule.remedy,
            "criu_message": rule.criu_message,
            "version_note": profile.version_note(rule),
        } for rule in catalogue],
    }
