"""Checks of paths run before any work starts, so that a bad output path ends a command at once
instead of after hours of training (the MLflow store's check: diffinject.tracking.store_check).

They write nothing that looks like a result: a folder that is missing is created (the command
would create it anyway) and probed with a hidden file that is removed at once.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

from diffinject.core.errors import ConfigError

PROBE_PREFIX = ".diffinject-write-probe-"


def _write_probe(folder: Path) -> None:
    """Write (and sync) a small hidden file in `folder` and remove it: OSError if that fails."""
    probe = folder / f"{PROBE_PREFIX}{os.getpid()}"
    try:
        with open(probe, "wb") as handle:
            handle.write(b"probe")
            handle.flush()
            os.fsync(handle.fileno())
    finally:
        with contextlib.suppress(FileNotFoundError):
            probe.unlink()


def os_reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def writable_folder_error(folder: Path) -> str | None:
    """Why `folder` cannot be written (created if absent), or None."""
    if folder.exists() and not folder.is_dir():
        return "a file, not a folder"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _write_probe(folder)
    except OSError as exc:
        return f"not writable: {os_reason(exc)}"
    return None


def check_output_dir(path: str | os.PathLike, what: str) -> None:
    """`path` is a folder this process can write, created if absent. URIs (s3://...) are
    left to their first write."""
    if "://" in str(path):
        return
    problem = writable_folder_error(Path(path))
    if problem:
        raise ConfigError(f"{what} {path} is {problem}")


def check_output_file(path: str | os.PathLike, what: str) -> None:
    """`path` can be written as a file: not a folder, in a writable folder (created if absent)."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{what} {path} is a folder; expected a file name")
    problem = writable_folder_error(path.parent)
    if problem:
        raise ConfigError(f"{what} {path}: its folder {path.parent} is {problem}")


def check_data_root(path: str | os.PathLike) -> None:
    """--data-root is a folder or absent: a dataset that can be built is built there, and a
    released one may be read-only, so it is not probed for writing."""
    if Path(path).exists() and not Path(path).is_dir():
        raise ConfigError(f"--data-root {path} is a file, not a folder")


def check_data_paths(data) -> None:
    """A DataConfig's folders: data_root (check_data_root), and cache_root, which is written."""
    check_data_root(data.data_root)
    check_output_dir(data.cache_root, "--cache-root")


def check_input_dir(path: str | os.PathLike, what: str, files: tuple[str, ...], made_by: str) -> None:
    """`path` is a folder holding `files` (the output of `made_by`)."""
    path = Path(path)
    if not path.is_dir():
        raise ConfigError(f"{what} {path}: {'not a folder' if path.exists() else 'no such folder'}; "
                          f"expected the output of {made_by}")
    missing = [name for name in files if not (path / name).is_file()]
    if missing:
        raise ConfigError(f"{what} {path} has no {', '.join(missing)}; expected the output of {made_by}")
