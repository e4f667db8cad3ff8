"""Names and numbers of the inpaintd protocol, shared by the daemon and every client.

This module is the machine-readable half of PROTOCOL.md: message types, error codes,
limits and defaults.  It imports nothing beyond the standard library so that it loads
inside Krita's and GIMP's own Python.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

PROTOCOL_VERSION = 1
DEFAULT_PORT = 7415
DEFAULT_ENDPOINT = f"tcp://127.0.0.1:{DEFAULT_PORT}"
ENDPOINT_ENV = "INPAINTD_ENDPOINT"


class WireEnum(str, Enum):
    """A name the protocol sends as a plain string.

    Members are `str`s: they equal, hash, print, format and msgpack-encode as their value,
    so `Code.NOT_FOUND == "not_found"` and a dict keyed by members is read with plain
    strings from the wire.  (Python 3.11's string enum does the same; editors may run 3.10.)"""

    def __str__(self) -> str:
        return str.__str__(self)

    def __format__(self, spec: str) -> str:
        return str.__format__(str.__str__(self), spec)


class Type(WireEnum):
    """Message types.  Requests go client -> daemon; each gets exactly one reply."""

    # requests
    HELLO = "hello"
    PING = "ping"
    LIST_MODELS = "list_models"
    SUBMIT = "submit"
    CANCEL = "cancel"
    STATUS = "status"
    FETCH = "fetch"
    SHUTDOWN = "shutdown"
    VARY = "vary"
    RERUN = "rerun"
    HISTORY = "history"
    HISTORY_STAR = "history_star"
    STYLES = "styles"
    STYLE_SAVE = "style_save"
    LORAS = "loras"
    TRAIN = "train"
    # replies
    HELLO_REPLY = "hello_reply"
    PONG = "pong"
    MODELS = "models"
    ACCEPTED = "accepted"
    CANCEL_REPLY = "cancel_reply"
    STATUS_REPLY = "status_reply"
    SHUTDOWN_REPLY = "shutdown_reply"
    HISTORY_REPLY = "history_reply"
    HISTORY_ENTRY = "history_entry"
    STYLES_REPLY = "styles_reply"
    STYLE_SAVED = "style_saved"
    LORAS_REPLY = "loras_reply"
    ERROR = "error"
    # job events (daemon -> the client that submitted the job)
    PROGRESS = "progress"
    RESULT = "result"
    CANCELLED = "cancelled"


REQUEST_TYPES = frozenset(
    {Type.HELLO, Type.PING, Type.LIST_MODELS, Type.SUBMIT, Type.CANCEL, Type.STATUS, Type.FETCH, Type.SHUTDOWN,
     Type.VARY, Type.RERUN, Type.HISTORY, Type.HISTORY_STAR, Type.STYLES, Type.STYLE_SAVE, Type.LORAS,
     Type.TRAIN}
)
#: Events after which a job sends nothing more.
TERMINAL_EVENTS = frozenset({Type.RESULT, Type.ERROR, Type.CANCELLED})
#: Every job event (header `job` set, no `re`).
JOB_EVENTS = frozenset({Type.PROGRESS, *TERMINAL_EVENTS})


class Code(WireEnum):
    """Error codes carried in `error` messages (`body.code`)."""

    BAD_FRAME = "bad_frame"  # not a message at all: undecodable header, wrong frame count
    BAD_SIGNATURE = "bad_signature"  # unsigned, wrongly signed or replayed
    VERSION_MISMATCH = "version_mismatch"
    UNKNOWN_TYPE = "unknown_type"
    MISSING_FIELD = "missing_field"
    BAD_FIELD_TYPE = "bad_field_type"
    BAD_VALUE = "bad_value"
    BAD_IMAGE = "bad_image"  # descriptor and pixel bytes disagree
    SIZE_MISMATCH = "size_mismatch"  # image and mask of different sizes
    EMPTY_MASK = "empty_mask"
    TOO_LARGE = "too_large"
    QUEUE_FULL = "queue_full"
    UNKNOWN_MODEL = "unknown_model"
    MODEL_UNAVAILABLE = "model_unavailable"
    MODEL_REFUSED = "model_refused"
    NOT_FOUND = "not_found"  # no such job
    EXPIRED = "expired"  # the job is in the history, its pixels are not kept: send them
    ENGINE_FAILURE = "engine_failure"
    OUT_OF_MEMORY = "out_of_memory"
    SHUTTING_DOWN = "shutting_down"
    INTERNAL = "internal"


class Stage(WireEnum):
    """Where a job is (`progress.body.stage`), in the order a job goes through them."""

    QUEUED = "queued"
    LOADING = "loading"
    PREPARING = "preparing"
    ENCODING = "encoding"
    DENOISING = "denoising"
    DECODING = "decoding"
    COMPOSITING = "compositing"
    TRAINING = "training"  # a `train` job (section 5.14): one step of LoRA training


class JobState(WireEnum):
    """A job's state: `state` in status job summaries (queued, running), and the state a
    client library keeps for each of its jobs (all of them)."""

    SUBMITTING = "submitting"  # client side only: sent, not accepted yet
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"
    LOST = "lost"  # client side only: the daemon went away or forgot the job


#: States a job never leaves.
FINISHED_STATES = frozenset({JobState.DONE, JobState.FAILED, JobState.CANCELLED, JobState.LOST})


class CancelCode(WireEnum):
    """Why a job was cancelled: `body.code` of a `cancelled` event.  Compare these, not the
    text in `body.reason`, which is for people and may be reworded."""

    QUEUED = "queued"  # a client cancelled it before it started
    RUNNING = "running"  # a client cancelled it while it ran
    SHUTDOWN = "shutdown"  # the daemon is shutting down (queued or running)


#: The text the daemon sends in `reason` beside each code.
CANCEL_REASONS = {
    CancelCode.QUEUED: "cancelled while queued",
    CancelCode.RUNNING: "cancelled by a client while running",
    CancelCode.SHUTDOWN: "the daemon is shutting down",
}


@dataclass(frozen=True)
class Limits:
    """Bounds the daemon enforces before doing any work; sent to clients in hello_reply."""

    max_side: int = 16384
    max_pixels: int = 16384 * 8192
    max_variants: int = 8
    max_steps: int = 150
    max_prompt_chars: int = 4000
    max_grow: int = 512
    max_feather: int = 512
    max_padding: int = 4096
    max_queue_per_client: int = 32
    max_references: int = 4
    max_reference_side: int = 2048
    max_style_chars: int = 64
    #: RGBA image + mask + the references (RGBA at their largest) + headers
    max_message_bytes: int = 2 * 16384 * 8192 * 5 + 4 * 2048 * 2048 * 4 + (1 << 20)

    def to_wire(self) -> dict[str, int]:
        return dict(self.__dict__)


LIMITS = Limits()

# The job options live in options.py (one table for the daemon, the CLI, both editors and
# the spec); their names are re-exported here, where clients have always found them.
from .options import FILL_MODES, OPTIONS, SCHEDULERS, JobOptions  # noqa: E402, F401  (re-exported for clients)

#: name -> (python types accepted, lower bound, upper bound or None) under LIMITS, made from
#: OPTIONS; bounds are inclusive.
OPTION_RULES: dict[str, tuple[tuple[type, ...], float | None, float | None]] = {
    o.name: (o.types, *o.bounds(LIMITS)) for o in OPTIONS
}


@dataclass
class ImageDesc:
    """How raw pixel bytes in a frame are laid out: 8-bit, rows top to bottom,
    channels interleaved (1 = gray/mask, 3 = RGB, 4 = RGBA), `stride` bytes per row."""

    frame: int
    width: int
    height: int
    channels: int
    stride: int = 0

    def __post_init__(self) -> None:
        if not self.stride:
            self.stride = self.width * self.channels

    @property
    def nbytes(self) -> int:
        return self.stride * self.height

    def to_wire(self) -> dict[str, int]:
        return {
            "frame": self.frame,
            "width": self.width,
            "height": self.height,
            "channels": self.channels,
            "stride": self.stride,
        }


@dataclass
class ProtocolError(Exception):
    """An error reply, raised on the client side; also used by the daemon to answer."""

    code: str
    message: str
    details: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"
