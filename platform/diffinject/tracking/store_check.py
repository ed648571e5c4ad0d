"""The check that the MLflow tracking store can be used, run before any work starts, so that an
unreachable store ends a command at once instead of after minutes of silent retries."""
from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from urllib.parse import urlparse

from diffinject.core.errors import ConfigError
from diffinject.core.preflight import os_reason, writable_folder_error, check_output_dir

SQLITE_HEADER = b"SQLite format 3\x00"
DATABASE_PORTS = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}
UNCHECKED_SCHEMES = ("databricks", "databricks-uc", "uc")  # answered by their own SDKs
TRACKING_TIMEOUT_S = 5.0


def check_tracking_store(uri: str | None = None, timeout_s: float = TRACKING_TIMEOUT_S) -> str:
    """The MLflow tracking store at `uri` (default: tracking.tracking_uri()) can be used: a
    SQLite file that is a database (or absent) in a writable folder, a writable folder (file
    store), a server that answers one request within `timeout_s` (no retries), or a database
    host that accepts a connection. Returns the URI."""
    from diffinject.tracking.client import tracking_uri

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
    problem = writable_folder_error(path.parent)  # SQLite writes its journal beside the file
    if problem:
        raise ConfigError(f"{what}: its folder {path.parent} is {problem}")
    if path.exists():
        try:
            with open(path, "rb") as handle:
                header = handle.read(len(SQLITE_HEADER))
        except OSError as exc:
            raise ConfigError(f"{what}: unreadable: {os_reason(exc)}") from None
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
