"""The HTTP service (`crwatch serve`): FastAPI application, its state, routes and the
stores and streams behind them.

May import: tracker, probes, api.render, api.rules_document. Never api.cli or api.ci."""
