"""CRIU itself: finding a usable `criu`, running it, and reading its log back into reasons.

May import: tracker.rules, tracker.verdict-free helpers of tracker (never tracker.verdict,
tracker.gate or tracker.live, which build on this package)."""
