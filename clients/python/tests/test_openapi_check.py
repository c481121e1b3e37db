"""The conformance checker the live tests use finds what it must: answers that conform pass,
each kind of departure is named, and no problem ever quotes a body."""

from __future__ import annotations

import json
from typing import Any, Dict, Optional

import pytest

from test_parity import openapi_path

pytest.importorskip("jsonschema")
pytest.importorskip("yaml")

from openapi_check import Checker  # noqa: E402

TOKEN = "hvs.CAESIwrapping-token-never-in-a-problem"
JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def checker() -> Checker:
    return Checker.load(openapi_path())


def body(value: Any) -> bytes:
    return json.dumps(value).encode()


def wrap(**over: Any) -> bytes:
    b: Dict[str, Any] = {
        "wrappingToken": TOKEN,
        "wrapAccessor": "acc",
        "binding": "b",
        "start": 0,
        "wrapTtlSeconds": 60,
    }
    b.update(over)
    return body({k: v for k, v in b.items() if v is not None})


def refusal(reason: str) -> bytes:
    return body({"reason": reason, "message": "m"})


def check(
    checker: Checker, path: str, status: int, data: bytes, headers: Optional[Dict[str, str]] = None
) -> list:
    return checker.check("POST", path, status, {**JSON, **(headers or {})}, data)


def test_conforming_answers_pass(checker: Checker) -> None:
    assert check(checker, "/v1/wrap", 200, wrap(), {"cache-control": "no-store"}) == []
    assert checker.check("POST", "/v1/receipt", 204, {}, b"") == []
    www = {"www-authenticate": 'Bearer realm="cubbyhole"'}
    assert check(checker, "/v1/wrap", 401, refusal("NotAuthenticated"), www) == []
    assert check(checker, "/v1/wrap", 403, refusal("NotSelected")) == []
    assert check(checker, "/v1/wrap", 409, refusal("AlreadyServed")) == []
    assert check(checker, "/v1/wrap", 429, refusal("RateLimited"), {"retry-after": "3"}) == []
    assert check(checker, "/v1/receipt", 400, refusal("BadReceipt")) == []


@pytest.mark.parametrize(
    "path,status,data,headers,expected",
    [
        ("/v1/wrap", 418, refusal("NotSelected"), {}, "status is not documented"),
        ("/v1/other", 200, b"{}", {}, "path is not documented"),
        ("/v1/wrap", 200, wrap(), {}, "Cache-Control"),
        ("/v1/wrap", 200, wrap(start=-1), {"cache-control": "no-store"}, "fails minimum"),
        ("/v1/wrap", 200, wrap(binding=None), {"cache-control": "no-store"}, "fails required"),
        ("/v1/wrap", 200, wrap(wrapTtlSeconds="60"), {"cache-control": "no-store"}, "fails type"),
        ("/v1/wrap", 403, refusal("AlreadyServed"), {}, "documented with status 409"),
        ("/v1/wrap", 403, refusal("Whatever"), {}, "fails enum"),
        ("/v1/wrap", 409, refusal("StaleReceipt"), {}, "not documented for route wrap"),
        ("/v1/wrap", 429, refusal("RateLimited"), {}, "required header Retry-After missing"),
        ("/v1/wrap", 403, refusal("NotSelected"), {"retry-after": "1"}, "has Retry-After"),
        ("/v1/wrap", 503, refusal("Retry"), {"retry-after": "0"}, "fails minimum"),
        ("/v1/wrap", 401, refusal("NoToken"), {}, "WWW-Authenticate missing"),
        ("/v1/receipt", 204, b'{"x":1}', {}, "a body"),
        ("/v1/wrap", 403, b"<html>", {}, "not JSON"),
    ],
)
def test_departures_are_named(checker: Checker, path, status, data, headers, expected) -> None:
    problems = check(checker, path, status, data, headers)
    assert any(expected in p for p in problems), problems
    assert not any(TOKEN in p for p in problems)
