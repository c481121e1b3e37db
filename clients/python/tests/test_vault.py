"""Vault's two calls: lookup (retried on any network error, never consumes), unwrap (retried
only when Vault never got it), errors sorted as ``cubbyhole unwrap`` sorts them, no token in
any error text."""

from __future__ import annotations

from typing import List

import pytest

from cubbyhole_agent import Token, Vault, WrappingToken
from cubbyhole_agent.errors import InvalidWrap, UsageError, VaultError, VaultUnreachable

from fakes import FakeServer, FakeVault, reply


def test_lookup_then_unwrap(vault_server: FakeServer, fake_vault: FakeVault) -> None:
    wrapping, inner, accessor = fake_vault.mint()
    vault = Vault(vault_server.url + "/")
    found = vault.lookup(WrappingToken(wrapping))
    assert found.creation_path == "auth/token/create/agents" and found.creation_ttl == 60
    assert vault_server.requests[0].json() == {"token": wrapping}
    assert "x-vault-token" not in vault_server.requests[0].headers, "lookup is unauthenticated"
    token = vault.unwrap(WrappingToken(wrapping))
    assert isinstance(token, Token) and token.reveal() == inner and token.accessor == accessor
    assert token.policies == ("default", "agents") and token.ttl == 600
    unwrap = vault_server.requests[1]
    assert unwrap.path == "/v1/sys/wrapping/unwrap" and unwrap.headers["x-vault-token"] == wrapping
    assert unwrap.body == b""


def test_the_namespace_is_sent(vault_server: FakeServer, fake_vault: FakeVault) -> None:
    wrapping, _, _ = fake_vault.mint()
    Vault(vault_server.url, namespace="team-a").lookup(WrappingToken(wrapping))
    assert vault_server.requests[0].headers["x-vault-namespace"] == "team-a"
    with pytest.raises(UsageError) as e:
        Vault(vault_server.url, namespace="team\nb").lookup(WrappingToken(wrapping))
    assert e.value.exit_code == 2


def test_an_invalid_wrap_is_exit_3_and_its_token_is_never_quoted(vault_server: FakeServer) -> None:
    secret = "hvs.never-minted-secret"
    with pytest.raises(InvalidWrap) as e:
        Vault(vault_server.url).lookup(WrappingToken(secret))
    assert e.value.exit_code == 3 and e.value.receipt == "invalid-wrapping-token"
    with pytest.raises(InvalidWrap):
        Vault(vault_server.url).unwrap(WrappingToken(secret))
    assert secret not in str(e.value)


def test_other_vault_errors_are_exit_6_with_the_token_blanked(
    vault_server: FakeServer, fake_vault: FakeVault
) -> None:
    secret = "hvs.echoed-secret"
    fake_vault.fail_next = [reply(403, {"errors": [f"permission denied for {secret}"]})]
    with pytest.raises(VaultError) as e:
        Vault(vault_server.url).lookup(WrappingToken(secret))
    assert e.value.exit_code == 6 and e.value.status == 403
    assert "permission denied for ***" in str(e.value) and secret not in str(e.value)
    fake_vault.fail_next = [reply(200, b"not json")]
    with pytest.raises(VaultError):
        Vault(vault_server.url).lookup(WrappingToken(secret))
    fake_vault.fail_next = [reply(200, {"data": {"foo": 1}})]
    with pytest.raises(VaultError) as e:
        Vault(vault_server.url).unwrap(WrappingToken(secret))
    assert "does not hold a token" in str(e.value)


def test_lookup_is_retried_on_network_errors(closed_url: str, waits: List[float]) -> None:
    with pytest.raises(VaultUnreachable) as e:
        Vault(f"http://{closed_url}").lookup(WrappingToken("hvs.x"), retries=3)
    assert e.value.exit_code == 5 and e.value.receipt == "vault-unreachable"
    assert "Vault unreachable during lookup" in str(e.value)
    assert len(waits) == 3


def test_lookup_retries_a_gateway_error_but_unwrap_does_not(
    vault_server: FakeServer, fake_vault: FakeVault, waits: List[float]
) -> None:
    wrapping, _, _ = fake_vault.mint()
    vault = Vault(vault_server.url)
    fake_vault.fail_next = [reply(502, {"errors": ["upstream"]})]
    assert vault.lookup(WrappingToken(wrapping)).creation_path
    assert len(waits) == 1
    fake_vault.fail_next = [reply(504, {"errors": ["upstream"]})]
    with pytest.raises(VaultUnreachable) as e:
        vault.unwrap(WrappingToken(wrapping), retries=5)
    assert e.value.maybe_processed and len(waits) == 1, (
        "an unwrap that may have reached Vault is never retried"
    )


def test_unwrap_is_retried_while_vault_never_got_it(closed_url: str, waits: List[float]) -> None:
    with pytest.raises(VaultUnreachable) as e:
        Vault(f"http://{closed_url}").unwrap(WrappingToken("hvs.x"), retries=2)
    assert not e.value.maybe_processed and len(waits) == 2


@pytest.mark.parametrize("addr", ["", "  ", "vault.example:8200", "ftp://vault", "http://"])
def test_bad_addresses_are_usage_errors(addr: str) -> None:
    with pytest.raises(UsageError):
        Vault(addr)


def test_a_ca_file_without_certificates_is_refused(tmp_path) -> None:
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate\n")
    with pytest.raises(UsageError) as e:
        Vault("https://vault.example:8200", ca_file=str(bad))
    assert "holds no PEM certificate" in str(e.value)
    with pytest.raises(UsageError):
        Vault("http://vault.example:8200", ca_file=str(tmp_path / "missing.pem"))


def test_from_env() -> None:
    v = Vault.from_env({"VAULT_ADDR": "http://127.0.0.1:8200", "VAULT_NAMESPACE": "ns"})
    assert (v.addr, v.namespace) == ("http://127.0.0.1:8200", "ns")
    with pytest.raises(UsageError):
        Vault.from_env({})
