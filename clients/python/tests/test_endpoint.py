"""Asking the endpoint: https only, its CA only, retries of exactly the transient answers with
Retry-After honoured, the other refusals raised with their reason, no token in any error."""

from __future__ import annotations

import time
from pathlib import Path
from typing import List

import pytest

from cubbyhole_agent import Endpoint, Failed, Receipt, Refusal, Wrap
from cubbyhole_agent.errors import OperatorUnreachable, Refused, TokenFileUnreadable, UsageError
from cubbyhole_agent.protocol import Answer

from fakes import CA_FILE, FakeServer, Script, refusal, reply, wrap_body

CA_PEM = Path(CA_FILE).read_text()
WRAPPING = "hvs.wrapping-token-from-the-fake"


def endpoint(server: FakeServer, identity: Path, **kw) -> Endpoint:
    return Endpoint(server.url, ca_pem=CA_PEM, identity_token_path=str(identity), **kw)


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:1", "ftp://x", "127.0.0.1:1", "https://", "https://h:99999", " "]
)
def test_only_https_urls_are_accepted(url: str) -> None:
    with pytest.raises(UsageError) as e:
        Endpoint(url)
    assert e.value.exit_code == 2 and e.value.receipt is None


@pytest.mark.parametrize(
    "pem", ["", " \n", "not pem", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"]
)
def test_an_empty_or_bad_ca_is_a_usage_error_not_the_public_roots(pem: str) -> None:
    with pytest.raises(UsageError):
        Endpoint("https://op", ca_pem=pem)


def test_ca_as_text_or_file_not_both(tmp_path: Path) -> None:
    Endpoint("https://op/", ca_file=CA_FILE)
    with pytest.raises(UsageError):
        Endpoint("https://op", ca_pem=CA_PEM, ca_file=CA_FILE)
    with pytest.raises(UsageError):
        Endpoint("https://op", ca_file=str(tmp_path / "missing.pem"))


def test_from_env_reads_what_the_webhook_injects(identity: Path) -> None:
    e = Endpoint.from_env(
        {
            "CUBBYHOLE_REQUEST": "https://op.example/",
            "CUBBYHOLE_REQUEST_CA": CA_PEM,
            "CUBBYHOLE_IDENTITY_TOKEN": str(identity),
        }
    )
    assert e.url == "https://op.example:443" and e.identity_token_path == str(identity)
    with pytest.raises(UsageError):
        Endpoint.from_env({})


def test_a_wrap_is_served_with_the_bearer_token(endpoint_server: FakeServer, identity: Path) -> None:
    endpoint_server.respond = Script(
        wrap=[reply(200, wrap_body(WRAPPING, start=3), {"Cache-Control": "no-store"})]
    )
    answers: List[Answer] = []
    wrap = endpoint(endpoint_server, identity, on_answer=answers.append).ask()
    assert isinstance(wrap, Wrap)
    assert wrap.token.reveal() == WRAPPING and wrap.start == 3 and wrap.binding == "agents"
    assert wrap.token.accessor == wrap.wrap_accessor == "wrap-accessor"
    req = endpoint_server.requests[0]
    assert req.path == "/v1/wrap" and req.body == b""
    assert req.headers["authorization"] == "Bearer " + identity.read_text().strip()
    assert [(a.path, a.status, a.headers["cache-control"]) for a in answers] == [
        ("/v1/wrap", 200, "no-store")
    ]


def test_an_untrusted_certificate_is_a_network_failure(
    endpoint_server: FakeServer, identity: Path, waits: List[float]
) -> None:
    e = Endpoint(endpoint_server.url, identity_token_path=str(identity))  # the system roots only
    outcome = e.ask_once()
    assert isinstance(outcome, Failed) and outcome.retry and "certificate" in outcome.what
    assert endpoint_server.requests == []


def test_429_with_retry_after_then_served(endpoint_server: FakeServer, identity: Path) -> None:
    endpoint_server.respond = Script(
        wrap=[
            reply(429, refusal("RateLimited", "slow down"), {"Retry-After": "1"}),
            reply(200, wrap_body(WRAPPING)),
        ]
    )
    began = time.monotonic()
    wrap = endpoint(endpoint_server, identity).ask(retries=1)
    assert time.monotonic() - began >= 1.0, "Retry-After: 1 was honoured"
    assert wrap.token.reveal() == WRAPPING
    assert len(endpoint_server.requests) == 2


@pytest.mark.parametrize(
    "reason,status", [("RateLimited", 429), ("Retry", 503), ("VaultUnavailable", 503), ("Internal", 500)]
)
def test_transient_refusals_are_retried_then_unreachable(
    endpoint_server: FakeServer, identity: Path, waits: List[float], reason: str, status: int
) -> None:
    endpoint_server.respond = Script(wrap=[reply(status, refusal(reason, "busy"), {"Retry-After": "2"})])
    with pytest.raises(OperatorUnreachable) as e:
        endpoint(endpoint_server, identity).ask(retries=3)
    assert len(endpoint_server.requests) == 4
    assert e.value.exit_code == 10 and reason in str(e.value)
    assert len(waits) == 3 and all(2.0 <= w <= 30.0 for w in waits)


@pytest.mark.parametrize(
    "reason,status",
    [
        ("NotAuthenticated", 401),
        ("NoToken", 401),
        ("NotSelected", 403),
        ("NotOnRequest", 403),
        ("AlreadyServed", 409),
        ("VaultRefused", 502),
    ],
)
def test_other_refusals_end_the_ask_with_their_reason(
    endpoint_server: FakeServer, identity: Path, waits: List[float], reason: str, status: int
) -> None:
    endpoint_server.respond = Script(wrap=[reply(status, refusal(reason, "you may not"))])
    with pytest.raises(Refused) as e:
        endpoint(endpoint_server, identity).ask(retries=5)
    assert (e.value.reason, e.value.status, e.value.message) == (reason, status, "you may not")
    assert e.value.exit_code == 9 and e.value.receipt == "request-refused"
    assert reason in str(e.value)
    assert len(endpoint_server.requests) == 1 and waits == []


def test_a_refusal_quoting_the_identity_token_is_blanked(endpoint_server: FakeServer, identity: Path) -> None:
    secret = identity.read_text().strip()
    endpoint_server.respond = Script(wrap=[reply(401, refusal("NotAuthenticated", f"bad token {secret}"))])
    with pytest.raises(Refused) as e:
        endpoint(endpoint_server, identity).ask()
    assert secret not in str(e.value) and secret not in e.value.message and "***" in e.value.message


def test_answers_without_a_refusal(endpoint_server: FakeServer, identity: Path, waits: List[float]) -> None:
    e = endpoint(endpoint_server, identity)
    endpoint_server.respond = Script(
        wrap=[reply(502, b"<html>bad gateway</html>"), reply(200, wrap_body(WRAPPING))]
    )
    assert e.ask(retries=1).token.reveal() == WRAPPING
    endpoint_server.respond = Script(wrap=[reply(404, b"not here")])
    with pytest.raises(OperatorUnreachable) as err:
        e.ask(retries=5)
    assert "HTTP 404" in str(err.value)
    # A 200 without a complete wrap is not retried.
    for body in [
        {"wrapAccessor": "a", "binding": "b", "start": 0, "wrapTtlSeconds": 60},
        wrap_body(WRAPPING, start=-1),
        b"{}",
        b"nonsense",
    ]:
        endpoint_server.respond = Script(wrap=[reply(200, body)])
        outcome = e.ask_once()
        assert isinstance(outcome, Failed) and not outcome.retry
    assert len(waits) == 1


def test_retry_after_is_honoured_up_to_30_seconds(
    endpoint_server: FakeServer, identity: Path, waits: List[float]
) -> None:
    endpoint_server.respond = Script(
        wrap=[reply(503, refusal("Retry", "busy"), {"Retry-After": "100"}), reply(200, wrap_body(WRAPPING))]
    )
    endpoint(endpoint_server, identity).ask()
    assert waits == [30.0]


def test_network_errors_are_retried(closed_url: str, identity: Path, waits: List[float]) -> None:
    e = Endpoint(f"https://{closed_url}", ca_file=CA_FILE, identity_token_path=str(identity))
    with pytest.raises(OperatorUnreachable) as err:
        e.ask(retries=2)
    assert "connection" in str(err.value) and len(waits) == 2
    assert waits[0] <= 0.5 and 0.5 <= waits[1] <= 1.0


def test_the_identity_token_is_read_at_every_ask(
    endpoint_server: FakeServer, identity: Path, tmp_path: Path
) -> None:
    endpoint_server.respond = Script(wrap=[reply(200, wrap_body(WRAPPING))])
    e = endpoint(endpoint_server, identity)
    e.ask_once()
    identity.write_text("rotated-token")
    e.ask_once()
    assert [r.headers["authorization"] for r in endpoint_server.requests][1] == "Bearer rotated-token"
    for content, word in [("", "empty"), ("  \n", "empty")]:
        identity.write_text(content)
        with pytest.raises(TokenFileUnreadable) as err:
            e.ask_once()
        assert err.value.exit_code == 7 and word in str(err.value)
    identity.write_text("two\nlines")
    with pytest.raises(TokenFileUnreadable) as err:
        e.ask_once()
    assert "two" not in str(err.value) and "lines" not in str(err.value)
    with pytest.raises(TokenFileUnreadable):
        Endpoint(endpoint_server.url, ca_pem=CA_PEM, identity_token_path=str(tmp_path / "none")).ask_once()


def test_report_sends_the_receipt_line(
    endpoint_server: FakeServer, identity: Path, waits: List[float]
) -> None:
    endpoint_server.respond = Script(
        receipt=[reply(503, refusal("Retry", "again"), {"Retry-After": "1"}), reply(204)]
    )
    answers: List[Answer] = []
    endpoint(endpoint_server, identity, on_answer=answers.append).report(Receipt.unwrapped("acc-1"))
    assert [r.body for r in endpoint_server.requests] == [b'{"result":"unwrapped","accessor":"acc-1"}'] * 2
    assert endpoint_server.requests[0].headers["content-type"] == "application/json"
    assert [a.status for a in answers] == [503, 204] and waits == [1.0]
    endpoint_server.respond = Script(receipt=[reply(409, refusal("StaleReceipt", "old"))])
    with pytest.raises(Refused) as e:
        endpoint(endpoint_server, identity).report(Receipt.failed("invalid-wrapping-token"))
    assert e.value.reason == "StaleReceipt"


def test_outcomes_print_no_token(endpoint_server: FakeServer, identity: Path) -> None:
    endpoint_server.respond = Script(wrap=[reply(200, wrap_body(WRAPPING))])
    e = endpoint(endpoint_server, identity)
    outcome = e.ask_once()
    assert WRAPPING not in repr(outcome) and identity.read_text().strip() not in repr(e)
    assert isinstance(Refusal("Retry", "m", 503).retriable, bool)
