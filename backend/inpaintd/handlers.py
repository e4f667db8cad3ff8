"""The daemon's answers: one function per request type (PROTOCOL.md section 5).

Each takes the daemon, the peer's ZeroMQ identity and the verified request, and returns
the reply.  A refusal is raised as ProtocolError (an engine's or the registry's
EngineError is turned into one here), and the server sends it as an `error` reply.  What a
request changes in the queue is the daemon's business (`enqueue`, `cancel`, `reattach`);
a handler reads and checks the message and builds the reply.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from inpaintd_protocol import wire
from inpaintd_protocol.bodies import Accepted, CancelReply
from inpaintd_protocol.messages import PROTOCOL_VERSION, REQUEST_TYPES, SCHEDULERS, Code, ProtocolError, Type
from inpaintd_protocol.wire import Message

from . import __version__
from .engines.base import EngineError
from .runner import variant_seeds
from .validation import admit

if TYPE_CHECKING:
    from .daemon import Daemon

log = logging.getLogger("inpaintd")
Handler = Callable[["Daemon", bytes, Message], Message]

CAPABILITIES = ["progress", "cancel", "fetch", "soft_mask", "variants", "rgba", "stride", "hmac-sha256",
                "queue_position", "color_match", "outpaint"]


def dispatch(d: Daemon, identity: bytes, msg: Message) -> Message:
    handler = HANDLERS.get(msg.type)
    if handler is None:
        raise ProtocolError(
            Code.UNKNOWN_TYPE, f"unknown message type '{msg.type}'; requests are: {', '.join(sorted(REQUEST_TYPES))}",
        )
    try:
        return handler(d, identity, msg)
    except EngineError as exc:
        raise ProtocolError(exc.code, exc.message, dict(exc.details)) from None


def reply(msg: Message, type: Type, body: dict[str, Any], job: str | None = None) -> Message:
    return Message(type=type, body=body, re=msg.id, job=job)


def hello(d: Daemon, identity: bytes, msg: Message) -> Message:
    models = d.registry.list()
    return reply(msg, Type.HELLO_REPLY, {
        "daemon_version": __version__,
        "protocol_version": PROTOCOL_VERSION,
        "instance": d.instance,
        "engines": sorted({m.engine for m in models}),
        "models": [m.to_wire() for m in models],
        "default_model": d.registry.default_model_id,
        "loaded_model": d.loaded_model,
        "warm_models": warm_models(d),
        "device": d.device,
        "loading": d.loading,
        "schedulers": list(SCHEDULERS),
        "capabilities": CAPABILITIES,
        "limits": d.limits.to_wire(),
        "notices": [*d.registry.notices, *d.registry.engine_notes],
        "auth": bool(d.server.key),
        "curve": bool(d.server.curve_public_key),
        "results_ttl": d.results.ttl,
    })


def ping(d: Daemon, identity: bytes, msg: Message) -> Message:
    return reply(msg, Type.PONG, {"instance": d.instance, "time": time.time(), "uptime": time.time() - d.started})


def list_models(d: Daemon, identity: bytes, msg: Message) -> Message:
    return reply(msg, Type.MODELS, {
        "models": [m.to_wire() for m in d.registry.list()],
        "default": d.registry.default_model_id,
        "loaded": d.loaded_model,
    })


def submit(d: Daemon, identity: bytes, msg: Message) -> Message:
    if d.stopping:
        raise ProtocolError(Code.SHUTTING_DOWN, "the daemon is shutting down and takes no new jobs")
    request, model_id = admit(msg, d.registry, d.limits)  # fields, pixels, then the model
    seeds = variant_seeds(request.options.seed, request.options.variants)
    job = d.enqueue(identity, request, model_id, seeds)
    return wire.message(Accepted(job.id, job.position, seeds, model_id, d.instance), re=msg.id)


def cancel(d: Daemon, identity: bytes, msg: Message) -> Message:
    job_id = job_field(msg)
    outcome = d.cancel(job_id)
    if outcome is None:
        raise ProtocolError(Code.NOT_FOUND, f"no job '{job_id}' is queued, running or recently finished")
    return wire.message(CancelReply(job_id, outcome), re=msg.id)


def status(d: Daemon, identity: bytes, msg: Message) -> Message:
    return reply(msg, Type.STATUS_REPLY, {
        "instance": d.instance,
        "daemon_version": __version__,
        "uptime": time.time() - d.started,
        "device": d.device,
        "default_model": d.registry.default_model_id,
        "loaded_model": d.loaded_model,
        "warm_models": warm_models(d),
        "loading": d.loading,
        "running": [j.summary() for j in d.running.values()],
        "queued": [j.summary() for j in d.queue.order()],
        "stats": dict(d.stats),
        "results_kept": len(d.results),
        "results_kept_bytes": d.results.nbytes,
        "rss_bytes": rss_bytes(),
    })


def warm_models(d: Daemon) -> list[dict[str, Any]]:
    """The registry's warm diffusion engines (PROTOCOL.md 5.1 `warm_models`); empty where the
    models live elsewhere (Ray replicas) or the registry keeps no such list."""
    warm = getattr(d.registry, "warm", None)
    return list(warm()) if callable(warm) else []


def fetch(d: Daemon, identity: bytes, msg: Message) -> Message:
    job_id = job_field(msg)
    done = d.results.get(job_id)
    if done:
        again = done.message
        return Message(type=again.type, body=again.body, buffers=again.buffers, job=job_id, re=msg.id)
    live = d.reattach(job_id, identity)
    if live is None:
        raise ProtocolError(Code.NOT_FOUND, f"no job '{job_id}' is queued, running or kept (results are kept {d.results.ttl:.0f} s)")
    return wire.message(live, re=msg.id)


def shutdown(d: Daemon, identity: bytes, msg: Message) -> Message:
    log.info("shutdown requested by a client")
    d.stop()
    return reply(msg, Type.SHUTDOWN_REPLY, {
        "state": "shutting_down",
        "policy": "the running job is cancelled at its next step; queued jobs are cancelled; their clients get 'cancelled'",
    })


HANDLERS: dict[str, Handler] = {
    Type.HELLO: hello,
    Type.PING: ping,
    Type.LIST_MODELS: list_models,
    Type.SUBMIT: submit,
    Type.CANCEL: cancel,
    Type.STATUS: status,
    Type.FETCH: fetch,
    Type.SHUTDOWN: shutdown,
}


def job_field(msg: Message) -> str:
    job_id = msg.body.get("job", msg.job)
    if job_id is None:
        raise ProtocolError(Code.MISSING_FIELD, f"'{msg.type}' needs the field 'job' (a job id)", {"field": "job"})
    if not isinstance(job_id, str):
        raise ProtocolError(Code.BAD_FIELD_TYPE, f"'job' must be a string, got {type(job_id).__name__}", {"field": "job"})
    return job_id


def rss_bytes() -> int:
    """This process's resident memory, from /proc (0 where there is none)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0
