"""Live: the client against the real request endpoint, API server and OpenBao that
``tests/e2e_python.rs`` sets up (skipped when ``CUBBYHOLE_ENDPOINT`` is unset; that harness
fails if any test was skipped).

Each test uses its own pod (a pod's run is served once). Every secret value a test handles
(wrapping tokens, unwrapped tokens) is appended to ``CUBBYHOLE_TEST_SECRETS_OUT`` for the
harness to scan all output for. Every endpoint answer is checked against the API document.

Never ``assert`` on an expression that holds a secret or passes one to a call: pytest prints
the operands and call arguments of a failed assert."""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Set, Tuple, TypeVar

import pytest

from cubbyhole_agent import (
    Endpoint,
    InvalidWrap,
    Receipt,
    Refused,
    Token,
    UnexpectedCreationPath,
    Vault,
    WrappingToken,
    bootstrap,
    redeem,
)
from cubbyhole_agent.protocol import Answer

from conftest import SRC

ENDPOINT = os.environ.get("CUBBYHOLE_ENDPOINT", "")

pytestmark = [
    pytest.mark.live,
    pytest.mark.skipif(
        not ENDPOINT, reason="CUBBYHOLE_ENDPOINT is not set (tests/e2e_python.rs sets the stage)"
    ),
]

NEEDED = [
    "CUBBYHOLE_ENDPOINT_CA_FILE",
    "CUBBYHOLE_IDENTITIES",
    "VAULT_ADDR",
    "CUBBYHOLE_EXPECT_PATH",
    "CUBBYHOLE_TEST_VAULT_TOKEN",
    "CUBBYHOLE_TEST_SECRETS_OUT",
    "CUBBYHOLE_OPENAPI",
    "KUBECONFIG",
    "CUBBYHOLE_TEST_NAMESPACE",
    "CUBBYHOLE_TEST_BINDING",
]
#: Deadline of everything the operator does on its own (a record verified, say).
T = 30.0

R = TypeVar("R")


