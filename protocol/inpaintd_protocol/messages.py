"""Names and numbers of the inpaintd protocol, shared by the daemon and every client.

This module is the machine-readable half of PROTOCOL.md: message types, error codes,
limits and defaults.  It imports nothing beyond the standard library so that it loads
inside Krita's and GIMP's own Python.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

PROTOCOL_VERSION = 1
DEFAULT_PORT = 7415
DEFAULT_ENDPOINT = f"tcp://127.0.0.1:{DEFAULT_PORT}"
ENDPOINT_ENV = "INPAINTD_ENDPOINT"


class Type:
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
    # replies
    HELLO_REPLY = "hello_reply"
    PONG = "pong"
    MODELS = "models"
    ACCEPTED = "accepted"
    CANCEL_REPLY = "cancel_reply"
    STATUS_REPLY = "status_reply"
    SHUTDOWN_REPLY = "shutdown_reply"
    ERROR = "error"
    # job events (daemon -> the client that submitted the job)
    PROGRESS = "progress"
    RESULT = "result"
    CANCELLED = "cancelled"


REQUEST_TYPES = frozenset(
    {Type.HELLO, Type.PING, Type.LIST_MODELS, Type.SUBMIT, Type.CANCEL, Type.STATUS, Type.FETCH, Type.SHUTDOWN}
)
#: Events after which a job sends nothing more.
TERMINAL_EVENTS = frozenset({Type.RESULT, Type.ERROR, Type.CANCELLED})


class Code:
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
    ENGINE_FAILURE = "engine_failure"
    OUT_OF_MEMORY = "out_of_memory"
    SHUTTING_DOWN = "shutting_down"
    INTERNAL = "internal"


class Stage:
    QUEUED = "queued"
    LOADING = "loading"
    PREPARING = "preparing"
    ENCODING = "encoding"
    DENOISING = "denoising"
    DECODING = "decoding"
    COMPOSITING = "compositing"


class CancelCode:
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
    max_message_bytes: int = 2 * 16384 * 8192 * 5 + (1 << 20)  # RGBA image + mask + headers

    def to_wire(self) -> dict[str, int]:
        return dict(self.__dict__)


LIMITS = Limits()

SCHEDULERS = ("default", "ddim", "pndm", "euler", "euler_a", "dpmpp_2m", "lcm")

#: What a diffusion job below strength 1 starts from inside the hole (option `fill`; see
#: PROTOCOL.md section 9.4): auto = keep the picture, classical fill where it is transparent.
FILL_MODES = ("auto", "none", "neutral", "blur", "classical")


@dataclass
class JobOptions:
    """Everything a submit carries besides the pixels.  Defaults give a good result
    when a client sends only image, mask and prompt.

    `steps` 0 and `padding` -1 mean "the engine's / the runner's choice"; `seed` -1
    means "pick one" (the result reports the seeds used); `model` "" means the daemon's
    default model.
    """

    prompt: str = ""
    negative_prompt: str = ""
    seed: int = -1
    variants: int = 1
    steps: int = 0
    guidance_scale: float = 7.5
    strength: float = 1.0
    scheduler: str = "default"
    model: str = ""
    grow: int = 8
    feather: int = 16
    padding: int = -1
    color_match: bool = False
    fill: str = "auto"

    def to_wire(self) -> dict[str, Any]:
        return dict(self.__dict__)


#: name -> (python types accepted, lower bound, upper bound or None); used by the daemon to
#: validate and by clients to build requests.  Bounds are inclusive.
OPTION_RULES: dict[str, tuple[tuple[type, ...], float | None, float | None]] = {
    "prompt": ((str,), None, None),
    "negative_prompt": ((str,), None, None),
    "seed": ((int,), -1, 2**32 - 1),
    "variants": ((int,), 1, LIMITS.max_variants),
    "steps": ((int,), 0, LIMITS.max_steps),
    "guidance_scale": ((int, float), 0.0, 50.0),
    "strength": ((int, float), 0.01, 1.0),
    "scheduler": ((str,), None, None),
    "model": ((str,), None, None),
    "grow": ((int,), 0, LIMITS.max_grow),
    "feather": ((int,), 0, LIMITS.max_feather),
    "padding": ((int,), -1, LIMITS.max_padding),
    "color_match": ((bool,), None, None),
    "fill": ((str,), None, None),
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
