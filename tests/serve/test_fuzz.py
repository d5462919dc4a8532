"""Schemathesis against the live server's OpenAPI document, which is the contract:
whatever the schema admits (and much it does not), the server never answers 5xx,
refuses what the schema refuses, answers only statuses the document lists, each with
a body of the documented schema, and every 4xx says what was wrong."""

from __future__ import annotations

import itertools
from collections import Counter
from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    negative_data_rejection,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.config import SchemathesisConfig

from tests.serve.conftest import ADMIN, Server

CHECKS = [not_a_server_error, negative_data_rejection, status_code_conformance, response_schema_conformance]
CONFIG = SchemathesisConfig.from_str(
    """
[checks.negative_data_rejection]
# 413: more events in one request than the document's maxItems (a documented answer)
expected-statuses = [400, 401, 403, 404, 405, 406, 409, 413, 415, 422]
"""
)
EXAMPLES = 15
"""Per operation and mode (valid, invalid input); the suite stays fast and the examples are the same on every run."""


def test_no_server_errors_and_clear_client_errors(server: Server) -> None:
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json", config=CONFIG)
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
            case.validate_response(response, checks=CHECKS)
            if 400 <= response.status_code < 500:
                assert response.json().get("detail"), f"{where}: {response.status_code} without a message"

        try:
            check()
        except Unsatisfiable:  # nothing about this operation can be made invalid (no parameters, no body)
            assert mode is GenerationMode.NEGATIVE, operation.label
    # both kinds of input reached the server: accepted ones and refused ones
    assert sum(n for code, n in statuses.items() if code < 300) > 50, statuses
    assert sum(n for code, n in statuses.items() if code in (400, 404, 413, 422)) > 50, statuses
