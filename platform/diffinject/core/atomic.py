"""Write-to-temporary-then-rename helpers, so nothing half-written ever looks complete."""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Iterator

from diffinject.core.errors import ConfigError


def _sibling_prefix(final: Path, kind: str) -> str:
    """Name prefix of `final`'s temporary siblings made on this host: `.NAME.KIND-HOST-`,
    followed by the pid of the process that made them."""
    return f".{final.name}.{kind}-{socket.gethostname()}-"


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_siblings(final: Path) -> None:
    """Remove the temporary siblings of `final` that a killed atomic_dir left: only ones made
    on this host by a process that is gone (a live one may be a concurrent writer)."""
    final = Path(final)
    if not final.parent.is_dir():
        return
    prefixes = [_sibling_prefix(final, kind) for kind in ("tmp", "old")]
    for sibling in final.parent.iterdir():
        prefix = next((p for p in prefixes if sibling.name.startswith(p)), None)
        if prefix is None:
            continue
        pid = sibling.name[len(prefix):].split("-", 1)[0]
        if pid.isdecimal() and not process_alive(int(pid)):
            shutil.rmtree(sibling, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces `final` in one rename.

    On an exception the temporary directory is removed and `final` is left as it was. The
    temporary name holds the host and pid, so that what a killed process left is removed by
    the next writer (`remove_stale_siblings`).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_siblings(final)
    tmp = Path(tempfile.mkdtemp(prefix=f"{_sibling_prefix(final, 'tmp')}{os.getpid()}-", dir=final.parent))
    tmp.chmod(0o755)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        old = Path(tempfile.mkdtemp(prefix=f"{_sibling_prefix(final, 'old')}{os.getpid()}-", dir=final.parent))
        final.rename(old / final.name)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(final)


@contextlib.contextmanager
def atomic_file(final: Path, mode: str = "w") -> Iterator:
    """Open a temporary sibling of `final` for writing; rename it into place on success."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.tmp-", dir=final.parent)
    os.chmod(tmp, 0o644)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: Path, payload: dict) -> None:
    with atomic_file(path) as handle:
        json.dump(payload, handle, indent=2, sort_keys=True)


def read_json(path: Path) -> dict | None:
    """A JSON object written by write_json, or None when the file is missing, unreadable or
    not an object (e.g. truncated by a full disk or by hand)."""
    try:
        payload = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return payload if isinstance(payload, dict) else None


@contextlib.contextmanager
def file_lock(path: Path):
    """An exclusive fcntl lock on `path` (held per open file, so threads exclude each other too)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ConfigError(f"{path.parent} is not a folder (a file is in the way); expected a folder "
                          f"to hold the lock {path.name}") from None
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