class Stage:
    """What the harness set up, the secrets handled, and every endpoint answer seen."""

    def __init__(self, env: Dict[str, str]) -> None:
        self.ca_file = env["CUBBYHOLE_ENDPOINT_CA_FILE"]
        self.identities = Path(env["CUBBYHOLE_IDENTITIES"])
        self.vault_addr = env["VAULT_ADDR"]
        self.expect_path = env["CUBBYHOLE_EXPECT_PATH"]
        self._root = WrappingToken(env["CUBBYHOLE_TEST_VAULT_TOKEN"])  # a Secret: never printed
        self.secrets_out = Path(env["CUBBYHOLE_TEST_SECRETS_OUT"])
        self.namespace = env["CUBBYHOLE_TEST_NAMESPACE"]
        self.binding = env["CUBBYHOLE_TEST_BINDING"]
        from openapi_check import Checker  # here: only the live run needs jsonschema and pyyaml

        self.checker = Checker.load(Path(env["CUBBYHOLE_OPENAPI"]))
        #: (path, status) of every answer seen, and what departed from the document.
        self.seen: List[Tuple[str, int]] = []
        self.problems: List[str] = []
        self.handled: List[str] = []

    # Secrets ------------------------------------------------------------------------------

    def remember(self, value: str) -> None:
        """Records a secret value this suite handled, for the harness's scan."""
        if value and value not in self.handled:
            self.handled.append(value)
            with open(self.secrets_out, "a", encoding="utf-8") as f:
                f.write(value + "\n")

    def assert_not_in(self, text: str, what: str, extra: Tuple[str, ...] = ()) -> None:
        """Fails (without quoting anything) when ``text`` holds a secret handled so far."""
        for secret in list(self.handled) + [s for s in extra if s]:
            if secret in text:
                pytest.fail(f"{what} holds a secret the suite handled")

    def identity(self, name: str) -> str:
        return (self.identities / name).read_text().strip()

    # Endpoint -----------------------------------------------------------------------------

    def record(self, answer: Answer) -> None:
        """``on_answer`` hook: remembers a served wrapping token, checks the answer."""
        try:
            parsed = answer.json()
            if isinstance(parsed, dict) and isinstance(parsed.get("wrappingToken"), str):
                self.remember(parsed["wrappingToken"])
            self.seen.append((answer.path, answer.status))
            self.problems += self.checker.check(
                "POST", answer.path, answer.status, answer.headers, answer.body()
            )
        except Exception as e:  # never let a check's error text (or a body) out through the client
            self.problems.append(f"{answer.path} -> {answer.status}: the check failed: {type(e).__name__}")

    def endpoint(self, identity: str) -> Tuple[Endpoint, List[Answer]]:
        """An endpoint client presenting identity file ``identity``, and the answers it got."""
        answers: List[Answer] = []

        def hook(answer: Answer) -> None:
            answers.append(answer)
            self.record(answer)

        e = Endpoint(
            ENDPOINT,
            ca_file=self.ca_file,
            identity_token_path=str(self.identities / identity),
            on_answer=hook,
        )
        return e, answers

    def vault(self) -> Vault:
        return Vault(self.vault_addr)

    # Vault as the test (a thief, an inspector) ----------------------------------------------

    def vault_call(
        self,
        path: str,
        token: str,
        body: Optional[Dict[str, Any]] = None,
        headers: Optional[Dict[str, str]] = None,
        method: str = "POST",
    ) -> Tuple[int, Any]:
        """Calls Vault with ``token``: (status, parsed answer). Never raises with a body."""
        request = urllib.request.Request(
            f"{self.vault_addr.rstrip('/')}/v1/{path}",
            data=json.dumps(body or {}).encode() if method == "POST" else None,
            headers={"X-Vault-Token": token, "Content-Type": "application/json", **(headers or {})},
            method=method,
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        try:
            return status, json.loads(raw.decode() or "null")
        except ValueError:
            return status, None

    def root(
        self, path: str, body: Optional[Dict[str, Any]] = None, headers: Optional[Dict[str, str]] = None
    ) -> Tuple[int, Any]:
        return self.vault_call(path, self._root.reveal(), body, headers)

    def token_accessor(self, token: str) -> Optional[str]:
        """The accessor Vault reports for ``token`` (``GET lookup-self``: the default policy's
        read grant), None when it refuses it."""
        status, answer = self.vault_call("auth/token/lookup-self", token, method="GET")
        if status != 200 or not isinstance(answer, dict):
            return None
        return (answer.get("data") or {}).get("accessor")

    # Records ------------------------------------------------------------------------------

    def record_of(self, pod: str) -> Optional[Dict[str, str]]:
        """The ``cubbyhole.dev/`` annotations of the pod's record (prefix dropped)."""
        ran = subprocess.run(
            [
                "kubectl",
                "get",
                "secrets",
                "-n",
                self.namespace,
                "-l",
                f"cubbyhole.dev/binding={self.binding}",
                "-o",
                "json",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if ran.returncode != 0:
            pytest.fail(f"kubectl get secrets failed: {ran.stderr.strip()[-400:]}")
        for secret in json.loads(ran.stdout).get("items", []):
            annotations = secret.get("metadata", {}).get("annotations") or {}
            if annotations.get("cubbyhole.dev/pod") == pod:
                return {
                    k[len("cubbyhole.dev/") :]: v
                    for k, v in annotations.items()
                    if k.startswith("cubbyhole.dev/")
                }
        return None


def eventually(
    what: str, deadline: float, probe: Callable[[], Optional[R]], state: Callable[[], Any] = lambda: None
) -> R:
    """``probe()``'s first truthy value within ``deadline`` seconds; fails naming ``what``."""
    end = time.monotonic() + deadline
    while True:
        found = probe()
        if found:
            return found
        if time.monotonic() > end:
            pytest.fail(f"not within {deadline:.0f}s: {what}; last seen: {state()!r}")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def stage() -> Stage:
    missing = [n for n in NEEDED if not os.environ.get(n)]
    if missing:
        pytest.fail(f"CUBBYHOLE_ENDPOINT is set but not {', '.join(missing)}")
    return Stage(dict(os.environ))


def record_until(
    stage: Stage, pod: str, what: str, holds: Callable[[Dict[str, str]], bool], deadline: float = T
) -> Dict[str, str]:
    """Waits until the pod's record (its annotations) satisfies ``holds``."""

    def probe() -> Optional[Dict[str, str]]:
        record = stage.record_of(pod)
        return record if record is not None and holds(record) else None

    return eventually(f"{pod}'s record {what}", deadline, probe, lambda: stage.record_of(pod))


def verified(stage: Stage, pod: str, accessor: str) -> Dict[str, str]:
    """Waits until the pod's record says its agent's receipt verified the token ``accessor``."""
    return record_until(
        stage,
        pod,
        f"verified with accessor {accessor}",
        lambda r: (
            r.get("verified") == "true" and r.get("accessor") == accessor and r.get("phase") == "Unwrapped"
        ),
    )


def first_and_last(answers: List[Answer]) -> Tuple[Tuple[str, int], Tuple[str, int]]:
    """(path, status) of the first and the last answer (transient refusals may come between)."""
    return (answers[0].path, answers[0].status), (answers[-1].path, answers[-1].status)


def token_works(stage: Stage, token: Token) -> None:
    """Vault accepts the token and it is the one the client says (its accessor)."""
    accessor = stage.token_accessor(token.reveal())
    if accessor is None:
        pytest.fail(f"Vault refuses the token with accessor {token.accessor}")
    assert accessor == token.accessor


# (a) ----------------------------------------------------------------------------------------


def test_bootstrap_end_to_end(stage: Stage, tmp_path: Path) -> None:
    endpoint, answers = stage.endpoint("agent-0")
    out = tmp_path / "token"
    token = bootstrap(endpoint, stage.vault(), stage.expect_path, out=str(out))
    stage.remember(token.reveal())
    token_works(stage, token)
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o400
    if out.read_text() != token.reveal():
        pytest.fail("the token file does not hold the token")
    assert [p.name for p in tmp_path.iterdir()] == ["token"], "no temp file left"
    assert first_and_last(answers) == (("/v1/wrap", 200), ("/v1/receipt", 204))
    assert answers[0].headers.get("cache-control") == "no-store"
    record = verified(stage, "agent-0", token.accessor)
    assert json.loads(record["receipt"]) == {"result": "unwrapped", "accessor": token.accessor}


# (b) ----------------------------------------------------------------------------------------

REFUSALS = [
    ("wrong-audience", "NotAuthenticated", 401),
    ("unselected", "NotSelected", 403),
    ("by-secret", "NotOnRequest", 403),
    ("unbound", "NotBoundToPod", 403),
]


@pytest.mark.parametrize("identity,reason,status", REFUSALS, ids=[r[0] for r in REFUSALS])
def test_refusals_exit_9_with_their_reason(
    stage: Stage, tmp_path: Path, identity: str, reason: str, status: int
) -> None:
    endpoint, answers = stage.endpoint(identity)
    with pytest.raises(Refused) as refused:
        endpoint.ask()
    assert (refused.value.reason, refused.value.status, refused.value.exit_code) == (reason, status, 9)
    assert (answers[-1].path, answers[-1].status) == ("/v1/wrap", status)

    out = tmp_path / "token"
    ran = subprocess.run(
        [
            sys.executable,
            "-m",
            "cubbyhole_agent",
            f"--request={ENDPOINT}",
            f"--request-ca-file={stage.ca_file}",
            f"--identity-token={stage.identities / identity}",
            f"--vault-addr={stage.vault_addr}",
            f"--expect-path={stage.expect_path}",
            f"--out={out}",
        ],
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    printed = ran.stdout + ran.stderr
    stage.assert_not_in(printed, "the CLI's output", (stage.identity(identity),))
    assert ran.returncode == 9, printed
    assert f"(reason {reason})" in ran.stderr
    assert not out.exists()


def cli_env(**extra: str) -> Dict[str, str]:
    """A clean environment for the CLI: none of the harness's CUBBYHOLE_/VAULT_ variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CUBBYHOLE_", "VAULT_"))}
    env.update(PYTHONPATH=str(SRC), PYTHONDONTWRITEBYTECODE="1", **extra)
    return env


# (c) ----------------------------------------------------------------------------------------


def test_a_replayed_ask_is_refused_and_the_token_kept(stage: Stage) -> None:
    endpoint, answers = stage.endpoint("agent-1")
    token = bootstrap(endpoint, stage.vault(), stage.expect_path)
    stage.remember(token.reveal())
    verified(stage, "agent-1", token.accessor)
    with pytest.raises(Refused) as refused:
        endpoint.ask()
    assert (refused.value.reason, refused.value.status, refused.value.exit_code) == ("AlreadyServed", 409, 9)
    assert first_and_last(answers) == (("/v1/wrap", 200), ("/v1/wrap", 409))
    assert ("/v1/receipt", 204) in [(a.path, a.status) for a in answers]
    token_works(stage, token)
    verified(stage, "agent-1", token.accessor)


# (d) ----------------------------------------------------------------------------------------


def test_a_substituted_wrap_is_refused_unconsumed(stage: Stage, tmp_path: Path) -> None:
    endpoint, _ = stage.endpoint("agent-2")
    vault = stage.vault()
    real = endpoint.ask()
    # Someone who may wrap elsewhere hands the agent a wrap of their own.
    status, planted_answer = stage.root(
        "sys/wrapping/wrap", {"planted": "by the test"}, {"X-Vault-Wrap-TTL": "300s"}
    )
    assert status == 200
    planted = WrappingToken(planted_answer["wrap_info"]["token"])
    stage.remember(planted.reveal())
    out = tmp_path / "token"
    with pytest.raises(UnexpectedCreationPath) as refused:
        redeem(vault, planted, stage.expect_path, out=str(out))
    assert (refused.value.exit_code, refused.value.receipt) == (4, "unexpected-creation-path")
    assert refused.value.found.strip("/") == "sys/wrapping/wrap"
    assert not out.exists()
    # Not consumed: Vault still knows it, as the operator will when it looks.
    still = vault.lookup(planted)
    assert still.creation_path.strip("/") == "sys/wrapping/wrap"
    # The real wrap is then unwrapped, and the receipt verifies it.
    token = redeem(vault, real, stage.expect_path, out=str(out))
    stage.remember(token.reveal())
    token_works(stage, token)
    endpoint.report(Receipt.unwrapped(token.accessor))
    verified(stage, "agent-2", token.accessor)
    stage.root("auth/token/revoke-accessor", {"accessor": planted_answer["wrap_info"]["accessor"]})


# (e) ----------------------------------------------------------------------------------------


def test_a_stolen_wrap_is_reported_invalid_and_the_record_says_so(stage: Stage, tmp_path: Path) -> None:
    endpoint, answers = stage.endpoint("agent-3")
    vault = stage.vault()
    wrap = endpoint.ask()
    # A thief unwraps it first.
    status, stolen = stage.root("sys/wrapping/unwrap", {"token": wrap.token.reveal()})
    assert status == 200
    thief = stolen["auth"]["client_token"]
    stage.remember(thief)
    out = tmp_path / "token"
    with pytest.raises(InvalidWrap) as invalid:
        redeem(vault, wrap, stage.expect_path, out=str(out))
    assert (invalid.value.exit_code, invalid.value.receipt) == (3, "invalid-wrapping-token")
    assert not out.exists()
    endpoint.report(Receipt.failed(invalid.value.receipt))
    assert first_and_last(answers) == (("/v1/wrap", 200), ("/v1/receipt", 204))
    # The endpoint recorded the receipt in the pod's record ...
    record_until(
        stage,
        "agent-3",
        "holding the invalid-wrapping-token receipt",
        lambda r: json.loads(r.get("receipt") or "{}") == {"result": "invalid-wrapping-token"},
    )
    # ... and the operator, once Vault confirms the wrap was consumed (at the latest at its
    # expiry check, shortly before the wrap's TTL ends), settles it as tampered and revokes
    # the token the thief took.
    record = record_until(
        stage, "agent-3", "Tampered", lambda r: r.get("phase") == "Tampered", wrap.wrap_ttl_seconds + T
    )
    assert record.get("verified") != "true"
    eventually("the thief's token revoked", T, lambda: stage.token_accessor(thief) is None)


# Nothing printed ----------------------------------------------------------------------------


def test_a_bootstrap_prints_and_logs_no_secret(
    stage: Stage, tmp_path: Path, capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture
) -> None:
    endpoint, answers = stage.endpoint("agent-4")
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="cubbyhole_agent")
    token = bootstrap(endpoint, stage.vault(), stage.expect_path, out=str(tmp_path / "token"))
    stage.remember(token.reveal())
    wrapping = answers[0].json()["wrappingToken"]
    printed = capsys.readouterr()
    logged = caplog.text + "".join(f"{r.getMessage()}{r.args!r}{r.exc_text or ''}" for r in caplog.records)
    for text, what in [(printed.out, "stdout"), (printed.err, "stderr"), (logged, "the log")]:
        stage.assert_not_in(text, what, (wrapping, token.reveal(), stage.identity("agent-4")))
    # The capture worked: the client's progress is there.
    missing = [
        line
        for line in ("handed out wrap", "unwrapped: token accessor", "receipt reported")
        if line not in logged
    ]
    assert missing == [], "the client's progress was not captured"
    verified(stage, "agent-4", token.accessor)


# The CLI with the environment the webhook injects ----------------------------------------


def test_the_cli_bootstraps_with_the_injected_environment(stage: Stage, tmp_path: Path) -> None:
    out, receipt = tmp_path / "token", tmp_path / "receipt"
    env = cli_env(
        CUBBYHOLE_REQUEST=ENDPOINT,
        CUBBYHOLE_REQUEST_CA=Path(stage.ca_file).read_text(),
        CUBBYHOLE_IDENTITY_TOKEN=str(stage.identities / "agent-5"),
        CUBBYHOLE_EXPECT_PATH=stage.expect_path,
        VAULT_ADDR=stage.vault_addr,
    )
    ran = subprocess.run(
        [sys.executable, "-m", "cubbyhole_agent", f"--out={out}", f"--receipt-file={receipt}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    written = out.read_text() if out.exists() else ""
    stage.remember(written)
    stage.assert_not_in(ran.stdout + ran.stderr, "the CLI's output", (written, stage.identity("agent-5")))
    assert ran.returncode == 0, ran.stderr
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o400
    reported = json.loads(receipt.read_text())
    assert reported["result"] == "unwrapped"
    accessor = stage.token_accessor(written)  # never inside an assert: pytest prints call arguments
    assert accessor == reported["accessor"]
    verified(stage, "agent-5", reported["accessor"])


# A lost answer ------------------------------------------------------------------------------


def test_an_ask_whose_wrap_is_still_pending_is_served_again(stage: Stage) -> None:
    endpoint, answers = stage.endpoint("agent-6")
    vault = stage.vault()
    lost = endpoint.ask()  # as if the answer never reached the agent
    again = endpoint.ask()
    assert again.wrap_accessor != lost.wrap_accessor
    with pytest.raises(InvalidWrap):
        vault.lookup(lost)  # the first wrap of the run was revoked
    token = redeem(vault, again, stage.expect_path)
    stage.remember(token.reveal())
    endpoint.report(Receipt.unwrapped(token.accessor))
    assert [(a.path, a.status) for a in answers if a.status in (200, 204)] == [
        ("/v1/wrap", 200),
        ("/v1/wrap", 200),
        ("/v1/receipt", 204),
    ]
    verified(stage, "agent-6", token.accessor)


# (f) Last: every answer seen in this module, checked against the API document ---------------


def test_every_answer_conforms_to_the_api_document(stage: Stage) -> None:
    endpoint, _ = stage.endpoint("agent-7")
    token = bootstrap(endpoint, stage.vault(), stage.expect_path)
    stage.remember(token.reveal())
    with pytest.raises(Refused) as refused:
        endpoint.ask()
    assert refused.value.reason == "AlreadyServed"
    with pytest.raises(Refused) as refused:
        endpoint.report(Receipt(""))  # not a receipt
    assert (refused.value.reason, refused.value.status) == ("BadReceipt", 400)
    for identity in ("wrong-audience", "unselected"):
        with pytest.raises(Refused):
            stage.endpoint(identity)[0].ask()

    seen: Set[Tuple[str, int]] = set(stage.seen)
    needed = {
        ("/v1/wrap", 200),
        ("/v1/receipt", 204),
        ("/v1/wrap", 401),
        ("/v1/wrap", 403),
        ("/v1/wrap", 409),
        ("/v1/receipt", 400),
    }
    assert needed <= seen, f"not exercised: {sorted(needed - seen)}"
    assert {200, 204, 401, 403, 409} <= {status for _, status in seen}
    assert stage.problems == [], "\n".join(stage.problems)
    handled = len(stage.handled)
    assert handled >= 4
