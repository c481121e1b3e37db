"""The two unauthenticated Vault calls an agent makes (``src/vault/mod.rs``):
``sys/wrapping/lookup`` (never consumes the wrap, so it is retried on any network error) and
``sys/wrapping/unwrap`` (retried only when Vault never got it: after a lost answer the wrap may
be consumed). Error texts carry Vault's ``errors`` with every token sent blanked out."""

from __future__ import annotations

import json
import logging
import os
import ssl
import time
from http import HTTPStatus
from typing import Any, Dict, Mapping, Optional, Union

from . import _http
from .backoff import backoff
from .errors import InvalidWrap, UsageError, VaultError, VaultUnreachable
from .protocol import Wrap
from .secret import Token, WrappingToken, redact

log = logging.getLogger("cubbyhole_agent")

# Indirection for tests, which replace it to observe waits without waiting.
_sleep = time.sleep

#: Vault's one answer for a consumed, expired or revoked wrapping token.
WRAP_INVALID = "wrapping token is not valid or does not exist"


def is_invalid_wrap(message: str) -> bool:
    """Whether Vault's error text means the wrap is not valid (consumed, expired, revoked)."""
    return WRAP_INVALID in message


class WrapLookup:
    """What ``sys/wrapping/lookup`` says about a valid wrap."""

    __slots__ = ("creation_path", "creation_time", "creation_ttl")

    def __init__(self, creation_path: str, creation_time: str, creation_ttl: int) -> None:
        self.creation_path = creation_path
        self.creation_time = creation_time
        self.creation_ttl = creation_ttl

    def __repr__(self) -> str:
        return (
            f"WrapLookup(creation_path={self.creation_path!r}, "
            f"creation_time={self.creation_time!r}, creation_ttl={self.creation_ttl})"
        )


def _wrapping_token(wrap: Union[Wrap, WrappingToken]) -> WrappingToken:
    if isinstance(wrap, Wrap):
        return wrap.token
    if isinstance(wrap, WrappingToken):
        return wrap
    raise TypeError("expected a Wrap or a WrappingToken")


