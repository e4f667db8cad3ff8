"""inpaintd's wire protocol and client library (pyzmq + msgpack only).

See PROTOCOL.md beside this file for the specification.
"""

from .client import Client, DaemonUnavailable, Job, Layer
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
from .wire import Message

__all__ = [
    "Client", "DaemonUnavailable", "Job", "Layer", "find_key", "resolve_endpoint", "DEFAULT_ENDPOINT",
    "LIMITS", "PROTOCOL_VERSION", "Code", "ImageDesc", "JobOptions", "ProtocolError", "Type", "Message",
    "Rect",
]
