from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from interfaces.graphql.limits import MAX_QUERY_COMPLEXITY, MAX_QUERY_DEPTH
from interfaces.http.app import build_http_app
from interfaces.runtime import Runtime
from tests.unit.test_graphql_limits import GRAPHIQL_SCHEMA_QUERY

GOOD_TOKEN = {"Authorization": "Bearer good"}


@asynccontextmanager
async def no_lifespan(_: Starlette) -> AsyncIterator[None]:
    yield


def client_for(is_development: bool) -> Iterator[TestClient]:
    runtime = Runtime(role="api", is_development=is_development, cors_origin=None)
    runtime.authenticate = lambda token: "alice" if token == "good" else None
    with TestClient(build_http_app(runtime, no_lifespan)) as client:
        yield client


@pytest.fixture
def production() -> Iterator[TestClient]:
    yield from client_for(is_development=False)


@pytest.fixture
def development() -> Iterator[TestClient]:
    yield from client_for(is_development=True)


def post(client: TestClient, query: str, headers: dict[str, str] | None = None, **extra: Any) -> dict[str, Any]:
    response = client.post("/graphql", json={"query": query, **extra}, headers=headers or {})
    assert response.status_code == 200
    return response.json()


def only_error(result: dict[str, Any]) -> dict[str, Any]:
    assert result["data"] is None
    [error] = result["errors"]
    return error


class TestIntrospection:
    def test_production_refuses_introspection_as_forbidden(self, production: TestClient) -> None:
        error = only_error(post(production, "{ __schema { queryType { name } } }"))
        assert error["message"] == "introspection is disabled"
        assert error["extensions"]["code"] == "FORBIDDEN"

    def test_production_refuses_a_type_lookup_too(self, production: TestClient) -> None:
        error = only_error(post(production, '{ __type(name: "Viewer") { name } }'))
        assert error["extensions"]["code"] == "FORBIDDEN"

    def test_production_still_answers_typename(self, production: TestClient) -> None:
        assert post(production, "{ __typename }") == {"data": {"__typename": "Query"}}

    def test_development_answers_introspection(self, development: TestClient) -> None:
        result = post(development, "{ __schema { queryType { name } } }")
        assert result == {"data": {"__schema": {"queryType": {"name": "Query"}}}}

    def test_development_answers_graphiqls_schema_query(self, development: TestClient) -> None:
        result = post(development, GRAPHIQL_SCHEMA_QUERY, operationName="IntrospectionQuery")
        assert "errors" not in result
        type_names = {entry["name"] for entry in result["data"]["__schema"]["types"]}
        assert {"Query", "Mutation", "Viewer", "Message"} <= type_names


class TestGraphiQLPage:
    def test_production_has_no_page(self, production: TestClient) -> None:
        assert production.get("/graphql").status_code == 404

    def test_development_serves_graphiql_posting_to_graphql_with_an_authorization_header(
        self, development: TestClient
    ) -> None:
        response = development.get("/graphql")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/html")
        page = response.text
        assert "graphiql.min.js" in page
        assert 'url: window.location.origin + "/graphql"' in page
        assert "Authorization" in page

    def test_the_page_does_not_replace_the_post_endpoint(self, development: TestClient) -> None:
        assert post(development, "{ viewer { id } }", GOOD_TOKEN) == {"data": {"viewer": {"id": "alice"}}}


class TestQueryLimits:
    def test_a_too_deep_query_is_refused_with_its_depth(self, production: TestClient) -> None:
        levels = MAX_QUERY_DEPTH + 2
        query = "{ viewer { " + "id { " * (levels - 2) + "id" + " }" * (levels - 1) + " }"
        error = only_error(post(production, query, GOOD_TOKEN))
        assert error["extensions"]["code"] == "BAD_USER_INPUT"
        assert error["message"] == f"query depth {levels} exceeds the limit of {MAX_QUERY_DEPTH}"

    def test_a_too_complex_query_is_refused_with_its_score(self, production: TestClient) -> None:
        # Short but costly: each alias pages 100 conversations with their participants.
        page = "conversations(first: 100) { edges { node { participants { userId } lastMessage { id content } } } }"
        query = "{ " + " ".join(f"c{i}: {page}" for i in range(8)) + " }"
        error = only_error(post(production, query, GOOD_TOKEN))
        assert error["extensions"]["code"] == "BAD_USER_INPUT"
        assert error["message"].startswith(f"query complexity {8 * 701} exceeds the limit of {MAX_QUERY_COMPLEXITY}")

    def test_a_query_within_the_limits_runs(self, production: TestClient) -> None:
        query = "{ " + " ".join(f"v{i}: viewer {{ id }}" for i in range(3)) + " }"
        result = post(production, query, GOOD_TOKEN)
        assert result == {"data": {f"v{i}": {"id": "alice"} for i in range(3)}}

    def test_bracket_nesting_that_would_crash_the_parser_is_refused(self, production: TestClient) -> None:
        # libgraphqlparser segfaults near 20,000 levels; refuse deep nesting long before.
        query = "{" + "a{" * 100 + "b" + "}" * 101
        error = only_error(post(production, query))
        assert error["extensions"]["code"] == "BAD_USER_INPUT"
        assert "nests brackets" in error["message"]

    def test_a_crash_sized_document_is_refused_by_its_length(self, production: TestClient) -> None:
        query = "{" + "a{" * 30_000 + "b" + "}" * 30_001  # 90 KB, inside the body limit
        error = only_error(post(production, query))
        assert error["extensions"]["code"] == "BAD_USER_INPUT"


class TestErrorsCarryACode:
    def test_a_syntax_error_is_bad_user_input(self, production: TestClient) -> None:
        error = only_error(post(production, "{ viewer { id }"))
        assert error["extensions"]["code"] == "BAD_USER_INPUT"
        assert error["message"].startswith("syntax error: ")

    def test_an_unknown_field_is_bad_user_input(self, production: TestClient) -> None:
        result = post(production, "{ viewer { nope } }", GOOD_TOKEN)
        assert [error["extensions"]["code"] for error in result["errors"]] == ["BAD_USER_INPUT"]

    def test_a_non_ascii_unicode_escape_is_bad_user_input_not_internal(self, production: TestClient) -> None:
        # libgraphqlparser turns `\u00e9` into a byte tartiflette cannot decode (was INTERNAL).
        error = only_error(post(production, 'query Q($x: String = "caf\\u00e9") { __typename }'))
        assert error["extensions"]["code"] == "BAD_USER_INPUT"

    def test_an_unauthenticated_viewer_is_unauthenticated(self, production: TestClient) -> None:
        result = post(production, "{ viewer { id } }")
        assert [error["extensions"]["code"] for error in result["errors"]] == ["UNAUTHENTICATED"]

    def test_a_wrong_token_is_unauthenticated(self, production: TestClient) -> None:
        result = post(production, "{ viewer { id } }", {"Authorization": "Bearer bad"})
        assert [error["extensions"]["code"] for error in result["errors"]] == ["UNAUTHENTICATED"]

    def test_a_body_nested_too_deep_to_decode_is_bad_user_input(self, production: TestClient) -> None:
        body = '{"query": "{ __typename }", "variables": {"x": ' + "[" * 100_000 + "]" * 100_000 + "}}"
        response = production.post("/graphql", content=body, headers={"content-type": "application/json"})
        assert response.status_code == 400
        assert response.json()["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
