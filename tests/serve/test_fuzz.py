"""Schemathesis against the live server's OpenAPI document: whatever the schema
admits (and much it does not), the server never answers 5xx, and every 4xx says
what was wrong."""

from __future__ import annotations

import itertools
from collections import Counter
from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from tests.serve.conftest import ADMIN, Server

EXAMPLES = 15
"""Per operation and mode (valid, invalid input); the suite stays fast and the examples are the same on every run."""


def test_no_server_errors_and_clear_client_errors(server: Server) -> None:
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 12  # the document was read
    statuses: Counter[int] = Counter()
    for operation, mode in itertools.product(operations, GenerationMode):

        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
        @given(case=operation.as_strategy(generation_mode=mode))
        def check(case: Any) -> None:
            response = case.call(base_url=server.url, headers={"X-API-Key": ADMIN})
            statuses[response.status_code] += 1
            where = f"{case.method} {case.formatted_path}"
            assert response.status_code < 500, f"{where}: {response.status_code} {response.text}"
            if 400 <= response.status_code < 500:
                assert response.json().get("detail"), f"{where}: {response.status_code} without a message"

        try:
            check()
        except Unsatisfiable:  # nothing about this operation can be made invalid (no parameters, no body)
            assert mode is GenerationMode.NEGATIVE, operation.label
    # both kinds of input reached the server: accepted ones and refused ones
    assert sum(n for code, n in statuses.items() if code < 300) > 50, statuses
    assert sum(n for code, n in statuses.items() if code in (400, 404, 413, 422)) > 50, statuses
