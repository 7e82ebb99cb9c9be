"""add_problem_openapi: FastAPI's OpenAPI document describes problem responses as they are sent."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import FastAPI, HTTPException
from fastapi.testclient import TestClient
from pydantic import BaseModel

from asgi_resilience import ConfigurationError, ProblemDetailsMiddleware, add_problem_openapi
from asgi_resilience.problems import PROBLEM_SCHEMA


class Item(BaseModel):
    name: str


def make_app() -> FastAPI:
    api = FastAPI()

    @api.post("/items", responses={404: {"description": "No such item"}})
    async def create(item: Item) -> Item:
        raise HTTPException(404)

    @api.get("/health")
    async def health() -> dict[str, str]:
        return {"ok": "yes"}

    return api


def test_error_responses_are_documented_as_problem_json() -> None:
    api = make_app()
    before = api.openapi()["paths"]["/items"]["post"]["responses"]
    assert "application/json" in before["422"]["content"]  # FastAPI's default: does not match the wire
    api.openapi_schema = None
    add_problem_openapi(api)
    doc = api.openapi()
    assert doc["components"]["schemas"]["Problem"] == PROBLEM_SCHEMA
    ref = {"schema": {"$ref": "#/components/schemas/Problem"}}
    post = doc["paths"]["/items"]["post"]["responses"]
    for code in ("404", "422", "429", "500", "503", "504"):
        assert post[code]["content"] == {"application/problem+json": ref}, code
    assert post["404"]["description"] == "No such item"
    assert post["429"]["description"] == "Too Many Requests"
    assert post["200"]["content"]["application/json"]  # success responses are untouched
    assert set(doc["paths"]["/health"]["get"]["responses"]) == {"200", "429", "500", "503", "504"}
    assert api.openapi() is doc and doc["paths"]["/items"]["post"]["responses"] is post  # built once


def test_the_documented_media_type_is_what_the_middleware_sends() -> None:
    api = make_app()
    add_problem_openapi(api)
    client = TestClient(ProblemDetailsMiddleware(api))
    documented = api.openapi()["paths"]["/items"]["post"]["responses"]
    for body, status in (({"name": "x"}, 404), ({"nope": 1}, 422)):
        response = client.post("/items", json=body)
        assert response.status_code == status
        assert response.headers["content-type"] in documented[str(status)]["content"]
        assert set(response.json()) >= {"type", "title", "status"}


@pytest.mark.parametrize("statuses", [[200], [True], ["429"], [600]])
def test_statuses_must_be_error_codes(statuses: Any) -> None:
    with pytest.raises(ConfigurationError):
        add_problem_openapi(make_app(), statuses=statuses)
