"""Property-based fuzzing of every endpoint from the OpenAPI schema (schemathesis): no 5xx, ever."""

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from mmsocial.serve import create_app
from serve_helpers import tiny_runs


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    """Tiny runs of all five systems, so that users, match and popularity are fuzzed too, not only 404s."""
    return create_app(list(tiny_runs(tmp_path_factory).values()), max_upload_bytes=100_000)


def test_no_server_error_on_any_generated_request(api):
    """Every operation of the OpenAPI schema, a bounded number of generated requests each."""
    from hypothesis import given

    schema = schemathesis.openapi.from_asgi("/openapi.json", api)
    operations = [r.ok() for r in schema.get_all_operations()]
    assert len(operations) >= 16
    seen: dict[int, int] = {}
    for op in operations:
        @settings(max_examples=10, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=op.as_strategy())
        def fuzz(case):
            response = case.call()
            seen[response.status_code] = seen.get(response.status_code, 0) + 1
            assert response.status_code < 500, (f"{case.method} {case.formatted_path} {case.query} -> "
                                                f"{response.status_code}: {response.text[:300]}")
            if response.status_code >= 400:
                assert "detail" in response.json()  # every refusal says why

        fuzz()
    assert sum(seen.values()) >= 50 and any(s < 300 for s in seen) and any(400 <= s < 500 for s in seen)


def test_server_still_serves_after_the_fuzzing(api):
    from fastapi.testclient import TestClient

    client = TestClient(api)
    assert client.get("/health").json()["status"] == "ok"
    word = client.get("/api/vocabulary").json()["words"][0]
    assert client.get("/api/search/images", params={"q": word}).status_code == 200
