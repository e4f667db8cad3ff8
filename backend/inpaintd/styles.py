"""Style presets: a name for a prompt template, a negative prompt and settings (PROTOCOL.md 5.12).

A style is a JSON file, `NAME.json`, in one of two folders: the styles shipped with
inpaintd (`assets/styles/`, a few per family) and the user's (`styles/` in the data folder,
`inpaintd.paths`), where `style_save` writes.  A user style of a shipped style's name takes
its place.  The fields (all optional but one of them):

    {"description": "...", "prompt": "watercolor painting of {prompt}, soft edges",
     "negative_prompt": "photo, harsh shadows", "model": "", "families": ["sd15", "sdxl"],
     "scheduler": "euler_a", "steps": 30, "guidance_scale": 6.0, "strength": 1.0,
     "color_match": false, "loras": [{"name": "watercolor_v2", "weight": 0.8}]}

`prompt` is a template: `{prompt}` is replaced by the job's prompt (a template without it
is used as is, after the job's prompt).  A job that names a style gets the template and,
for every other setting, the style's value where the job left the option at its default;
a value the job chose itself wins.  Each setting is checked by the option table's own
rules (`validation.parse_options`), so a malformed style is refused with the same words as
a malformed job, naming the file.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inpaintd_protocol.messages import Code, JobOptions, ProtocolError
from inpaintd_protocol.options import BY_NAME

from .validation import parse_options

#: The job options a style may set (besides its prompt template).
SETTINGS = ("negative_prompt", "model", "scheduler", "steps", "guidance_scale", "strength", "color_match")
#: Other fields a style file may have.
OTHER_FIELDS = ("description", "prompt", "families", "loras")
#: Style names: what a file name and an editor's list can both carry.
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.-]{0,63}$")
SHIPPED_DIR = Path(__file__).resolve().parent / "assets" / "styles"


@dataclass
class Style:
    name: str
    source: str  # "shipped" or "user"
    path: Path
    description: str = ""
    prompt: str = ""  # the template, with "{prompt}"
    families: list[str] = field(default_factory=list)  # the families it was made for ([] = any)
    settings: dict[str, Any] = field(default_factory=dict)  # job option -> value
    loras: list[dict[str, Any]] = field(default_factory=list)
    #: Why the file cannot be used ("" when it can): listed, and a job naming it is refused.
    problem: str = ""

    def to_wire(self) -> dict[str, Any]:
        return {
            "name": self.name, "source": self.source, "description": self.description, "prompt": self.prompt,
            "families": list(self.families), "settings": dict(self.settings), "loras": list(self.loras),
            "problem": self.problem,
        }


def parse_style(name: str, data: Any, source: str, path: Path) -> Style:
    """A style from its JSON value; a problem is kept in `problem`, never raised."""
    style = Style(name, source, path)
    try:
        if not isinstance(data, dict):
            raise ValueError(f"a style is a JSON object, not {type(data).__name__}")
        unknown = sorted(set(data) - set(SETTINGS) - set(OTHER_FIELDS))
        if unknown:
            raise ValueError(f"unknown field(s) {', '.join(unknown)}; a style has {', '.join(OTHER_FIELDS + SETTINGS)}")
        for key in ("description", "prompt"):
            if not isinstance(data.get(key, ""), str):
                raise ValueError(f"'{key}' must be a string")
        style.description, style.prompt = data.get("description", ""), data.get("prompt", "")
        families = data.get("families", [])
        if not isinstance(families, list) or not all(isinstance(f, str) for f in families):
            raise ValueError("'families' must be a list of family names (e.g. [\"sd15\", \"sdxl\"])")
        style.families = families
        loras = data.get("loras", [])
        if not isinstance(loras, list) or not all(
            isinstance(x, dict) and isinstance(x.get("name"), str) and isinstance(x.get("weight", 1.0), (int, float))
            for x in loras
        ):
            raise ValueError("'loras' must be a list of {\"name\": str, \"weight\": number}")
        style.loras = loras
        settings = {k: data[k] for k in SETTINGS if k in data}
        try:
            parse_options(settings)  # the option table's types, ranges and choices
        except ProtocolError as exc:
            raise ValueError(exc.message) from None
        style.settings = settings
    except ValueError as exc:
        style.problem = f"{path}: {exc}"
    return style


def _read(path: Path, source: str) -> Style:
    name = path.stem
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return Style(name, source, path, problem=f"{path}: not readable as JSON ({exc})")
    return parse_style(name, data, source, path)


class Styles:
    """The shipped and the user's styles, read afresh on every use (files are small, and a
    style the artist edits in a text editor takes effect at once)."""

    def __init__(self, user_dir: Path, shipped_dir: Path = SHIPPED_DIR) -> None:
        self.user_dir = Path(user_dir)
        self.shipped_dir = Path(shipped_dir)

    def all(self) -> list[Style]:
        found: dict[str, Style] = {}
        for folder, source in ((self.shipped_dir, "shipped"), (self.user_dir, "user")):
            if folder.is_dir():
                for path in sorted(folder.glob("*.json")):
                    found[path.stem.lower()] = _read(path, source)  # the user's takes the shipped one's place
        return sorted(found.values(), key=lambda s: s.name.lower())

    def get(self, name: str) -> Style | None:
        return next((s for s in self.all() if s.name.lower() == name.lower()), None)

    def apply(self, options: JobOptions) -> JobOptions:
        """`options` with its style applied (the same when it names none); ProtocolError
        (`bad_value`, field `style`) for an unknown or malformed style."""
        if not options.style:
            return options
        style = self.get(options.style)
        if style is None:
            names = ", ".join(s.name for s in self.all()) or "none"
            raise ProtocolError(Code.BAD_VALUE, f"no style '{options.style}'; the daemon's styles: {names}",
                                {"field": "style"})
        if style.problem:
            raise ProtocolError(Code.BAD_VALUE, f"style '{style.name}' cannot be used: {style.problem}", {"field": "style"})
        if style.loras:
            names = ", ".join(str(x["name"]) for x in style.loras)
            raise ProtocolError(Code.BAD_VALUE, f"style '{style.name}' names LoRAs ({names}), which this daemon cannot "
                                "apply yet; remove them from its file or pick another style", {"field": "style"})
        changes: dict[str, Any] = {}
        if style.prompt:
            changes["prompt"] = (style.prompt.replace("{prompt}", options.prompt) if "{prompt}" in style.prompt
                                 else ", ".join(p for p in (options.prompt, style.prompt) if p))
        for key, value in style.settings.items():
            if getattr(options, key) == BY_NAME[key].default:
                changes[key] = value
        return dataclasses.replace(options, **changes)

    def save(self, name: str, data: Any) -> Style:
        """Write the user style `name` (ProtocolError naming what is wrong, before writing)."""
        if not isinstance(name, str) or not NAME.match(name):
            raise ProtocolError(Code.BAD_VALUE, f"style name {name!r}: use 1 to 64 letters, digits, spaces, '_', '.' or "
                                "'-', starting with a letter or digit", {"field": "name"})
        path = self.user_dir / f"{name}.json"
        style = parse_style(name, data, "user", path)
        if style.problem:
            raise ProtocolError(Code.BAD_VALUE, style.problem.replace(str(path), f"style '{name}'"), {"field": "style"})
        self.user_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        tmp.replace(path)
        return style
