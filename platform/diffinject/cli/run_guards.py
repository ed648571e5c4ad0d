"""What the experiment scripts share around a long run: SIGTERM handled as Ctrl-C, and one sweep
at a time per Tune state."""
from __future__ import annotations

import contextlib
import fcntl
import signal
from pathlib import Path

from diffinject.core.errors import ConfigError


def sigterm_as_interrupt() -> None:
    """Handle SIGTERM as Ctrl-C: a KeyboardInterrupt in the main thread, so a terminated driver
    ends its MLflow runs KILLED (Tracker.ending) and says how to continue."""
    def handler(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


@contextlib.contextmanager
def exclusive(lock_path: Path, holder: str):
    """Hold a non-blocking fcntl lock on `lock_path` for the block; ConfigError at once when
    another process holds it (two sweeps on one Tune state corrupt each other)."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"another {holder} holds {lock_path} (it is running now); wait for it to finish, "
                              f"or give --experiment NAME to run a separate one") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
