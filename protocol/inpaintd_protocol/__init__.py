"""inpaintd's wire protocol and client library (pyzmq + msgpack only).

The specification is protocol/PROTOCOL.md, beside this package.

The names that need pyzmq or msgpack (the client, the wire format) load on first use, so
the standard-library parts (`inpaintd_protocol.rect`, `inpaintd_protocol.messages`, `inpaintd_protocol.connection`)
import in an editor's Python that lacks them, and a plugin can still load and say what
to install.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .connection import find_key, resolve_endpoint
from .messages import (
    DEFAULT_ENDPOINT,
    LIMITS,
    PROTOCOL_VERSION,
    Code,
    ImageDesc,
    JobOptions,
    ProtocolError,
    Type,
)
from .rect import Rect

if TYPE_CHECKING:
    from .client import Client, DaemonUnavailable, Job, Layer
    from .wire import Message

_LAZY = {"Client": "client", "DaemonUnavailable": "client", "Job": "client", "Layer": "client", "Message": "wire"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Client", "DaemonUnavailable", "Job", "Layer", "find_key", "resolve_endpoint", "DEFAULT_ENDPOINT",
    "LIMITS", "PROTOCOL_VERSION", "Code", "ImageDesc", "JobOptions", "ProtocolError", "Type", "Message",
    "Rect",
]
