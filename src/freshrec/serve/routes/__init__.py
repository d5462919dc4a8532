"""One router per resource of the HTTP API; :func:`freshrec.serve.api.create_app` includes them."""
# no "from __future__ import annotations" in the routes: FastAPI reads their parameters' annotations,
# which name local objects (dependencies, bounded types) that strings could not be resolved against
