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
from inpaintd_protocol.bodies import Accepted, CancelReply, Result, Variant
from inpaintd_protocol.messages import PROTOCOL_VERSION, REQUEST_TYPES, SCHEDULERS, Code, ImageDesc, ProtocolError, Type
from inpaintd_protocol.options import BY_NAME
from inpaintd_protocol.rect import Rect
from inpaintd_protocol.wire import Message

from . import __version__
from .engines.base import EngineError
from .history import MAX_PAGE, Entry, Expired, History
from .loras import parse_loras_field
from .runner import variant_seeds
from .training import admit_train, parse_train
from .validation import SubmitRequest, admit, admit_request, any_selected, parse_options, parse_pixels, parse_references

if TYPE_CHECKING:
    import numpy as np

    from .daemon import Daemon

log = logging.getLogger("inpaintd")
Handler = Callable[["Daemon", bytes, Message], Message]

CAPABILITIES = ["progress", "cancel", "fetch", "soft_mask", "variants", "rgba", "stride", "hmac-sha256",
                "queue_position", "color_match", "outpaint", "history", "vary", "styles", "loras", "train"]


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
        "history": history_summary(d),
        "vary_strengths": dict(d.vary_strengths),
    })


def history_summary(d: Daemon) -> dict[str, Any] | None:
    """What hello and status say of the history: entries, bytes, the budget (None: not kept)."""
    if d.history is None:
        return None
    return {"kept": len(d.history), "bytes": d.history.nbytes, "max_bytes": d.history.max_bytes}


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
    request, model_id = admit(msg, d.registry, d.limits, d.styles, d.library)  # fields, pixels, style, model, LoRAs
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
        "running": [j.summary() for j in d.running.values()] + ([d.training.summary()] if d.training else []),
        "queued": [j.summary() for j in d.queue.order()] + [j.summary() for j in d.trainings],
        "stats": dict(d.stats),
        "results_kept": len(d.results),
        "results_kept_bytes": d.results.nbytes,
        "rss_bytes": rss_bytes(),
        "history": history_summary(d),
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
        entry = d.history.get(job_id) if d.history is not None else None
        if entry is not None:  # an older job: its result again, from the history
            return _from_history(d, entry, msg)
        raise ProtocolError(Code.NOT_FOUND, f"no job '{job_id}' is queued, running, kept (results are kept "
                                            f"{d.results.ttl:.0f} s) or in the history")
    return wire.message(live, re=msg.id)


def _from_history(d: Daemon, entry: Entry, msg: Message) -> Message:
    """A kept job's `result`, its layers read back from the history's files."""
    layers = _history_call(d, entry.job, lambda h: h.layers(entry.job))
    x, y, w, h = entry.region
    variants = [Variant(v.index, v.seed, x, y, ImageDesc(frame, px.shape[1], px.shape[0], 4))
                for frame, (v, px) in enumerate(layers, start=1)]
    result = Result(entry.job, entry.model, entry.engine, "", variants, Rect(x, y, w, h), (0, 0), 0,
                    [f"from the history: made {time.strftime('%Y-%m-%d %H:%M', time.localtime(entry.created))}"])
    return wire.message(result, re=msg.id, buffers=[px.data.cast("B") for _, px in layers])


# -- the artist's loop: vary, rerun, history, styles (PROTOCOL.md 5.9-5.12) ---------------------


def _history(d: Daemon) -> History:
    if d.history is None:
        raise ProtocolError(Code.EXPIRED, "this daemon keeps no history (started with --history-mb 0): send the "
                                          "pixels to vary (vary with image and mask), or submit again")
    return d.history


def _history_call(d: Daemon, job_id: str, call: Callable[[History], Any]) -> Any:
    """`call` on the history, its misses as protocol errors that say what to do."""
    try:
        return call(_history(d))
    except Expired:
        raise ProtocolError(Code.EXPIRED, f"job '{job_id}' is in the history but its pixels are no longer kept; "
                                          "send them (vary with image and mask) or submit again", {"field": "job"}) from None
    except KeyError:
        raise ProtocolError(Code.NOT_FOUND, f"no job '{job_id}' in the history (evicted, deleted, or never finished "
                                            "with a result)", {"field": "job"}) from None


