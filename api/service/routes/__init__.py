"""One router per resource: processes, rules, health."""
