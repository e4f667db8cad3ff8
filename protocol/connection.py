"""Where a client finds the daemon, and the key to talk to it.

Every client (CLI, Krita, GIMP, third-party) uses the same rule for the address: an
explicit endpoint, else the INPAINTD_ENDPOINT environment variable, else the default.
The daemon writes a connection file (endpoint + signing key, mode 0600) per endpoint in
the user's runtime folder; clients read the key from there by themselves, the way
Jupyter clients find a kernel's connection file.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import sys
from pathlib import Path
from typing import Any

from .messages import DEFAULT_ENDPOINT, ENDPOINT_ENV

CONNECTION_DIR_ENV = "INPAINTD_RUNTIME_DIR"
_ENDPOINT_RE = re.compile(r"^(tcp://[^\s:]+:\d{1,5}|tcp://\[[0-9a-fA-F:.]+\]:\d{1,5}|ipc://\S+|inproc://\S+)$")


def resolve_endpoint(explicit: str | None = None) -> str:
    endpoint = explicit or os.environ.get(ENDPOINT_ENV) or DEFAULT_ENDPOINT
    if not _ENDPOINT_RE.match(endpoint):
        raise ValueError(
            f"'{endpoint}' is not a ZeroMQ endpoint; use tcp://HOST:PORT or ipc:///path (e.g. {DEFAULT_ENDPOINT})"
        )
    return endpoint


def runtime_dir() -> Path:
    """The per-user folder for connection files: private to the user, as XDG intends."""
    if os.environ.get(CONNECTION_DIR_ENV):
        return Path(os.environ[CONNECTION_DIR_ENV])
    if sys.platform == "win32":
        return Path(os.environ.get("APPDATA", Path.home())) / "inpaintd"
    if os.environ.get("XDG_RUNTIME_DIR"):
        return Path(os.environ["XDG_RUNTIME_DIR"]) / "inpaintd"
    return Path.home() / ".config" / "inpaintd" / "run"


def connection_file(endpoint: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", endpoint.split("://", 1)[-1]).strip("_")
    return runtime_dir() / f"connection-{safe}.json"


def new_key() -> bytes:
    return secrets.token_hex(32).encode("ascii")


def write_connection_file(endpoint: str, key: bytes | None, extra: dict[str, Any] | None = None) -> Path:
    path = connection_file(endpoint)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    data = {"endpoint": endpoint, "key": key.decode("ascii") if key else "", "signature_scheme": "hmac-sha256"}
    data.update(extra or {})
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, path)
    return path


def read_connection_file(endpoint: str) -> dict[str, Any] | None:
    path = connection_file(endpoint)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def find_key(endpoint: str) -> bytes | None:
    """The signing key for `endpoint`: INPAINTD_KEY, else the connection file, else none."""
    if os.environ.get("INPAINTD_KEY"):
        return os.environ["INPAINTD_KEY"].encode("ascii")
    data = read_connection_file(endpoint)
    key = data.get("key") if data else None
    return key.encode("ascii") if isinstance(key, str) and key else None
