"""Checks run before any work starts, so that a bad output path or an unreachable MLflow store
ends a command at once instead of after hours of training (or after minutes of silent retries).

They write nothing that looks like a result: a folder that is missing is created (the command
would create it anyway) and probed with a hidden file that is removed at once.
"""
from __future__ import annotations

import contextlib
import os
import re
import socket
from pathlib import Path
from urllib.parse import urlparse

from .errors import ConfigError

PROBE_PREFIX = ".diffinject-write-probe-"
SQLITE_HEADER = b"SQLite format 3\x00"
DATABASE_PORTS = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}
UNCHECKED_SCHEMES = ("databricks", "databricks-uc", "uc")  # answered by their own SDKs
TRACKING_TIMEOUT_S = 5.0


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


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _writable_folder_error(folder: Path) -> str | None:
    """Why `folder` cannot be written (created if absent), or None."""
    if folder.exists() and not folder.is_dir():
        return "a file, not a folder"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _write_probe(folder)
    except OSError as exc:
        return f"not writable: {_reason(exc)}"
    return None


def check_output_dir(path: str | os.PathLike, what: str) -> None:
    """`path` is a folder this process can write, created if absent. URIs (s3://...) are
    left to their first write."""
    if "://" in str(path):
        return
    problem = _writable_folder_error(Path(path))
    if problem:
        raise ConfigError(f"{what} {path} is {problem}")


def check_output_file(path: str | os.PathLike, what: str) -> None:
    """`path` can be written as a file: not a folder, in a writable folder (created if absent)."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{what} {path} is a folder; expected a file name")
    problem = _writable_folder_error(path.parent)
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


def check_tracking_store(uri: str | None = None, timeout_s: float = TRACKING_TIMEOUT_S) -> str:
    """The MLflow tracking store at `uri` (default: tracking.tracking_uri()) can be used: a
    SQLite file that is a database (or absent) in a writable folder, a writable folder (file
    store), a server that answers one request within `timeout_s` (no retries), or a database
    host that accepts a connection. Returns the URI."""
    from .tracking import tracking_uri

    uri = uri or tracking_uri()
    scheme = urlparse(uri).scheme.split("+")[0].lower()
    if scheme == "sqlite":
        _check_sqlite(uri)
    elif scheme in ("", "file"):
        check_output_dir(urlparse(uri).path if scheme else uri, "MLflow tracking folder")
    elif scheme in ("http", "https"):
        _check_server(uri, timeout_s)
    elif scheme in DATABASE_PORTS:
        _check_database_host(uri, scheme, timeout_s)
    elif scheme not in UNCHECKED_SCHEMES:
        raise ConfigError(f"MLflow tracking URI {uri!r} has an unknown scheme {scheme!r}; expected "
                          f"sqlite:///PATH, a folder, http(s)://HOST:PORT, postgresql://, mysql://, mssql:// "
                          f"or databricks (set MLFLOW_TRACKING_URI)")
    return uri


def _check_sqlite(uri: str) -> None:
    path_text = uri.split("?", 1)[0].removeprefix("sqlite:///")
    if not uri.startswith("sqlite:///") or path_text in ("", ":memory:"):
        return  # SQLAlchemy's in-memory database (sqlite://)
    path = Path(path_text)
    what = f"MLflow tracking database {path}"
    if path.is_dir():
        raise ConfigError(f"{what} is a folder; expected an SQLite file")
    problem = _writable_folder_error(path.parent)  # SQLite writes its journal beside the file
    if problem:
        raise ConfigError(f"{what}: its folder {path.parent} is {problem}")
    if path.exists():
        try:
            with open(path, "rb") as handle:
                header = handle.read(len(SQLITE_HEADER))
        except OSError as exc:
            raise ConfigError(f"{what}: unreadable: {_reason(exc)}") from None
        if header and header != SQLITE_HEADER:
            raise ConfigError(f"{what}: not an SQLite database; give another file, or move this one away")
        if not os.access(path, os.W_OK):
            raise ConfigError(f"{what}: the file is read-only")


def _check_server(uri: str, timeout_s: float) -> None:
    """One GET of the experiment search endpoint, with MLflow's credentials and TLS settings."""
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    try:
        response = http_request(get_default_host_creds(uri), "/api/2.0/mlflow/experiments/search", "GET",
                                max_retries=0, timeout=timeout_s, raise_on_status=False, params={"max_results": 1})
    except Exception as exc:  # requests and MLflow wrap connection errors in several types
        raise ConfigError(f"MLflow tracking server {uri} does not answer ({_connection_reason(exc, timeout_s)}); "
                          f"start it, or set MLFLOW_TRACKING_URI to another store") from None
    if response.status_code in (401, 403):
        raise ConfigError(f"MLflow tracking server {uri} refuses access (HTTP {response.status_code}); set "
                          f"MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD or MLFLOW_TRACKING_TOKEN")
    if response.status_code == 404:
        raise ConfigError(f"{uri} answers, but not as an MLflow tracking server (HTTP 404 for its REST API)")


def _check_database_host(uri: str, scheme: str, timeout_s: float) -> None:
    parsed = urlparse(uri)
    host, port = parsed.hostname or "localhost", parsed.port or DATABASE_PORTS[scheme]
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as exc:
        raise ConfigError(f"MLflow tracking database {host}:{port} ({scheme}) does not answer "
                          f"({_connection_reason(exc, timeout_s)})") from None


def _connection_reason(exc: Exception, timeout_s: float) -> str:
    text = str(exc)
    if isinstance(exc, (socket.timeout, TimeoutError)) or "timed out" in text.lower():
        return f"no answer within {timeout_s:g} s"
    found = re.search(r"\[Errno -?\d+\] ([^\"')]+)", text)
    if found:
        return found.group(1).strip().rstrip(".")
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
