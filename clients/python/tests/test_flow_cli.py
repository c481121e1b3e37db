"""The whole procedure and the CLI against the fakes: every exit code of ``cubbyhole unwrap``'s
table that a fake can cause, the creation path checked before anything is consumed, the
receipt reported only once a wrap was held, and nothing secret printed."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import List, Optional

import pytest

from cubbyhole_agent import Endpoint, Receipt, Vault, WrappingToken, bootstrap, redeem
from cubbyhole_agent.__main__ import main
from cubbyhole_agent.errors import UnexpectedCreationPath, UsageError
from cubbyhole_agent.flow import check_path, expected_path
from cubbyhole_agent.vault import WrapLookup

from conftest import SRC
from fakes import CA_FILE, FakeServer, FakeVault, Script, refusal, reply, wrap_body

EXPECT = "auth/token/create/agents"


class Stage:
    """A fake endpoint serving one wrap minted by the fake Vault, and the CLI's flags."""

    def __init__(
        self, endpoint: FakeServer, vault: FakeServer, fake_vault: FakeVault, identity: Path, tmp: Path
    ) -> None:
        self.endpoint, self.vault, self.fake_vault = endpoint, vault, fake_vault
        self.identity, self.tmp = identity, tmp
        self.out = tmp / "token"
        self.receipt_file = tmp / "receipt"
        self.wrapping, self.inner, self.accessor = fake_vault.mint()
        self.serve(self.wrapping)

    def serve(self, wrapping: str, receipt_status: int = 204) -> None:
        self.endpoint.respond = Script(
            wrap=[reply(200, wrap_body(wrapping), {"Cache-Control": "no-store"})],
            receipt=[reply(receipt_status)],
        )

    def args(self, *extra: str, out: Optional[Path] = None) -> List[str]:
        return [
            f"--request={self.endpoint.url}",
            f"--request-ca-file={CA_FILE}",
            f"--identity-token={self.identity}",
            f"--vault-addr={self.vault.url}",
            f"--expect-path={EXPECT}",
            f"--out={out or self.out}",
            f"--receipt-file={self.receipt_file}",
            "--retries=1",
            *extra,
        ]

    def receipts(self) -> List[dict]:
        return [r.json() for r in self.endpoint.requests if r.path == "/v1/receipt"]

    def secrets(self) -> List[str]:
        return [self.wrapping, self.inner, self.identity.read_text().strip()]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI reads CUBBYHOLE_* and VAULT_*: none of the caller's may reach these runs."""
    for name in list(os.environ):
        if name.startswith(("CUBBYHOLE_", "VAULT_")):
            monkeypatch.delenv(name)


@pytest.fixture
def stage(endpoint_server, vault_server, fake_vault, identity, tmp_path) -> Stage:
    return Stage(endpoint_server, vault_server, fake_vault, identity, tmp_path)


def run(stage: Stage, capsys: pytest.CaptureFixture, *argv: str) -> tuple:
    code = main(list(argv))
    printed = capsys.readouterr()
    text = printed.out + printed.err
    for secret in stage.secrets():
        assert secret not in text, "a secret was printed"
    return code, printed.err


def test_unwrapped_written_and_reported(stage: Stage, capsys) -> None:
    code, err = run(stage, capsys, *stage.args())
    assert code == 0, err
    assert stage.out.read_text() == stage.inner
    assert stat.S_IMODE(os.stat(stage.out).st_mode) == 0o400
    assert stage.receipts() == [{"result": "unwrapped", "accessor": stage.accessor}]
    assert json.loads(stage.receipt_file.read_text()) == {"result": "unwrapped", "accessor": stage.accessor}
    assert f"done: token with accessor {stage.accessor} written" in err
    assert "handed out wrap wrap-accessor" in err and "receipt reported" in err
    assert [p.name for p in stage.tmp.iterdir() if p.name.startswith(".")] == []


