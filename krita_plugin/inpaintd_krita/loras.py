"""LoRAs and "Teach subject" in the Krita docker, as plain logic: which of the daemon's
LoRAs (its `loras` reply, PROTOCOL.md 5.13) fit the picked model, what a job sends as
`loras`, how the chosen ones are kept in the settings, and the checks and progress text
of a training (`train`, 5.14).

Nothing here imports Krita, PyQt or pyzmq, so every rule is unit tested in the project's
venv (tests/test_krita_logic.py); docker.py, controller.py and kritadoc.py only move
values between Krita, the widgets and these functions.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: At most this many LoRAs go with one job (PROTOCOL.md 5.4), each weighted in this range.
MAX_LORAS = 8
WEIGHT_MIN, WEIGHT_MAX = -2.0, 2.0

#: A model family (`models` reply) -> the LoRA family (`loras` reply) its LoRAs are made for.
_LORA_FAMILY = {"flux-fill": "flux", "flux-kontext": "flux", "flux2-klein": "flux2"}


def lora_family(model_family: str) -> str:
    """The `loras` reply's family that fits a model of `model_family` ("" unknown)."""
    return _LORA_FAMILY.get(model_family, model_family)


def takes_lora(entry: Mapping[str, Any] | None) -> bool:
    """Whether the model takes LoRAs (its entry's `takes.lora`); True where it does not say."""
    takes = (entry or {}).get("takes")
    if not isinstance(takes, Mapping) or "lora" not in takes:
        return True
    return bool(takes.get("lora"))


def fits(lora: Mapping[str, Any], model_family: str) -> bool:
    """A LoRA fits a model of `model_family`: the same family, or any where the model's is
    not known."""
    want = lora_family(model_family)
    return not want or str(lora.get("family") or "") == want


@dataclass(frozen=True)
class LoraChoice:
    """One entry of the "Add LoRA…" box."""

    name: str
    label: str
    tip: str
    usable: bool
    default_weight: float = 1.0


def lora_tip(lora: Mapping[str, Any]) -> str:
    """The tooltip of a LoRA: its trigger words (to put in the prompt), family, problem."""
    words = [str(w) for w in lora.get("trigger_words") or [] if str(w).strip()]
    lines = [f"Trigger words: {', '.join(words)}" if words else "No trigger words"]
    family = str(lora.get("family") or "")
    lines.append(f"For {family} models" if family else "Family not recognised")
    problem = str(lora.get("problem") or "")
    if problem:
        lines.append(f"Cannot be used: {problem}")
    return "\n".join(lines)


def lora_choices(loras: Iterable[Mapping[str, Any]], model_family: str) -> list[LoraChoice]:
    """The daemon's LoRAs that fit the picked model (all of them where its family is not
    known), by name; one with a `problem` is listed, not usable."""
    out = []
    for lora in loras:
        name = str(lora.get("name") or "")
        if not name or not fits(lora, model_family):
            continue
        problem = str(lora.get("problem") or "")
        label = f"{name} (unusable)" if problem else name
        out.append(LoraChoice(name, label, lora_tip(lora), not problem, clamp_weight(lora.get("default_weight", 1.0))))
    return sorted(out, key=lambda c: c.name.lower())


def clamp_weight(value: Any) -> float:
    try:
        weight = float(value)
    except (TypeError, ValueError):
        return 1.0
    if not math.isfinite(weight):
        return 1.0
    return round(min(max(weight, WEIGHT_MIN), WEIGHT_MAX), 2)


# -- the chosen LoRAs, kept in the settings as one string ---------------------------------------


def format_chosen(chosen: Sequence[tuple[str, float]]) -> str:
    """`name:weight,name:weight` (parse_chosen splits each at its last ':')."""
    return ",".join(f"{name}:{clamp_weight(weight):g}" for name, weight in chosen if name)


def parse_chosen(text: str) -> list[tuple[str, float]]:
    """Read back what format_chosen wrote; unreadable parts are left out."""
    out: list[tuple[str, float]] = []
    for part in (text or "").split(","):
        name, sep, weight = part.strip().rpartition(":")
        if not sep:
            name, weight = part.strip(), "1"
        name = name.strip()
        if name and all(n.lower() != name.lower() for n, _ in out):
            out.append((name, clamp_weight(weight)))
    return out