def _entry(d: Daemon, job_id: str) -> Entry:
    entry = _history(d).get(job_id)
    if entry is None:
        raise ProtocolError(Code.NOT_FOUND, f"no job '{job_id}' in the history (evicted, deleted, or never finished "
                                            "with a result)", {"field": "job"})
    return entry


def _overrides(msg: Message) -> dict[str, Any]:
    """The `options` field of vary and rerun: job options to change (names checked here,
    values by the option table when they are merged)."""
    given = msg.body.get("options", {})
    if not isinstance(given, dict):
        raise ProtocolError(Code.BAD_FIELD_TYPE, f"'options' must be a map of job options, got {type(given).__name__}",
                            {"field": "options"})
    unknown = sorted(str(k) for k in given if k not in BY_NAME)
    if unknown:
        raise ProtocolError(Code.BAD_VALUE, f"'options' has unknown job option(s) {', '.join(unknown)}; job options are "
                                            f"{', '.join(BY_NAME)}", {"field": "options"})
    return dict(given)


def _int(msg: Message, name: str, default: int, low: int, high: int | None = None) -> int:
    value = msg.body.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProtocolError(Code.BAD_FIELD_TYPE, f"'{name}' must be int, got {type(value).__name__}", {"field": name})
    if value < low or (high is not None and value > high):
        raise ProtocolError(Code.BAD_VALUE, f"'{name}' is {value}; allowed range is {low} to {high if high is not None else 'any'}",
                            {"field": name})
    return value


def vary_strength(d: Daemon, msg: Message) -> float:
    """The strength a `vary` asks for: `strength` if given, else its `preset`'s."""
    if "strength" in msg.body:
        value = msg.body["strength"]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.01 <= value <= 1.0:
            raise ProtocolError(Code.BAD_VALUE, f"'strength' is {value!r}; a number from 0.01 to 1", {"field": "strength"})
        return float(value)
    preset = msg.body.get("preset", "subtle")
    if preset not in d.vary_strengths:
        raise ProtocolError(Code.BAD_VALUE, f"'preset' is {preset!r}; one of {', '.join(d.vary_strengths)}", {"field": "preset"})
    return d.vary_strengths[preset]


def vary(d: Daemon, identity: bytes, msg: Message) -> Message:
    """New variants of one variant of a finished job, inside the same mask: Vary Subtle /
    Strong (a strength preset, new seeds) and Remix (`options` changes the prompt or any
    setting).  The pixels come from the history, or from the client (`image`, `mask`, `x`,
    `y`) where the history no longer has them."""
    if d.stopping:
        raise ProtocolError(Code.SHUTTING_DOWN, "the daemon is shutting down and takes no new jobs")
    job_id = job_field(msg)
    index = _int(msg, "variant", 0, 0)
    strength = vary_strength(d, msg)
    overrides = _overrides(msg)
    if "image" in msg.body:  # the client sends the variant's pixels and the mask over them
        image, mask = parse_pixels(msg, d.limits)
        origin = (_int(msg, "x", 0, -(1 << 30)), _int(msg, "y", 0, -(1 << 30)))
        base: dict[str, Any] = {}
        canvas, entry = None, None
    else:
        entry = _entry(d, job_id)
        if index not in [v.index for v in entry.variants]:
            raise ProtocolError(Code.BAD_VALUE, f"job '{job_id}' has variants {[v.index for v in entry.variants]}, "
                                                f"not {index}", {"field": "variant"})
        ((_, image),) = _history_call(d, job_id, lambda h: h.layers(job_id, [index]))
        _, mask = _history_call(d, job_id, lambda h: h.source(job_id))
        origin, canvas, base = (entry.region[0], entry.region[1]), entry.canvas, dict(entry.options)
    options = parse_options({**base, "seed": -1, **overrides, "strength": overrides.get("strength", strength)}, d.limits)
    references, loras = _addons(d, msg, entry)
    request = SubmitRequest(image=image, mask=mask, options=options, references=references, lora_requests=loras)
    return _enqueue_derived(d, identity, msg, request, origin=origin, canvas=canvas, kind="vary", parent=job_id,
                            parent_variant=index)