def test_a_wrap_made_elsewhere_is_refused_unconsumed(stage: Stage, capsys) -> None:
    planted, _, _ = stage.fake_vault.mint("sys/wrapping/wrap")
    stage.serve(planted)
    code, err = run(stage, capsys, *stage.args())
    assert code == 4, err
    assert stage.fake_vault.unwraps == 0 and planted in stage.fake_vault.wraps, "not consumed"
    assert "'sys/wrapping/wrap', expected auth/token/create/agents" in err
    assert stage.receipts() == [{"result": "unexpected-creation-path"}]
    assert not stage.out.exists()


def test_an_invalid_wrap_is_exit_3_and_reported(stage: Stage, capsys) -> None:
    stage.serve("hvs.consumed-by-someone")
    code, err = run(stage, capsys, *stage.args())
    assert code == 3 and "not valid" in err
    assert stage.receipts() == [{"result": "invalid-wrapping-token"}]
    assert json.loads(stage.receipt_file.read_text()) == {"result": "invalid-wrapping-token"}
    assert "hvs.consumed-by-someone" not in err


def test_an_unwritable_out_is_found_before_unwrapping(stage: Stage, capsys) -> None:
    code, err = run(stage, capsys, *stage.args(out=stage.tmp / "missing" / "token"))
    assert code == 8 and "the wrap is unused" in err
    assert stage.fake_vault.unwraps == 0 and stage.wrapping in stage.fake_vault.wraps
    assert stage.receipts() == [{"result": "write-failed"}]


def test_a_refusal_prints_its_reason_and_reports_nothing(stage: Stage, capsys) -> None:
    stage.endpoint.respond = Script(wrap=[reply(403, refusal("NotSelected", "no binding selects pod ns/p"))])
    code, err = run(stage, capsys, *stage.args())
    assert code == 9
    assert "no binding selects pod ns/p (reason NotSelected)" in err
    assert stage.receipts() == []
    assert json.loads(stage.receipt_file.read_text()) == {"result": "request-refused"}


def test_vault_unreachable_is_exit_5_and_reported(stage: Stage, capsys, closed_url: str, waits) -> None:
    argv = [a for a in stage.args() if not a.startswith("--vault-addr")] + [
        f"--vault-addr=http://{closed_url}"
    ]
    code, err = run(stage, capsys, *argv)
    assert code == 5 and "Vault unreachable during lookup" in err
    assert stage.receipts() == [{"result": "vault-unreachable"}]


def test_operator_unreachable_is_exit_10(stage: Stage, capsys, closed_url: str, waits) -> None:
    argv = [a for a in stage.args() if not a.startswith("--request=")] + [f"--request=https://{closed_url}"]
    code, err = run(stage, capsys, *argv)
    assert code == 10 and "endpoint is unreachable" in err
    assert json.loads(stage.receipt_file.read_text()) == {"result": "operator-unreachable"}


def test_an_unreadable_identity_token_is_exit_7(stage: Stage, capsys) -> None:
    argv = stage.args(f"--identity-token={stage.tmp / 'none'}")
    code, err = run(stage, capsys, *argv)
    assert code == 7 and "cannot read the identity token" in err
    assert stage.endpoint.requests == []


def test_no_receipt(stage: Stage, capsys) -> None:
    code, _ = run(stage, capsys, *stage.args("--no-receipt"))
    assert code == 0 and stage.receipts() == []


@pytest.mark.parametrize(
    "change",
    [
        ["--expect-path=auth/token/create"],
        ["--expect-path=sys/wrapping/wrap"],
        ["--expect-path=auth/token/create/a/b"],
        ["--request=http://127.0.0.1:1"],
        ["--request-ca=not pem"],
        ["--vault-addr=vault:8200"],
        ["--retries=-1"],
        ["--retries=many"],
    ],
)
def test_usage_errors_are_exit_2_and_ask_nothing(stage: Stage, capsys, change: List[str]) -> None:
    code, err = run(stage, capsys, *stage.args(), *change)
    assert code == 2, err
    assert stage.endpoint.requests == [] and stage.vault.requests == []
    assert not stage.receipt_file.exists()