def loras_payload(chosen: Sequence[tuple[str, float]], loras: Iterable[Mapping[str, Any]] | None,
                  model_family: str) -> list[tuple[str, float]]:
    """What a job sends as `loras` (Client.submit's (name, weight) pairs): the chosen LoRAs
    that the daemon lists (when its list is known), fit the model and can be used; weight 0
    (off) left out; each name once; at most MAX_LORAS."""
    known = None if loras is None else {str(x.get("name") or "").lower(): x for x in loras}
    out: list[tuple[str, float]] = []
    seen: set[str] = set()
    for name, weight in chosen:
        key = name.lower()
        w = clamp_weight(weight)
        if not name or key in seen or w == 0:
            continue
        if known is not None:
            lora = known.get(key)
            if lora is None or lora.get("problem") or not fits(lora, model_family):
                continue
        seen.add(key)
        out.append((name, w))
    return out[:MAX_LORAS]


# -- Teach subject (train) ----------------------------------------------------------------------

#: The pictures go at most this many pixels a side (the daemon trains at 512 or its model's size).
TRAIN_SIDE = 512
MIN_PICTURES, MAX_PICTURES = 3, 30
TOKEN = re.compile(r"^\S{1,32}$")
LORA_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
#: The families the daemon trains (5.14).
TRAINABLE = ("sd15", "sdxl")


@dataclass
class TeachRequest:
    """What the Teach subject dialog asks for."""

    token: str = "sks"
    class_noun: str = ""
    name: str = ""
    steps: int = 400
    resolution: int = 0  # 0: the model's own


def train_size(width: int, height: int, side: int = TRAIN_SIDE) -> tuple[int, int]:
    """A picture's size scaled down to at most `side` a side (never up), aspect kept."""
    scale = min(1.0, side / max(width, height, 1))
    return max(1, round(width * scale)), max(1, round(height * scale))


def teach_problem(request: TeachRequest, pictures: int, loras: Iterable[Mapping[str, Any]] = (),
                  model_family: str = "") -> str | None:
    """Why a training cannot be sent (the daemon's rules, said before anything is read), or None."""
    if pictures < MIN_PICTURES:
        return (f"Select {MIN_PICTURES} to {MAX_PICTURES} paint layers holding pictures of the subject in the "
                f"Layers docker (Ctrl+click), then press Teach subject again ({pictures} selected).")
    if pictures > MAX_PICTURES:
        return f"At most {MAX_PICTURES} pictures can teach a subject; {pictures} layers are selected."
    if not TOKEN.match(request.token.strip()):
        return "The token is one word of at most 32 characters (e.g. sks), what prompts will call the subject."
    if not request.class_noun.strip() or len(request.class_noun.strip()) > 64:
        return "The class says what the subject is (e.g. cat, person, mug), at most 64 characters."
    if not LORA_NAME.match(request.name.strip()):
        return ("The LoRA's name is 1 to 64 letters, digits, '_', '.' or '-', starting with a letter or digit "
                "(e.g. my_cat).")
    if any(str(x.get("name") or "").lower() == request.name.strip().lower() for x in loras):
        return f"The daemon already has a LoRA named '{request.name.strip()}': pick another name."
    if model_family and model_family not in TRAINABLE:
        return (f"The picked model ({model_family}) cannot be trained; pick an SD 1.x or SDXL model "
                "(or the daemon's default) under Model.")
    if not 1 <= request.steps <= 20000:
        return "Steps: 1 to 20000."
    if request.resolution and (request.resolution % 64 or not 64 <= request.resolution <= 2048):
        return "The resolution is a multiple of 64 from 64 to 2048, or auto."
    return None


def train_settings(request: TeachRequest, model: str = "") -> dict[str, Any]:
    """Client.train's keyword settings for the request."""
    settings: dict[str, Any] = {"steps": int(request.steps)}
    if request.resolution:
        settings["resolution"] = int(request.resolution)
    if model:
        settings["model"] = model
    return settings


def training_progress(stage: str, step: int, total: int, loss: float | None, remaining: float | None) -> tuple[int, str]:
    """(percent, text) for the progress bar while a subject is taught."""
    if stage == "preparing" and total:
        return 0, f"Training: class pictures {step}/{total}"
    if stage != "training" or not total:
        return 0, "Training: waiting" if stage in ("", "queued", "submitting") else f"Training: {stage}"
    text = f"Training {step}/{total}"
    if loss is not None:
        text += f" · loss {loss:.3f}"
    if remaining is not None and step < total:
        text += f" · {_duration(remaining)} left"
    return max(0, min(100, round(100 * step / total))), text


def _duration(seconds: float) -> str:
    s = max(0, round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def trained_text(trained: Mapping[str, Any], request: TeachRequest) -> str:
    """The message when a training finished."""
    name = str(trained.get("name") or request.name)
    loss = trained.get("final_loss")
    how = f" ({trained.get('steps', request.steps)} steps, final loss {loss:.3f})" if isinstance(loss, (int, float)) else ""
    return (f"Taught the subject: the LoRA '{name}' is ready{how}. Add it under LoRA and write "
            f"“{request.token.strip()} {request.class_noun.strip()}” in the prompt.")