def rerun(d: Daemon, identity: bytes, msg: Message) -> Message:
    """A finished job again, from the region and mask it started from, with its options and
    seeds (the same pixels) or with `options` changed."""
    if d.stopping:
        raise ProtocolError(Code.SHUTTING_DOWN, "the daemon is shutting down and takes no new jobs")
    job_id = job_field(msg)
    overrides = _overrides(msg)
    entry = _entry(d, job_id)
    image, mask = _history_call(d, job_id, lambda h: h.source(job_id))
    options = parse_options({**entry.options, "seed": entry.seeds[0], "variants": len(entry.seeds), **overrides}, d.limits)
    references, loras = _addons(d, msg, entry)
    request = SubmitRequest(image=image, mask=mask, options=options, references=references, lora_requests=loras)
    return _enqueue_derived(d, identity, msg, request, origin=(entry.region[0], entry.region[1]), canvas=entry.canvas,
                            kind="rerun", parent=job_id)


def _addons(d: Daemon, msg: Message, entry: Entry | None) -> tuple[list[np.ndarray], list[tuple[str, float]]]:
    """The reference images and LoRAs of a job made from another: the body's where it
    gives them (an empty list: none), else those the job it comes from was sent with."""
    if "references" in msg.body:
        references = parse_references(msg, d.limits)
    elif entry is not None and entry.references:
        job = entry.job
        references = _history_call(d, job, lambda h: h.references(job))
    else:
        references = []
    loras = parse_loras_field(msg.body["loras"]) if "loras" in msg.body else list(entry.loras) if entry else []
    return references, loras


def _enqueue_derived(d: Daemon, identity: bytes, msg: Message, request: SubmitRequest, **lineage: Any) -> Message:
    if not any_selected(request.mask):
        raise ProtocolError(Code.EMPTY_MASK, "the mask selects nothing (every value is 0); select the area to vary")
    request, model_id = admit_request(request, d.registry, d.styles, d.library)
    seeds = variant_seeds(request.options.seed, request.options.variants)
    job = d.enqueue(identity, request, model_id, seeds, **lineage)
    return wire.message(Accepted(job.id, job.position, seeds, model_id, d.instance), re=msg.id)


def _entry_wire(entry: Entry, buffers: list[Any]) -> dict[str, Any]:
    """One history entry as the protocol sends it; its thumbnails appended to `buffers`."""
    x, y, w, h = entry.region
    variants = []
    for v in entry.variants:
        buffers.append(v.thumbnail.data.cast("B") if v.thumbnail.flags.c_contiguous else v.thumbnail.tobytes())
        t = v.thumbnail
        variants.append({"index": v.index, "seed": v.seed, "width": v.width, "height": v.height,
                         "thumbnail": ImageDesc(len(buffers), t.shape[1], t.shape[0], 4).to_wire()})
    return {
        "job": entry.job, "created": entry.created, "kind": entry.kind, "parent": entry.parent,
        "parent_variant": entry.parent_variant, "model": entry.model, "engine": entry.engine, "prompt": entry.prompt,
        "options": dict(entry.options), "seeds": list(entry.seeds), "region": {"x": x, "y": y, "width": w, "height": h},
        "canvas": {"width": entry.canvas[0], "height": entry.canvas[1]}, "starred": entry.starred,
        "pixels_kept": entry.pixels_kept, "bytes": entry.bytes, "variants": variants,
        "loras": [{"name": name, "weight": weight} for name, weight in entry.loras], "references": entry.references,
    }


