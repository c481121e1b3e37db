"""The token file: 0400 from its first byte, replaced atomically, no temp file left."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from cubbyhole_agent import Token
from cubbyhole_agent.tokenfile import check_writable, temp_path, write_new_private, write_token


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_written_0400_and_replaced_atomically(tmp_path: Path) -> None:
    out = tmp_path / "token"
    check_writable(str(out))
    assert list(tmp_path.iterdir()) == []
    for value in ["first-token", "second-token"]:
        write_token(str(out), Token(value, "acc"))
        assert out.read_text() == value
        assert mode(out) == 0o400
    assert [p.name for p in tmp_path.iterdir()] == ["token"], "temp file left"


def test_mode_is_0400_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o777)
    try:
        write_token(str(tmp_path / "t"), Token("v", "acc"))
    finally:
        os.umask(old)
    assert mode(tmp_path / "t") == 0o400


def test_the_rename_is_the_only_way_the_target_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "token"
    write_token(str(out), Token("old-token", "acc"))
    seen = {}
    real_rename = os.rename

    def rename(src: str, dst: str) -> None:
        # Just before the swap: the new file is complete and private, the old one untouched.
        seen["tmp_mode"] = mode(Path(src))
        seen["tmp_text"] = Path(src).read_text()
        seen["target_text"] = Path(dst).read_text()
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    write_token(str(out), Token("new-token", "acc"))
    assert seen == {"tmp_mode": 0o400, "tmp_text": "new-token", "target_text": "old-token"}
    assert out.read_text() == "new-token"


def test_a_failed_write_leaves_no_temp_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "token"

    def rename(src: str, dst: str) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(PermissionError):
        write_token(str(out), Token("v", "acc"))
    assert list(tmp_path.iterdir()) == []


def test_a_missing_directory_is_found_before_unwrapping(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        check_writable(str(tmp_path / "missing" / "token"))


def test_temp_file_is_exclusive_and_a_leftover_is_replaced(tmp_path: Path) -> None:
    out = tmp_path / "token"
    tmp = Path(temp_path(str(out)))
    assert tmp.parent == tmp_path and tmp.name == f".token.tmp-{os.getpid()}"
    # A crashed run's leftover (even a symlink planted there) is removed, never followed.
    victim = tmp_path / "victim"
    victim.write_text("untouched")
    tmp.symlink_to(victim)
    write_token(str(out), Token("v", "acc"))
    assert victim.read_text() == "untouched"
    assert out.read_text() == "v" and not tmp.exists()
    # A leftover regular file is replaced by a new one, not written through.
    existing = tmp_path / "existing"
    existing.write_text("x")
    os.link(existing, tmp_path / "hardlink")
    write_new_private(str(existing), b"y")
    assert existing.read_text() == "y" and mode(existing) == 0o400
    assert (tmp_path / "hardlink").read_text() == "x"