def test_required_settings(stage: Stage, capsys) -> None:
    assert run(stage, capsys, f"--out={stage.out}")[0] == 2
    assert run(stage, capsys, *[a for a in stage.args() if not a.startswith("--out")])[0] == 2
    code, err = run(stage, capsys, *[a for a in stage.args() if not a.startswith("--expect-path")])
    assert code == 2 and "--expect-path" in err


def test_the_module_runs_with_the_environment_the_webhook_injects(stage: Stage) -> None:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": str(SRC),
        "PYTHONDONTWRITEBYTECODE": "1",
        "CUBBYHOLE_REQUEST": stage.endpoint.url,
        "CUBBYHOLE_REQUEST_CA": Path(CA_FILE).read_text(),
        "CUBBYHOLE_IDENTITY_TOKEN": str(stage.identity),
        "CUBBYHOLE_EXPECT_PATH": EXPECT,
        "VAULT_ADDR": stage.vault.url,
    }
    ran = subprocess.run(
        [sys.executable, "-m", "cubbyhole_agent", f"--out={stage.out}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout == ""
    for secret in stage.secrets():
        assert secret not in ran.stderr
    assert stage.out.read_text() == stage.inner


def test_bootstrap_returns_the_token_and_a_failed_report_is_only_logged(stage: Stage, caplog) -> None:
    stage.serve(stage.wrapping, receipt_status=500)
    endpoint = Endpoint(stage.endpoint.url, ca_file=CA_FILE, identity_token_path=str(stage.identity))
    import cubbyhole_agent.endpoint as e

    e._sleep, slept = (lambda s: None), e._sleep
    try:
        with caplog.at_level("DEBUG"):
            token = bootstrap(endpoint, Vault(stage.vault.url), EXPECT)
    finally:
        e._sleep = slept
    assert token.reveal() == stage.inner and token.accessor == stage.accessor
    assert "could not report the receipt" in caplog.text
    for secret in stage.secrets():
        assert secret not in caplog.text
    assert len(stage.receipts()) == 3, "reported with two retries"


def test_redeem_checks_the_path_before_consuming(stage: Stage) -> None:
    vault = Vault(stage.vault.url)
    planted, _, _ = stage.fake_vault.mint("auth/token/create/other")
    with pytest.raises(UnexpectedCreationPath) as e:
        redeem(vault, WrappingToken(planted), EXPECT)
    assert (e.value.found, e.value.expected, e.value.exit_code) == ("auth/token/create/other", EXPECT, 4)
    assert vault.lookup(WrappingToken(planted)).creation_path == "auth/token/create/other"
    assert redeem(vault, WrappingToken(stage.wrapping), "/" + EXPECT + "/").reveal() == stage.inner


def test_expected_path_must_name_a_token_role() -> None:
    assert expected_path("auth/token/create/agents") == "auth/token/create/agents"
    assert expected_path(" /auth/token/create/agents/ ") == "auth/token/create/agents"
    for bad in ["", "auth/token/create", "auth/token/create/", "sys/x", "auth/token/create/a/b"]:
        with pytest.raises(UsageError):
            expected_path(bad)
    check_path(WrapLookup("/auth/token/create/agents/", "", 0), "auth/token/create/agents")
    for other in ["auth/token/create/other", "auth/token/create", "sys/wrapping/wrap"]:
        with pytest.raises(UnexpectedCreationPath) as e:
            check_path(WrapLookup(other, "", 0), "auth/token/create/agents")
        assert e.value.receipt == "unexpected-creation-path"


def test_receipt_equality() -> None:
    assert Receipt.unwrapped("a") == Receipt("unwrapped", "a") != Receipt.failed("vault-error")
