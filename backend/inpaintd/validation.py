"""Admission: checking a submit before any work is done, in one place.

Everything a client can get wrong is caught here and answered with an error that names
the field and the rule, so a plugin author can fix their side from the message alone.
Pixel buffers are wrapped, not copied: a 100 MB canvas stays where ZeroMQ put it.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from inpaintd_protocol.messages import LIMITS, Code, JobOptions, Limits, ProtocolError
from inpaintd_protocol.options import OPTIONS
from inpaintd_protocol.wire import Message

from .loras import Library, parse_loras_field, split_prompt


@dataclass
class SubmitRequest:
    image: np.ndarray  # H x W x C uint8 (C = 3 or 4), possibly strided, read-only view
    mask: np.ndarray  # H x W uint8
    options: JobOptions  # as the job runs: its style applied
    references: list[np.ndarray] = field(default_factory=list)  # each h x w x 3|4 uint8
    #: The options as the client sent them (before the style), for the history.
    given: JobOptions | None = None
    #: The body's `loras` as asked for (name, weight); checked against the library at admission.
    lora_requests: list[tuple[str, float]] = field(default_factory=list)
    #: The LoRAs and embeddings the job uses, found and checked (`loras.Library`): for the engine,
    #: (name, path, weight) and (token, path).
    loras: list[tuple[str, str, float]] = field(default_factory=list)
    embeddings: list[tuple[str, str]] = field(default_factory=list)


def _field_error(code: str, name: str, message: str) -> ProtocolError:
    return ProtocolError(code, message, {"field": name})


def parse_options(body: dict[str, Any], limits: Limits = LIMITS) -> JobOptions:
    """The job options of a submit, checked against the option table (options.OPTIONS).

    Three passes, in the order PROTOCOL.md section 5.4 gives (the first failure is the
    answer): each option's type and range in the table's order, then string lengths
    (`too_large`), then names that must be one of a list (scheduler, fill)."""
    options = JobOptions()
    for opt in OPTIONS:
        if opt.name not in body:
            continue
        value = body[opt.name]
        if isinstance(value, bool) != (opt.kind is bool) or not isinstance(value, opt.types):
            kinds = " or ".join(t.__name__ for t in opt.types)
            raise _field_error(Code.BAD_FIELD_TYPE, opt.name, f"'{opt.name}' must be {kinds}, got {type(value).__name__}")
        if isinstance(value, float) and not math.isfinite(value):
            raise _field_error(Code.BAD_VALUE, opt.name, f"'{opt.name}' is {value}; it must be a finite number")
        low, high = opt.bounds(limits)  # (None, None) unless a number
        if isinstance(value, (int, float)) and (low is not None and value < low or high is not None and value > high):
            raise _field_error(Code.BAD_VALUE, opt.name, f"'{opt.name}' is {value}; allowed range is {low} to {high}")
        setattr(options, opt.name, value)
    for opt in OPTIONS:
        longest = opt.max_length(limits)
        if longest is not None and len(getattr(options, opt.name)) > longest:
            raise _field_error(Code.TOO_LARGE, opt.name,
                               f"'{opt.name}' has {len(getattr(options, opt.name))} characters; the limit is {longest}")
    for opt in OPTIONS:
        value = getattr(options, opt.name)
        if opt.choices and value not in opt.choices:
            raise _field_error(Code.BAD_VALUE, opt.name, f"unknown {opt.name} '{value}'; known: {', '.join(opt.choices)}")
    return options


def _image(msg: Message, name: str, channels: tuple[int, ...], limits: Limits, desc: Any = None,
           max_side: int | None = None) -> np.ndarray:
    """The pixels `name` (or `desc`, for a list's entry) describes, checked to the letter.
    `max_side`: a tighter side limit than the canvas's (references)."""
    desc = msg.body.get(name) if desc is None else desc
    if desc is None:
        raise _field_error(Code.MISSING_FIELD, name, f"'{name}' is missing: a submit carries an image and a mask descriptor")
    if not isinstance(desc, dict):
        raise _field_error(Code.BAD_FIELD_TYPE, name,
                           f"'{name}' must be a map (frame, width, height, channels, stride), got {type(desc).__name__}")
    values: dict[str, int] = {}
    for key in ("frame", "width", "height", "channels"):
        if key not in desc:
            raise _field_error(Code.MISSING_FIELD, f"{name}.{key}", f"'{name}.{key}' is missing")
        v = desc[key]
        if isinstance(v, bool) or not isinstance(v, int):
            raise _field_error(Code.BAD_FIELD_TYPE, f"{name}.{key}", f"'{name}.{key}' must be an integer, got {type(v).__name__}")
        values[key] = v
    w, h, c = values["width"], values["height"], values["channels"]
    if w <= 0 or h <= 0:
        raise _field_error(Code.BAD_VALUE, name, f"{name} is {w}x{h}; both sides must be at least 1")
    side = max_side or limits.max_side
    if w > side or h > side or w * h > limits.max_pixels:
        raise _field_error(
            Code.TOO_LARGE, name,
            f"{name} is {w}x{h}; the limit is {side} px a side and {limits.max_pixels} pixels in all",
        )
    if c not in channels:
        raise _field_error(Code.BAD_VALUE, f"{name}.channels", f"'{name}.channels' is {c}; it must be one of {list(channels)}")
    stride = desc.get("stride")
    if stride is not None and (isinstance(stride, bool) or not isinstance(stride, int)):
        # checked before the 0 default below: "", [], False and 0.0 are wrong types, not 0
        raise _field_error(Code.BAD_FIELD_TYPE, f"{name}.stride", f"'{name}.stride' must be an integer")
    stride = stride or w * c  # absent, nil or 0: tightly packed rows
    if stride < w * c:
        raise _field_error(Code.BAD_VALUE, f"{name}.stride",
                           f"'{name}.stride' is {stride}; a row of {w} pixels x {c} channels needs at least {w * c}")
    try:
        buf = msg.buffer(values["frame"])
    except ProtocolError as exc:
        raise _field_error(Code.BAD_IMAGE, f"{name}.frame", f"{name}: {exc.message}") from None
    if len(buf) != stride * h:
        raise _field_error(
            Code.BAD_IMAGE, name,
            f"{name} frame has {len(buf)} bytes; {w}x{h} with {c} channel(s) and stride {stride} needs {stride * h}",
        )
    flat = np.frombuffer(buf, dtype=np.uint8)
    array = np.lib.stride_tricks.as_strided(flat, shape=(h, w, c), strides=(stride, c, 1), writeable=False)
    return array if c > 1 else array[:, :, 0]


def parse_submit(msg: Message, limits: Limits = LIMITS) -> SubmitRequest:
    options = parse_options(msg.body, limits)
    image, mask = parse_pixels(msg, limits)
    return SubmitRequest(image=image, mask=mask, options=options, references=parse_references(msg, limits),
                         lora_requests=parse_loras_field(msg.body.get("loras")))


def parse_pixels(msg: Message, limits: Limits = LIMITS) -> tuple[np.ndarray, np.ndarray]:
    """The `image` and `mask` of a message (a submit, or a vary that brings its pixels)."""
    image = _image(msg, "image", (3, 4), limits)
    mask = _image(msg, "mask", (1,), limits)
    if image.shape[:2] != mask.shape:
        raise ProtocolError(
            Code.SIZE_MISMATCH,
            f"image is {image.shape[1]}x{image.shape[0]} but mask is {mask.shape[1]}x{mask.shape[0]}; they must be the same size",
        )
    if not any_selected(mask):
        raise ProtocolError(Code.EMPTY_MASK, "the mask selects nothing (every value is 0); select the area to inpaint")
    return image, mask


def parse_references(msg: Message, limits: Limits = LIMITS) -> list[np.ndarray]:
    """The optional reference images (a list of descriptors, each checked as an image)."""
    descs = msg.body.get("references")
    if descs is None:
        return []
    if not isinstance(descs, list):
        raise _field_error(Code.BAD_FIELD_TYPE, "references",
                           f"'references' must be a list of image descriptors, got {type(descs).__name__}")
    if len(descs) > limits.max_references:
        raise _field_error(Code.TOO_LARGE, "references",
                           f"{len(descs)} reference images; the limit is {limits.max_references}")
    return [
        _image(msg, f"references[{i}]", (3, 4), limits, desc=desc, max_side=limits.max_reference_side)
        for i, desc in enumerate(descs)
    ]


def any_selected(mask: np.ndarray) -> bool:
    if mask.flags.c_contiguous:
        return bool(mask.view(np.uint8).reshape(-1).any())
    return bool(mask.any())


class StyleBook(Protocol):
    """The daemon's styles (`inpaintd.styles.Styles`)."""

    def apply(self, options: JobOptions) -> JobOptions: ...


class ModelAdmission(Protocol):
    """The registry's side of admission (`inpaintd.models.ModelRegistry`)."""

    default_model_id: str

    def admit(self, model_id: str) -> Any: ...


def admit(msg: Message, models: ModelAdmission, limits: Limits = LIMITS,
          styles: StyleBook | None = None, library: Library | None = None) -> tuple[SubmitRequest, str]:
    """Everything a submit must pass before it is queued: every field and the pixels
    (`parse_submit`: types, ranges, NaN, sizes), its style (known and well-formed), then
    the model it names (the registry's allow-list, pickle rule and availability).  Returns
    the request and the model's id."""
    return admit_request(parse_submit(msg, limits), models, styles, library)


def admit_request(request: SubmitRequest, models: ModelAdmission,
                  styles: StyleBook | None = None, library: Library | None = None) -> tuple[SubmitRequest, str]:
    """The checks after the fields and pixels, for a submit and for the jobs the daemon
    makes from its history (`vary`, `rerun`): the style applied, then the model, then the
    LoRAs (the body's and the prompt's `<lora:NAME:WEIGHT>`, which leave the prompt) and the
    embeddings the prompt names, each made for the model's family."""
    request.given = request.given or request.options
    if styles is not None:
        request.options = styles.apply(request.given)
    info = models.admit(request.options.model or models.default_model_id)
    prompt, tagged = split_prompt(request.options.prompt)
    wanted = [*request.lora_requests, *tagged]
    if tagged:
        request.options = dataclasses.replace(request.options, prompt=prompt)
    family, label = str(getattr(info, "family", "") or ""), str(getattr(info, "label", "") or getattr(info, "engine", ""))
    if wanted:
        if library is None:
            raise _field_error(Code.BAD_VALUE, "loras", "this daemon serves no LoRAs")
        if not (getattr(info, "takes", None) or {}).get("lora"):
            raise _field_error(Code.BAD_VALUE, "loras", f"model '{info.id}' ({label}) takes no LoRA")
        request.loras = [(c.addon.name, str(c.addon.path), c.weight) for c in library.choose(wanted, family, label)]
    if library is not None and family and (getattr(info, "takes", None) or {}).get("textual_inversion"):
        words = set(re.findall(r"[\w<>-]+", request.options.prompt + " " + request.options.negative_prompt))
        request.embeddings = [(a.name, str(a.path)) for a in library.embeddings_for(family) if a.name in words]
    if request.references and not (getattr(info, "takes", None) or {}).get("reference_image"):
        raise _field_error(
            Code.BAD_VALUE, "references",
            f"model '{info.id}' ({getattr(info, 'label', '') or info.engine}) takes no reference image; "
            "models that do say takes.reference_image in the models reply (FLUX.1 Kontext, FLUX.2 klein, "
            "Qwen-Image-Edit, and SD 1.x/SDXL on a daemon started with --ip-adapter)",
        )
    return request, info.id