def history(d: Daemon, identity: bytes, msg: Message) -> Message:
    """A page of the history, newest first, searched by prompt text."""
    store = _history(d)
    query = msg.body.get("query", "")
    if not isinstance(query, str):
        raise ProtocolError(Code.BAD_FIELD_TYPE, f"'query' must be str, got {type(query).__name__}", {"field": "query"})
    starred = msg.body.get("starred", False)
    if not isinstance(starred, bool):
        raise ProtocolError(Code.BAD_FIELD_TYPE, f"'starred' must be bool, got {type(starred).__name__}", {"field": "starred"})
    offset, limit = _int(msg, "offset", 0, 0), _int(msg, "limit", 20, 1, MAX_PAGE)
    entries, total = store.page(query, offset, limit, starred)
    buffers: list[Any] = []
    body = {"entries": [_entry_wire(e, buffers) for e in entries], "total": total, "offset": offset,
            **(history_summary(d) or {})}
    return Message(type=Type.HISTORY_REPLY, body=body, buffers=buffers, re=msg.id)


def history_star(d: Daemon, identity: bytes, msg: Message) -> Message:
    """Star an entry (kept whatever the budget) or unstar it (evictable again)."""
    job_id = job_field(msg)
    on = msg.body.get("starred", True)
    if not isinstance(on, bool):
        raise ProtocolError(Code.BAD_FIELD_TYPE, f"'starred' must be bool, got {type(on).__name__}", {"field": "starred"})
    entry = _history_call(d, job_id, lambda h: h.star(job_id, on))
    buffers: list[Any] = []
    return Message(type=Type.HISTORY_ENTRY, body={"entry": _entry_wire(entry, buffers)}, buffers=buffers, re=msg.id)


def loras(d: Daemon, identity: bytes, msg: Message) -> Message:
    """The LoRA and embeddings folders' files, each with its family, trigger words, default
    weight and size (from its header alone)."""
    lib = d.library
    return reply(msg, Type.LORAS_REPLY, {
        "loras": [a.to_wire() for a in lib.loras()] if lib is not None else [],
        "embeddings": [a.to_wire() for a in lib.embeddings()] if lib is not None else [],
        "lora_dir": str(lib.lora_dir) if lib is not None else "",
        "embeddings_dir": str(lib.embeddings_dir) if lib is not None else "",
    })


def train(d: Daemon, identity: bytes, msg: Message) -> Message:
    """Teach the daemon a subject (PROTOCOL.md 5.14): every field and picture checked, the
    model (SD 1.x or SDXL) and the LoRA's name admitted, then the job queued for the trainer."""
    if d.stopping:
        raise ProtocolError(Code.SHUTTING_DOWN, "the daemon is shutting down and takes no new jobs")
    request = parse_train(msg, d.limits)
    model_id, family, resolution = admit_train(request, d.registry, d.library.lora_dir if d.library is not None else None)
    job = d.enqueue_training(identity, request, model_id, family, resolution)
    return wire.message(Accepted(job.id, job.position, [request.seed], model_id, d.instance), re=msg.id)


def styles(d: Daemon, identity: bytes, msg: Message) -> Message:
    book = d.styles
    return reply(msg, Type.STYLES_REPLY, {
        "styles": [s.to_wire() for s in book.all()] if book is not None else [],
        "folder": str(book.user_dir) if book is not None else "",
    })


def style_save(d: Daemon, identity: bytes, msg: Message) -> Message:
    """Save a user style (the editors' "save the current settings as a style")."""
    if d.styles is None:
        raise ProtocolError(Code.BAD_VALUE, "this daemon serves no styles")
    if "name" not in msg.body or "style" not in msg.body:
        missing = "name" if "name" not in msg.body else "style"
        raise ProtocolError(Code.MISSING_FIELD, f"'style_save' needs the field '{missing}'", {"field": missing})
    saved = d.styles.save(msg.body["name"], msg.body["style"])
    log.info("style '%s' saved to %s", saved.name, saved.path)
    return reply(msg, Type.STYLE_SAVED, {"style": saved.to_wire()})


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
    Type.VARY: vary,
    Type.RERUN: rerun,
    Type.HISTORY: history,
    Type.HISTORY_STAR: history_star,
    Type.STYLES: styles,
    Type.STYLE_SAVE: style_save,
    Type.LORAS: loras,
    Type.TRAIN: train,
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