class Vault:
    """Vault (or OpenBao) at ``addr`` (``http://`` or ``https://``), trusting only the PEM CA
    bundle ``ca_file`` when given, in Vault Enterprise / OpenBao ``namespace`` when given."""

    def __init__(
        self,
        addr: str,
        ca_file: Optional[str] = None,
        namespace: Optional[str] = None,
        timeout: float = _http.TIMEOUT,
    ) -> None:
        if not addr or not addr.strip():
            raise UsageError("--vault-addr (VAULT_ADDR) is empty")
        try:
            self._base = _http.split_base(addr, ("http", "https"))
        except _http.NotSent as e:
            raise UsageError(f"--vault-addr: {e.detail}") from None
        self.addr = addr.strip().rstrip("/")
        self.namespace = namespace or None
        # A CA given is checked even for plain HTTP: a broken VAULT_CACERT is a mistake anyway.
        self._context = _vault_context(ca_file) if ca_file or self._base[0] == "https" else None
        self._timeout = timeout

    @classmethod
    def from_env(cls, environ: Optional[Mapping[str, str]] = None, **kwargs: Any) -> "Vault":
        """Vault as the pod's environment names it: ``VAULT_ADDR``, ``VAULT_CACERT``,
        ``VAULT_NAMESPACE``."""
        env = os.environ if environ is None else environ
        return cls(
            env.get("VAULT_ADDR", ""),
            ca_file=env.get("VAULT_CACERT") or None,
            namespace=env.get("VAULT_NAMESPACE") or None,
            **kwargs,
        )

    def __repr__(self) -> str:
        return f"Vault(addr={self.addr!r}, namespace={self.namespace!r})"

    def _call(
        self, op: str, path: str, headers: Dict[str, str], body: Optional[bytes], token: WrappingToken
    ) -> Dict[str, Any]:
        """One POST; the parsed answer, or the failure as the exception its exit code needs."""
        if self.namespace:
            headers = dict(headers, **{"X-Vault-Namespace": self.namespace})
        try:
            resp = _http.post(self._base, "/v1/" + path, headers, body, self._context, self._timeout)
        except _http.NotSent as e:
            raise UsageError(f"could not send {op} to Vault: {e.detail}") from None
        except _http.Unreachable as e:
            raise VaultUnreachable(f"Vault unreachable during {op}: {e.detail}") from None
        except _http.NoAnswer as e:
            raise VaultUnreachable(
                f"no answer from Vault during {op}: {e.detail}", maybe_processed=True
            ) from None
        if 200 <= resp.status < 300:
            try:
                parsed = json.loads(resp.body.decode("utf-8"))
            except ValueError:
                parsed = None
            if not isinstance(parsed, dict):
                raise VaultError(
                    f"unexpected answer from Vault during {op}: "
                    f"HTTP {resp.status} with a body of an unexpected shape"
                )
            return parsed
        message = redact(_errors(resp), token)
        if resp.status in (502, 504):
            raise VaultUnreachable(
                f"no answer from Vault during {op}: HTTP {resp.status}: {message}", maybe_processed=True
            )
        if is_invalid_wrap(message):
            raise InvalidWrap()
        raise VaultError(f"Vault refused {op} ({resp.status}): {message}", status=resp.status)

    def _retrying(
        self,
        op: str,
        path: str,
        headers: Dict[str, str],
        body: Optional[bytes],
        token: WrappingToken,
        retries: int,
        consumes: bool = False,
    ) -> Dict[str, Any]:
        """:meth:`_call`, retried with backoff while Vault is unreachable; a call that
        ``consumes`` the wrap is not retried once it may have reached Vault (the wrap may then
        be used: never sent twice)."""
        retry = 0
        while True:
            try:
                return self._call(op, path, headers, body, token)
            except VaultUnreachable as e:
                if consumes and e.maybe_processed:
                    log.info("the %s may have reached Vault: not retrying, the wrap may be used", op)
                    raise
                if retry >= retries:
                    raise
                log.info("%s; retry %d of %d", e, retry + 1, retries)
                _sleep(backoff(retry))
                retry += 1

    def lookup(self, wrap: Union[Wrap, WrappingToken], retries: int = 5) -> WrapLookup:
        """Where and when the wrap was created (``sys/wrapping/lookup``; never consumes it).
        Raises :class:`InvalidWrap` when Vault says it is not valid."""
        token = _wrapping_token(wrap)
        body = json.dumps({"token": token.reveal()}).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        answer = self._retrying("lookup", "sys/wrapping/lookup", headers, body, token, retries)
        data = answer.get("data")
        if not isinstance(data, dict) or not isinstance(data.get("creation_path"), str):
            raise VaultError("unexpected answer from Vault during lookup: no creation_path")
        path = data["creation_path"]
        created = data.get("creation_time")
        ttl = data.get("creation_ttl")
        return WrapLookup(
            path, created if isinstance(created, str) else "", ttl if isinstance(ttl, int) else 0
        )

    def unwrap(self, wrap: Union[Wrap, WrappingToken], retries: int = 5) -> Token:
        """Consumes the wrap (``sys/wrapping/unwrap``) and returns the token inside. Retried
        only while Vault certainly never got the request."""
        token = _wrapping_token(wrap)
        headers = {"X-Vault-Token": token.reveal()}
        answer = self._retrying(
            "unwrap", "sys/wrapping/unwrap", headers, None, token, retries, consumes=True
        )
        auth = answer.get("auth")
        if not isinstance(auth, dict):
            raise VaultError("unexpected answer from Vault during unwrap: the wrap does not hold a token")
        value, accessor = auth.get("client_token"), auth.get("accessor")
        if not (isinstance(value, str) and value and isinstance(accessor, str)):
            raise VaultError("unexpected answer from Vault during unwrap: the wrap does not hold a token")
        policies = auth.get("policies")
        ttl = auth.get("lease_duration")
        return Token(
            value,
            accessor,
            [p for p in policies if isinstance(p, str)] if isinstance(policies, list) else (),
            ttl if isinstance(ttl, int) and not isinstance(ttl, bool) else None,
        )


def _errors(resp: _http.Response) -> str:
    """Vault's ``errors``, joined; the status's name when there are none."""
    try:
        parsed = json.loads(resp.body.decode("utf-8"))
    except ValueError:
        parsed = None
    errors = parsed.get("errors") if isinstance(parsed, dict) else None
    if isinstance(errors, list):
        text = "; ".join(e for e in errors if isinstance(e, str))
        if text:
            return text
    try:
        return HTTPStatus(resp.status).phrase
    except ValueError:
        return "no error text"


def _vault_context(ca_file: Optional[str]) -> ssl.SSLContext:
    """Trusts exactly the certificates of ``ca_file`` (not the system's roots) when given."""
    if not ca_file:
        return ssl.create_default_context()
    try:
        with open(ca_file, encoding="utf-8") as f:
            pem = f.read()
    except (OSError, ValueError) as e:
        raise UsageError(f"reading Vault's CA {ca_file}: {_http.describe(e)}") from None
    if "-----BEGIN CERTIFICATE-----" not in pem:
        raise UsageError(f"Vault's CA {ca_file} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")
    try:
        return ssl.create_default_context(cadata=pem)
    except (ssl.SSLError, ValueError) as e:
        raise UsageError(f"parsing Vault's CA {ca_file}: {_http.describe(e)}") from None
