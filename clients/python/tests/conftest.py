"""Shared fixtures. Puts ``clients/python/src`` on ``sys.path``, so the suite runs from a
checkout without installing the package or setting PYTHONPATH."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterator, List

import pytest

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
#: The repository root (the Rust sources the parity tests read).
REPO = HERE.parents[2]

if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))

from cubbyhole_agent import endpoint as endpoint_module  # noqa: E402
from cubbyhole_agent import vault as vault_module  # noqa: E402

import fakes  # noqa: E402  (after the path is set)


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> List[float]:
    """The client's retry waits, recorded instead of slept."""
    seen: List[float] = []
    monkeypatch.setattr(endpoint_module, "_sleep", seen.append)
    monkeypatch.setattr(vault_module, "_sleep", seen.append)
    return seen


@pytest.fixture
def endpoint_server() -> Iterator[fakes.FakeServer]:
    """A fake HTTPS request endpoint; set ``.respond`` (e.g. a :class:`fakes.Script`)."""
    server = fakes.FakeServer(fakes.Script(), tls=True)
    yield server
    server.close()


@pytest.fixture
def fake_vault() -> fakes.FakeVault:
    return fakes.FakeVault()


@pytest.fixture
def vault_server(fake_vault: fakes.FakeVault) -> Iterator[fakes.FakeServer]:
    """A fake Vault over plain HTTP, backed by ``fake_vault``."""
    server = fakes.FakeServer(fake_vault, tls=False)
    yield server
    server.close()


@pytest.fixture
def identity(tmp_path: Path) -> Path:
    """An identity token file (its content is a secret too)."""
    path = tmp_path / "identity"
    path.write_text("eyJhbGciOi.identity-token-value.signature\n")
    return path


@pytest.fixture
def closed_url() -> str:
    """An address where nothing listens."""
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"127.0.0.1:{port}"
