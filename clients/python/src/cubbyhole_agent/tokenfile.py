"""Writing the token to a file nobody else can read, not even for a moment (``write_token`` in
``src/agent/unwrap.rs``): a new 0400 file next to the target, created exclusively, synced,
then renamed over it."""

from __future__ import annotations

import os

from .secret import Token

#: Mode of the token file.
MODE = 0o400


def temp_path(out: str) -> str:
    """``<dir>/.<name>.tmp-<pid>`` next to ``out``, so the rename stays on one file system."""
    directory, name = os.path.split(out)
    return os.path.join(directory, f".{name or 'token'}.tmp-{os.getpid()}")


def write_new_private(path: str, data: bytes) -> None:
    """Creates ``path`` (which must not exist: a leftover of a crashed run is removed first)
    with mode 0400, writes ``data`` and syncs it."""
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags, MODE)
    try:
        os.fchmod(fd, MODE)  # whatever the umask
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def check_writable(out: str) -> None:
    """Creates and removes the temp file :func:`write_token` will use: finds an unwritable
    target directory while the wrap is still unused. Raises ``OSError``."""
    tmp = temp_path(out)
    write_new_private(tmp, b"")
    os.remove(tmp)


def write_token(out: str, token: Token) -> None:
    """Writes the token's value to ``out`` atomically with mode 0400 (an existing file is
    replaced). Raises ``OSError``; no temp file is left behind."""
    tmp = temp_path(out)
    try:
        write_new_private(tmp, token.reveal().encode("utf-8"))
        os.rename(tmp, out)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise
