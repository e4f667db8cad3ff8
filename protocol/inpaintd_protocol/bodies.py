"""Message bodies, built and read in one place by the daemon and every client.

A job's events and the replies a client reads field by field each have a small dataclass
here: `to_body()` gives the map that goes on the wire (PROTOCOL.md sections 5 and 6),
`from_body()` reads one.  Reading is lenient, as a client must be: a missing field takes
its default, and a stage, code or state this version does not know stays a plain string,
so an editor keeps working with a daemon of a later version.  `wire.message(body)` puts a
body into a Message.  Standard library only, like `messages`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from .messages import CANCEL_REASONS, CancelCode, Code, ImageDesc, ProtocolError, Stage, Type, WireEnum
from .rect import Rect

E = TypeVar("E", bound=WireEnum)


def known(kind: type[E], value: Any) -> E | str:
    """`value` as a member of `kind` where it is one, else as the plain string it is."""
    try:
        return kind(value)
    except ValueError:
        return str(value)


class CancelOutcome(WireEnum):
    """`cancel_reply.body.state`: what the cancel did (section 5.5)."""

    CANCELLED = "cancelled"  # it was queued: gone, its `cancelled` event is out
    CANCELLING = "cancelling"  # it runs: it stops at its next step, then `cancelled` follows
    FINISHED = "finished"  # it had already ended; nothing changed


@dataclass
class Progress:
    """A `progress` event, or the reply to a `fetch` of a live job (section 6.1)."""

    TYPE: ClassVar[Type] = Type.PROGRESS
    job: str
    stage: Stage | str
    step: int = 0
    total_steps: int = 0
    elapsed: float = 0.0
    position: int | None = None  # only while queued: jobs that start before this one
    #: Training jobs only (stage `training`): the step's loss, and the seconds still to go.
    loss: float | None = None
    remaining: float | None = None

    def to_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"job": self.job, "stage": self.stage, "step": self.step, "total_steps": self.total_steps}
        if self.position is not None:
            body["position"] = self.position
        body["elapsed"] = self.elapsed
        if self.loss is not None:
            body["loss"] = self.loss
        if self.remaining is not None:
            body["remaining"] = self.remaining
        return body

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> Progress:
        position, loss, remaining = body.get("position"), body.get("loss"), body.get("remaining")
        return cls(
            job=str(body.get("job", "")), stage=known(Stage, body.get("stage", "")), step=int(body.get("step", 0)),
            total_steps=int(body.get("total_steps", 0)), elapsed=float(body.get("elapsed", 0.0)),
            position=None if position is None else int(position),
            loss=None if loss is None else float(loss), remaining=None if remaining is None else float(remaining),
        )


@dataclass
class Variant:
    """One layer of a result: where it goes, its seed, and its pixels' descriptor."""

    index: int
    seed: int
    x: int
    y: int
    image: ImageDesc

    def to_body(self) -> dict[str, Any]:
        return {"index": self.index, "seed": self.seed, "x": self.x, "y": self.y, "image": self.image.to_wire()}

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> Variant:
        image = body["image"]
        return cls(
            index=body["index"], seed=body["seed"], x=body["x"], y=body["y"],
            image=ImageDesc(image["frame"], image["width"], image["height"], image.get("channels", 4), image.get("stride", 0)),
        )


@dataclass
class Result:
    """A `result` event (section 6.2); the pixels travel in buffer frames, variant i in frame i + 1."""

    TYPE: ClassVar[Type] = Type.RESULT
    job: str
    model: str
    engine: str
    device: str
    variants: list[Variant]
    region: Rect
    processing_size: tuple[int, int]
    seq: int
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    #: A `train` job's outcome (no variants): {name, path, steps, final_loss}; None otherwise.
    trained: dict[str, Any] | None = None

    def to_body(self) -> dict[str, Any]:
        r = self.region
        body = {
            "job": self.job, "model": self.model, "engine": self.engine, "device": self.device,
            "variants": [v.to_body() for v in self.variants],
            "region": {"x": r.x, "y": r.y, "width": r.width, "height": r.height},
            "processing_size": list(self.processing_size), "seq": self.seq, "notes": list(self.notes),
            "timings": dict(self.timings),
        }
        if self.trained is not None:
            body["trained"] = dict(self.trained)
        return body

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> Result:
        r = body.get("region") or {}
        size = body.get("processing_size") or (0, 0)
        return cls(
            job=str(body.get("job", "")), model=str(body.get("model", "")), engine=str(body.get("engine", "")),
            device=str(body.get("device", "")), variants=[Variant.from_body(v) for v in body.get("variants", [])],
            region=Rect(r.get("x", 0), r.get("y", 0), r.get("width", 0), r.get("height", 0)),
            processing_size=(size[0], size[1]), seq=int(body.get("seq", 0)),
            notes=[str(n) for n in body.get("notes") or []], timings=dict(body.get("timings") or {}),
            trained=dict(body["trained"]) if isinstance(body.get("trained"), dict) else None,
        )


@dataclass
class Cancelled:
    """A `cancelled` event (section 6.3): the code to compare, the reason to show."""

    TYPE: ClassVar[Type] = Type.CANCELLED
    job: str
    code: CancelCode | str
    reason: str

    @classmethod
    def because(cls, job: str, code: CancelCode) -> Cancelled:
        """The event the daemon sends for `code`, with the documented reason."""
        return cls(job, code, CANCEL_REASONS[code])

    def to_body(self) -> dict[str, Any]:
        return {"job": self.job, "code": self.code, "reason": self.reason}

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> Cancelled:
        return cls(str(body.get("job", "")), known(CancelCode, body.get("code", "")), str(body.get("reason", "")))


@dataclass
class Error:
    """An `error` (section 5.9): a request's reply, a job's terminal event (with `job`), or both."""

    TYPE: ClassVar[Type] = Type.ERROR
    code: Code | str
    message: str
    details: dict[str, Any] = field(default_factory=dict)
    job: str | None = None

    def to_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.job is not None:
            body["job"] = self.job  # as in progress, result and cancelled bodies
        if self.details:
            body["details"] = self.details
        return body

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> Error:
        job = body.get("job")
        return cls(known(Code, body.get("code", Code.INTERNAL)), str(body.get("message", "")),
                   dict(body.get("details", {}) or {}), None if job is None else str(job))

    def exception(self) -> ProtocolError:
        return ProtocolError(self.code, self.message, dict(self.details))


@dataclass
class Accepted:
    """`accepted`, the reply to a `submit` (section 5.4)."""

    TYPE: ClassVar[Type] = Type.ACCEPTED
    job: str
    position: int
    seeds: list[int]
    model: str
    instance: str

    def to_body(self) -> dict[str, Any]:
        return {"job": self.job, "position": self.position, "seeds": list(self.seeds), "model": self.model, "instance": self.instance}

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> Accepted:
        return cls(str(body.get("job", "")), body.get("position", 0), list(body.get("seeds", [])),
                   str(body.get("model", "")), str(body.get("instance", "")))


@dataclass
class CancelReply:
    """`cancel_reply`, the reply to a `cancel` (section 5.5)."""

    TYPE: ClassVar[Type] = Type.CANCEL_REPLY
    job: str
    state: CancelOutcome | str

    def to_body(self) -> dict[str, Any]:
        return {"job": self.job, "state": self.state}

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> CancelReply:
        return cls(str(body.get("job", "")), known(CancelOutcome, body.get("state", "")))


#: The bodies `wire.message` can carry.
Body = Progress | Result | Cancelled | Error | Accepted | CancelReply
