"""Where a client finds the daemon, and the key to talk to it.

Every client (CLI, Krita, GIMP, third-party) uses the same rule for the address: an
explicit endpoint, else the INPAINTD_ENDPOINT environment variable, else the default.
The daemon writes a connection file (endpoint + signing key, mode 0600) per endpoint in
the user's runtime folder; clients read the key from there by themselves, the way
Jupyter clients find a kernel's connection file.  A daemon started with `--curve` also
puts its CURVE public key there.  For a daemon on another machine, copy its connection
file over and point INPAINTD_CONNECTION_FILE at the copy.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import secrets
import sys
from pathlib import Path
from typing import Any

from .messages import DEFAULT_ENDPOINT, ENDPOINT_ENV

CONNECTION_DIR_ENV = "INPAINTD_RUNTIME_DIR"
CONNECTION_FILE_ENV = "INPAINTD_CONNECTION_FILE"
KEY_ENV = "INPAINTD_KEY"
_ENDPOINT_RE = re.compile(r"(tcp://[^\s:]+:(?P<port>\d{1,5})|tcp://\[[0-9a-fA-F:.]+\]:(?P<port6>\d{1,5})|ipc://\S+|inproc://\S+)")


def _valid_endpoint(endpoint: str) -> bool:
    match = _ENDPOINT_RE.fullmatch(endpoint)  # fullmatch: no trailing newline slips through
    if not match:
        return False
    port = match.group("port") or match.group("port6")
    return port is None or 0 < int(port) <= 65535


def resolve_endpoint(explicit: str | None = None, *, use_connection_file: bool = True) -> str:
    """explicit, else $INPAINTD_ENDPOINT, else the endpoint in $INPAINTD_CONNECTION_FILE, else the default.

    The daemon's --bind passes use_connection_file=False: a connection file copied from a
    remote daemon names where to connect, never where to listen."""
    endpoint = explicit or os.environ.get(ENDPOINT_ENV)
    if not endpoint and use_connection_file and os.environ.get(CONNECTION_FILE_ENV):
        data = _read_json(Path(os.environ[CONNECTION_FILE_ENV]))
        endpoint = data.get("endpoint") if data and isinstance(data.get("endpoint"), str) else None
    endpoint = endpoint or DEFAULT_ENDPOINT
    if not _valid_endpoint(endpoint):
        raise ValueError(
            f"'{endpoint}' is not a ZeroMQ endpoint; use tcp://HOST:PORT or ipc:///path (e.g. {DEFAULT_ENDPOINT})"
        )
    return endpoint


def is_loopback(endpoint: str) -> bool:
    """True when nothing outside this machine can reach `endpoint`."""
    if not endpoint.startswith("tcp://"):
        return True  # ipc:// and inproc:// never leave the machine
    host = endpoint[len("tcp://"):].rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host or interface name, or "*": reachable from elsewhere


def runtime_dir() -> Path:
    """The per-user folder for connection files: private to the user, as XDG intends."""
    if os.environ.get(CONNECTION_DIR_ENV):
        return Path(os.environ[CONNECTION_DIR_ENV])
    if sys.platform == "win32":
        return Path(os.environ.get("APPDATA") or Path.home()) / "inpaintd"  # empty counts as unset
    if os.environ.get("XDG_RUNTIME_DIR"):
        return Path(os.environ["XDG_RUNTIME_DIR"]) / "inpaintd"
    return Path.home() / ".config" / "inpaintd" / "run"


def connection_file(endpoint: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", endpoint.split("://", 1)[-1]).strip("_")
    return runtime_dir() / f"connection-{safe}.json"


def new_key() -> bytes:
    return secrets.token_hex(32).encode("ascii")


def write_connection_file(endpoint: str, key: bytes | None, extra: dict[str, Any] | None = None) -> Path:
    """Write the file atomically with mode 0600 in a 0700 folder: the key is a password."""
    path = connection_file(endpoint)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if sys.platform != "win32":
        _make_private(path.parent)
    data = {"endpoint": endpoint, "key": key.decode("ascii") if key else "", "signature_scheme": "hmac-sha256"}
    data.update(extra or {})
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    if hasattr(os, "fchmod"):
        os.fchmod(fd, 0o600)  # the mode above applies only to a new file, not a leftover one
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, path)
    return path


def _make_private(folder: Path) -> None:
    """Make the runtime folder 0700 if others may use it: only a folder of our own.

    A shared folder (sticky, like /tmp), one of another user, or the home folder itself is
    never changed: the key is not written there either, and the error says what to do."""
    st = folder.stat()
    if not st.st_mode & 0o077:
        return
    shared = bool(st.st_mode & 0o1000) or st.st_uid != os.getuid() or folder.resolve() == Path.home().resolve()
    if shared:
        raise PermissionError(
            f"the runtime folder {folder} is open to other users and is not inpaintd's own (shared, "
            f"another user's, or the home folder), so the signing key is not written there; set "
            f"{CONNECTION_DIR_ENV} to a folder of its own (it is created with mode 0700)"
        )
    os.chmod(folder, 0o700)  # our own folder; others must not list or read it


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_connection_file(endpoint: str) -> dict[str, Any] | None:
    """The connection file for `endpoint`: $INPAINTD_CONNECTION_FILE if set, else the one
    the daemon wrote in the runtime folder (localhost and 127.0.0.1 are the same host)."""
    if os.environ.get(CONNECTION_FILE_ENV):
        return _read_json(Path(os.environ[CONNECTION_FILE_ENV]))
    data = _read_json(connection_file(endpoint))
    if data is None and "://localhost:" in endpoint:
        data = _read_json(connection_file(endpoint.replace("://localhost:", "://127.0.0.1:")))
    return data


def find_key(endpoint: str) -> bytes | None:
    """The signing key for `endpoint`: INPAINTD_KEY, else the connection file, else none."""
    if os.environ.get(KEY_ENV):
        return os.environ[KEY_ENV].encode("ascii")
    data = read_connection_file(endpoint)
    key = data.get("key") if data else None
    return key.encode("ascii") if isinstance(key, str) and key else None


def find_curve_server_key(endpoint: str) -> bytes | None:
    """The daemon's CURVE public key (Z85) from the connection file, if it uses CURVE."""
    data = read_connection_file(endpoint)
    value = data.get("curve_server_key") if data else None
    return value.encode("ascii") if isinstance(value, str) and value else None
