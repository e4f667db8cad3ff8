"""Which models the daemon offers, whether their weights are here, and loading them.

Listing must be fast and must work on a machine without weights or network, so it only
looks at the file system (the Hugging Face cache layout, folders, files) and never imports
torch or diffusers.  Loading is where the cost is paid, once: diffusion pipelines are kept
warm, one by default, since each can take most of a GPU; `serve --warm-models N` and
`--memory-budget-gb X` keep several, the least recently used one closed first when
another would not fit (`WarmSet`).

Model ids:
- "patchmatch", "opencv-telea", "opencv-ns", "opencv-fsr", "opencv-shiftmap", "biharmonic":
  the classical engines (backend/inpaintd/engines/classical.py), no weights; each is available where
  its library is installed (OpenCV's two always are).
- "org/name": a Hugging Face repo id, looked up in the local hub cache.
- a folder (diffusers layout, with model_index.json) or a `.safetensors` file: the id is
  the absolute path, so that it does not depend on the daemon's working directory.  `get`
  and `load` also accept the path as it was given (relative, or with `~`).
"""

from __future__ import annotations

import logging
import os
import re
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from .engines.base import Engine, EngineError, ModelCaps, ModelInfo, ProgressFn
from .engines.ip_adapter import ip_adapter_parts, takes_ip_adapter
from .families import (
    FAMILIES,
    Arch,
    Family,
    SingleFile,
    UnsupportedModel,
    caps_for,
    described,
    droppable,
    family_of_folder,
    inspect_single_file,
    missing_components,
    missing_parts_message,
    missing_parts_text,
    native_size_of_folder,
    no_reference_message,
    single_file_problem,
)
from .memory import Weights, component_weights, cuda_available, folder_weights, free_device_memory, single_file_weights
from .memory import report as memory_report
from .policy import SINGLE_FILE_SUFFIXES, is_pickle, pickle_refusal

DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-inpainting"
#: The embedded default, where no diffusion model is available: the best classical fill by
#: bench/quality.py.  Where its library is missing, the best classical method that can run.
FALLBACK_MODEL = "patchmatch"
BUILTIN_MODELS = ("patchmatch", "biharmonic", "opencv-ns", "opencv-telea", "opencv-fsr", "opencv-shiftmap")


def fallback_model() -> str:
    from .engines.classical import METHODS, default_method

    return FALLBACK_MODEL if METHODS[FALLBACK_MODEL].available else default_method()

#: Longest model name looked up: a model id is a repo id or a configured path, never more.
MAX_MODEL_CHARS = 4096

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

log = logging.getLogger("inpaintd.models")


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache, read from the environment at call time.

    `huggingface_hub.constants` freezes these at import; reading them here keeps the
    registry and the loader looking at the same place even if the environment changed.
    """
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HUGGINGFACE_HUB_CACHE"):
        return Path(os.environ["HUGGINGFACE_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "huggingface" / "hub"


def cached_snapshot(
    repo_id: str, cache_dir: Path | None = None, *, need_weights: bool = True, allow_pickle: bool = False
) -> Path | None:
    """The cached snapshot folder of a diffusers repo, or None if it is not (fully) cached.

    Layout: <cache>/models--org--name/refs/main holds a commit hash, and
    snapshots/<hash>/ holds the files.  The snapshot `refs/main` names is preferred; any
    snapshot with a model_index.json and its family's denoiser (`unet/` or `transformer/`,
    by the families table) will do otherwise.  `need_weights`: the denoiser's weights must
    be there too (safetensors, or pickles where allowed); without it, configs suffice, which
    is all a single-file checkpoint needs from its reference repo, and all `hf download REPO
    --include '*.json' '*.txt'` leaves.
    """
    patterns = ["diffusion_pytorch_model*.safetensors"] + (["diffusion_pytorch_model*.bin"] if allow_pickle else [])
    repo_dir = (cache_dir or hub_cache_dir()) / ("models--" + repo_id.replace("/", "--"))
    snapshots = repo_dir / "snapshots"
    if not snapshots.is_dir():
        return None
    candidates: list[Path] = []
    ref = repo_dir / "refs" / "main"
    if ref.is_file():
        candidates.append(snapshots / ref.read_text(encoding="utf-8").strip())
    candidates += sorted(p for p in snapshots.iterdir() if p not in candidates)
    for snapshot in candidates:
        if not (snapshot / "model_index.json").is_file():
            continue
        denoiser = snapshot / _denoiser_folder(snapshot)
        if not (denoiser / "config.json").is_file():
            continue
        if not need_weights or any(f.is_file() for pattern in patterns for f in denoiser.glob(pattern)):
            return snapshot
    return None


def _denoiser_folder(folder: Path) -> str:
    """The family's denoiser folder; `unet` where the family is not one inpaintd knows (the
    folder still counts as cached, and `_describe` then says what it is)."""
    try:
        return family_of_folder(folder).denoiser
    except UnsupportedModel:
        return "unet"


def _describe(folder: Path) -> tuple[Family | None, int | None, str]:
    """(family, native size, problem) of a diffusers folder, from its configs alone."""
    try:
        fam = family_of_folder(folder)
    except UnsupportedModel as exc:
        return None, None, str(exc)
    return fam, native_size_of_folder(folder, fam), ""


def _get_weights_hint(repo_id: str) -> str:
    return (
        f"run `hf download {repo_id}` on a machine with network access and copy its "
        f"Hugging Face cache to {hub_cache_dir()}, or start the daemon with --allow-download"
    )


def engine_bytes(engine: object) -> int:
    """An engine's footprint on its device: the bytes of its pipeline's torch modules'
    parameters and buffers (each tensor counted once).  An engine may state its own
    (`nbytes`, e.g. a test's stand-in); one without a pipeline counts 0."""
    stated = getattr(engine, "nbytes", None)
    if isinstance(stated, int):
        return stated
    pipe = getattr(engine, "pipe", None)
    components = getattr(pipe, "components", None)
    if not isinstance(components, dict):
        return 0
    seen: set[int] = set()
    total = 0
    for module in components.values():
        tensors: Iterable = ()
        if hasattr(module, "parameters") and hasattr(module, "buffers"):
            try:
                tensors = [*module.parameters(), *module.buffers()]
            except Exception:  # not a torch module after all
                continue
        for t in tensors:
            if id(t) in seen:
                continue
            seen.add(id(t))
            total += int(t.numel()) * int(t.element_size())
    return total


@dataclass
class WarmEntry:
    """One warm diffusion engine: its footprint and when a job last asked for it."""

    engine: Engine
    nbytes: int
    last_used: float  # time.monotonic()


class WarmSet:
    """The warm diffusion engines, least recently used first, under two limits: at most
    `max_models` of them, and (where `budget_bytes` is set) their bytes within the budget.
    Making room closes the least recently used engines, never a protected one (the model
    being loaded, or one a running job holds: `hold`).

    Its own small lock guards the bookkeeping only, so that `status` answers from `snapshot`
    while a load (under the registry's lock) takes its time."""

    def __init__(self, max_models: int = 1, budget_bytes: int | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if max_models < 1:
            raise ValueError(f"warm models must be at least 1, got {max_models}")
        if budget_bytes is not None and budget_bytes <= 0:
            raise ValueError(f"the memory budget must be positive, got {budget_bytes} bytes")
        self.max_models = max_models
        self.budget_bytes = budget_bytes
        self.clock = clock
        self._entries: OrderedDict[str, WarmEntry] = OrderedDict()
        self._sizes: dict[str, int] = {}  # last measured footprint per model, kept after eviction
        self._held: dict[str, int] = {}
        self.loads: dict[str, int] = {}  # loads per model since start
        self.evictions = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, model_id: object) -> bool:
        return model_id in self._entries

    def ids(self) -> list[str]:
        """Least recently used first."""
        with self._lock:
            return list(self._entries)

    def touch(self, model_id: str) -> Engine | None:
        """The warm engine for `model_id`, now the most recently used; None if not warm."""
        with self._lock:
            entry = self._entries.get(model_id)
            if entry is None:
                return None
            entry.last_used = self.clock()
            self._entries.move_to_end(model_id)
            return entry.engine

    def newest(self) -> Engine | None:
        with self._lock:
            return next(reversed(self._entries.values())).engine if self._entries else None

    def get(self, model_id: str) -> Engine | None:
        with self._lock:
            entry = self._entries.get(model_id)
            return entry.engine if entry else None

    def estimate(self, model_id: str) -> int:
        """The bytes a load of `model_id` will take, before it happens: what it took last
        time, else the largest warm engine's (models served together are alike), else 0."""
        with self._lock:
            if model_id in self._sizes:
                return self._sizes[model_id]
            return max((e.nbytes for e in self._entries.values()), default=0)

    def make_room(self, incoming: str, incoming_bytes: int, close: Callable[[Engine], None]) -> list[str]:
        """Close least recently used engines until `incoming` (not warm yet) fits; returns
        the evicted ids."""
        return self._shrink(1, incoming_bytes, {incoming}, close)

    def add(self, model_id: str, engine: Engine, nbytes: int, close: Callable[[Engine], None]) -> list[str]:
        """Keep `engine` warm as the most recently used; then, measured, close least
        recently used others while the set is over a limit.  Returns the evicted ids."""
        with self._lock:
            self._entries[model_id] = WarmEntry(engine, nbytes, self.clock())
            self._entries.move_to_end(model_id)
            self._sizes[model_id] = nbytes
            self.loads[model_id] = self.loads.get(model_id, 0) + 1
        return self._shrink(0, 0, {model_id}, close)

    def _shrink(self, extra_models: int, extra_bytes: int, keep: set[str], close: Callable[[Engine], None]) -> list[str]:
        evicted: list[str] = []
        while True:
            with self._lock:
                count = len(self._entries) + extra_models
                used = sum(e.nbytes for e in self._entries.values()) + extra_bytes
                over = count > self.max_models or (self.budget_bytes is not None and used > self.budget_bytes)
                victim = next((m for m in self._entries if m not in keep and not self._held.get(m)), None)
                if not over or victim is None:
                    return evicted
                entry = self._entries.pop(victim)
                self.evictions += 1
            log.info("closing warm model %s (%.1f MB, least recently used) to make room", victim, entry.nbytes / 1e6)
            try:
                close(entry.engine)
            except Exception:
                log.exception("warm model %s could not be closed cleanly", victim)
            evicted.append(victim)

    def hold(self, model_id: str) -> None:
        """Protect `model_id` from eviction until `release` (a job runs on it)."""
        with self._lock:
            self._held[model_id] = self._held.get(model_id, 0) + 1

    def release(self, model_id: str) -> None:
        with self._lock:
            left = self._held.get(model_id, 0) - 1
            if left > 0:
                self._held[model_id] = left
            else:
                self._held.pop(model_id, None)

    def pop_all(self) -> list[Engine]:
        with self._lock:
            engines = [e.engine for e in self._entries.values()]
            self._entries.clear()
            return engines

    def snapshot(self) -> list[dict[str, object]]:
        """What is warm, most recently used first, for `status` and `hello` (PROTOCOL.md 5.1)."""
        now = self.clock()
        with self._lock:
            return [
                {"model": model_id, "device": e.engine.device, "bytes": e.nbytes,
                 "last_used": round(max(now - e.last_used, 0.0), 3), "loads": self.loads.get(model_id, 0)}
                for model_id, e in reversed(self._entries.items())
            ]


@dataclass
class _Spec:
    id: str
    kind: str  # "builtin", "hub", "folder", "single_file"
    source: str  # repo id or absolute path
    given: str  # as written on the command line


def _parse_spec(spec: str) -> _Spec:
    """Tell a repo id from a path: an existing path wins, then the shape of the string."""
    if spec in BUILTIN_MODELS:
        return _Spec(spec, "builtin", spec, spec)
    path = Path(spec).expanduser()
    looks_like_file = path.suffix.lower() in SINGLE_FILE_SUFFIXES
    if path.exists() or looks_like_file or not _REPO_ID.match(spec):
        absolute = str(path.resolve())
        kind = "single_file" if path.is_file() or looks_like_file else "folder"
        return _Spec(absolute, kind, absolute, spec)
    return _Spec(spec, "hub", spec, spec)


class ModelRegistry:
    """The models the daemon was started with, and the diffusion engines kept loaded."""

    def __init__(
        self,
        models: list[str] | None = None,
        *,
        default: str | None = None,
        allow_download: bool = False,
        device: str | None = None,
        allow_pickle: bool = False,
        configs: dict[str, str] | None = None,
        compile: str = "off",
        warm_models: int = 1,
        memory_budget_bytes: int | None = None,
        memory: str = "auto",
        quantize: dict[str, str] | None = None,
        drop_t5: bool = False,
        ip_adapter: str | None = None,
    ) -> None:
        """`configs` maps a single-file model (as given, or its id) to a diffusers config
        folder or repo id, which offline loading of a single file needs.  `compile` is a
        torch.compile mode for diffusion engines (see `inpaintd.engines.speedups`).
        `warm_models`: how many diffusion engines stay loaded at most; `memory_budget_bytes`:
        what their weights may take on the device together (None: no budget); past either,
        the least recently used is closed (`WarmSet`).  `memory`: a mode of
        `inpaintd.memory.MEMORY_CHOICES` for every diffusion model; `quantize`: component ->
        method (`inpaintd.engines.quantize`); `drop_t5`: SD 3.x models load without their T5
        encoder (`families.droppable`), and their memory estimates leave it out.  `ip_adapter`:
        an IP-Adapter folder or repo id (`serve --ip-adapter`; `inpaintd.engines.ip_adapter`)
        that SD 1.x and SDXL models load with: they then take reference images."""
        self.allow_download = allow_download
        self.allow_pickle = allow_pickle
        self.device = device
        self.notices: list[str] = []
        #: The loaded diffusion engine's speed settings and compile cost, for clients.
        self.engine_notes: list[str] = []
        self.compile = compile
        self.memory = memory
        self.quantize = dict(quantize or {})
        self.drop_t5 = drop_t5
        self.ip_adapter = ip_adapter
        #: Models an out-of-memory retry moved to a leaner mode than --memory gave them.
        self._memory_modes: dict[str, str] = {}
        self._lock = threading.RLock()
        self._specs: dict[str, _Spec] = {}
        for spec in [*BUILTIN_MODELS, DEFAULT_MODEL, *(models or []), *([default] if default else [])]:
            parsed = _parse_spec(spec)
            self._specs.setdefault(parsed.id, parsed)
        self._configs: dict[str, str] = {}
        for key, value in (configs or {}).items():
            self._configs[_parse_spec(key).id] = value
        self._classical: dict[str, Engine] = {}
        self._warm = WarmSet(warm_models, memory_budget_bytes)

        requested = _parse_spec(default).id if default else DEFAULT_MODEL
        info = self.get(requested)
        if info.available:
            self.default_model_id = requested
        else:
            self.default_model_id = fallback_model()
            self.notices.append(
                f"Model '{requested}' was not found ({info.detail}). Using the classical "
                f"engine '{self.default_model_id}' instead, which fills holes from their surroundings "
                "and ignores prompts."
            )

    @property
    def precision(self) -> str:
        """How diffusion weights sit on the device: bf16 on CUDA, fp32 elsewhere (CPU, and
        where the device is still to be picked and torch is not imported yet)."""
        device = self.device
        if device is None:
            device = "cuda" if cuda_available() else "cpu"
        return "bf16" if device.startswith("cuda") else "fp32"

    @property
    def _diffusion(self) -> Engine | None:
        """The most recently used warm diffusion engine (the only one with one warm model)."""
        return self._warm.newest()

    def warm(self) -> list[dict[str, object]]:
        """The warm diffusion engines, most recently used first: model, device, bytes,
        last_used (seconds ago), loads (since start).  Never waits for a load under way."""
        return self._warm.snapshot()

    @contextmanager
    def in_use(self, model_id: str) -> Iterator[None]:
        """While a job runs on `model_id`: loading another never evicts it (the set may stay
        over its limits until the job ends).  The local executor's single worker loads only
        between jobs, so it needs none; an executor running jobs side by side wraps each."""
        model = self._spec(model_id).id
        self._warm.hold(model)
        try:
            yield
        finally:
            self._warm.release(model)

    # -- listing -------------------------------------------------------------------

    def list(self) -> list[ModelInfo]:
        """Every known model; availability is checked afresh, since weights may arrive."""
        return [self._info(spec) for spec in self._specs.values()]

    def get(self, model_id: str) -> ModelInfo:
        return self._info(self._spec(model_id))

    def _spec(self, model_id: str) -> _Spec:
        spec = self._specs.get(model_id) or self._specs.get(_parse_spec(model_id).id)
        if spec is None:
            raise EngineError(
                "unknown_model",
                f"unknown model '{model_id}'; known: {', '.join(self._specs)}",
            )
        return spec

    def _info(self, spec: _Spec) -> ModelInfo:
        if spec.kind == "builtin":
            from .engines.classical import METHODS

            method = METHODS[spec.id]
            missing = method.missing()
            return ModelInfo(spec.id, "classical", "builtin", not missing, None, missing or method.summary)
        if spec.kind == "hub":
            snapshot = cached_snapshot(spec.source, allow_pickle=self.allow_pickle)
            if snapshot is not None:
                return self._folder_info(spec, snapshot)
            if self.allow_download:
                return ModelInfo(
                    spec.id, "diffusers", "hub", True, None,
                    "not cached yet; it will be downloaded from the Hugging Face Hub on first use",
                )
            return ModelInfo(
                spec.id, "diffusers", "hub", False, None,
                f"not in the Hugging Face cache at {hub_cache_dir()}; {_get_weights_hint(spec.source)}",
            )
        path = Path(spec.source)
        if spec.kind == "folder":
            if (path / "model_index.json").is_file():
                return self._folder_info(spec, path)
            reason = "no model_index.json in it" if path.is_dir() else "no such folder"
            return ModelInfo(
                spec.id, "diffusers", "folder", False, None,
                f"{path}: {reason}; expected a diffusers pipeline folder (save_pretrained layout)",
            )
        if is_pickle(path) and not self.allow_pickle:
            return ModelInfo(spec.id, "diffusers", "single_file", False, None, pickle_refusal(path))
        if not path.is_file():
            return ModelInfo(spec.id, "diffusers", "single_file", False, None, f"{path}: no such file")
        inspected = inspect_single_file(path)  # the file's header only: no torch
        if inspected is None and (spec.id not in self._configs or path.suffix.lower() == ".gguf") and not is_pickle(path):
            return ModelInfo(
                spec.id, "diffusers", "single_file", False, None,
                f"{single_file_problem(path)}; or name a diffusers config folder for it",
            )
        if inspected is not None and inspected.components:
            return self._transformer_file_info(spec, path, inspected)
        family = inspected.family.arch.value if inspected else ""
        native = inspected.family.native_size if inspected else None
        if inspected and spec.id not in self._configs and not self.allow_download:
            # diffusers needs the configs of the matching reference repo to lay the weights out.
            repo = inspected.reference_repo
            if cached_snapshot(repo, need_weights=False) is None:
                return ModelInfo(
                    spec.id, "diffusers", "single_file", False, native,
                    f"{path}: a single-file checkpoint needs the diffusers configs of {repo}, which are "
                    f"not in the Hugging Face cache at {hub_cache_dir()}; run `hf download {repo} "
                    "--include '*.json' '*.txt'` on a machine with network access and copy the cache "
                    "here, name a config folder for it, or start the daemon with --allow-download",
                    family,
                )
        info = ModelInfo(spec.id, "diffusers", "single_file", True, native, str(path), family)
        if inspected is None:
            return info
        return self._with_memory(self._described(info, inspected.family), inspected.family, single_file_weights(path))

    def _transformer_file_info(self, spec: _Spec, path: Path, sf: SingleFile) -> ModelInfo:
        """An SD 3.x or FLUX.1 single file or GGUF: available where the folder that completes
        it (its config, or its family's repo in the hub cache) and every part the file lacks
        are here (an optional one, SD 3's T5, may be missing); else the detail names each
        missing part and how to get it, as the engine would fail to load it."""
        family = sf.family
        repo: str | None = sf.reference_repo
        reference: Path | None = None
        config = self._configs.get(spec.id)
        if config is not None:
            config_path = Path(config).expanduser()
            if (config_path / "model_index.json").is_file():
                reference, repo = config_path, None
            else:
                repo = config
        if reference is None and repo is not None:
            reference = cached_snapshot(repo, need_weights=False, allow_pickle=self.allow_pickle)
        native = family.native_size
        if reference is not None:
            missing = missing_components(reference, sf.components, family, pickles=self.allow_pickle)
            if [n for n in missing if n not in family.optional_components] and not (repo and self.allow_download):
                return ModelInfo(spec.id, "diffusers", "single_file", False, native,
                                 missing_parts_message(path, sf, reference, repo, missing), family.arch.value)
            native = native_size_of_folder(reference, family)
        elif not self.allow_download:
            return ModelInfo(spec.id, "diffusers", "single_file", False, native,
                             no_reference_message(path, sf, repo or sf.reference_repo, hub_cache_dir()), family.arch.value)
        info = ModelInfo(spec.id, "diffusers", "single_file", True, native, str(path), family.arch.value)
        weights = single_file_weights(path)
        if weights and reference is not None:  # the parts the file lacks come from the reference
            weights += [w for w in folder_weights(reference) or [] if w.name not in sf.components]
        return self._with_memory(self._described(info, family), family, weights)

    def _folder_info(self, spec: _Spec, folder: Path) -> ModelInfo:
        family, native, problem = _describe(folder)
        if family is None:
            return ModelInfo(spec.id, "diffusers", spec.kind, False, None, problem)
        # Every component with weights, or the engine would fail to load it (an optional
        # one, SD 3's T5, may be missing: the pipeline runs without it).
        missing = [n for n in missing_components(folder, family=family) if n not in family.optional_components]
        if missing and not (spec.kind == "hub" and self.allow_download):
            repo = spec.source if spec.kind == "hub" else None
            return ModelInfo(
                spec.id, "diffusers", spec.kind, False, native,
                f"{folder}: its weights are missing for {missing_parts_text(family, folder, missing, repo)}",
                family.arch.value,
            )
        info = ModelInfo(spec.id, "diffusers", spec.kind, True, native, str(folder), family.arch.value)
        return self._with_memory(self._described(info, family), family, folder_weights(folder))

    def _described(self, info: ModelInfo, family: Family) -> ModelInfo:
        """`families.described`, and with an IP-Adapter configured, SD 1.x and SDXL models
        take reference images (a style reference through it)."""
        out = described(info, family)
        if self.ip_adapter and takes_ip_adapter(family):
            out = replace(out, takes={**out.takes, "reference_image": True})
        return out

    def _with_memory(self, info: ModelInfo, family: Family, weights: Sequence[Weights] | None) -> ModelInfo:
        """`info` with its memory estimates (section 5.3), where its weights are here to read."""
        if not weights:
            return info
        if self.drop_t5:
            weights = [w for w in weights if w.name not in droppable(family)]
        if self.ip_adapter and takes_ip_adapter(family):  # its image encoder rides on the device too
            weights = [*weights, *self._ip_adapter_weights(family)]
        mode = self._memory_modes.get(info.id, self.memory)
        estimate = memory_report(
            weights, family.arch.value, precision=self.precision, free=free_device_memory(self.device),
            memory=mode, quantize=self.quantize, large_text_encoder=family.large_text_encoder or None,
            pixels_ratio=((info.native_size or family.native_size) / family.native_size) ** 2,
        )
        return replace(info, memory=estimate.to_wire())

    def _ip_adapter_weights(self, family: Family) -> tuple[Weights, ...]:
        assert self.ip_adapter is not None
        found: tuple[Weights, ...] = ()
        for name, where in ip_adapter_parts(self.ip_adapter, family, cache_dir=hub_cache_dir()).items():
            try:
                weights = component_weights(name, where)
            except (OSError, ValueError, KeyError, struct.error):
                continue  # unreadable: loading it will say what is wrong
            if weights is not None:
                found += (weights,)
        return found

    def memory_mode(self, model_id: str) -> str:
        """The mode `model_id` is to be loaded in: one an out-of-memory retry stepped down to,
        else --memory, with `auto` resolved from the estimates and the free memory now."""
        spec = self._spec(model_id)
        stepped = self._memory_modes.get(spec.id)
        if stepped is not None:
            return stepped
        if self.memory != "auto":
            return self.memory
        info = self._info(spec)
        return str((info.memory or {}).get("mode") or "gpu")

    def stepped_down(self, model_id: str, mode: str) -> None:
        """An out-of-memory retry moved `model_id` to `mode`: it stays there (listed so) until
        the daemon restarts, since the job that ran out would again."""
        self._memory_modes[self._spec(model_id).id] = mode

    # -- admission and description ---------------------------------------------------

    def admit(self, model_id: str) -> ModelInfo:
        """The model a job may use, or a refusal with the protocol's code: the one place the
        allow-list and the pickle rule are applied to what a client names.  Only models the
        daemon was started with (and the built-in ones) are accepted: a path sent over the
        wire is never opened unless it names one of those."""
        if len(model_id) > MAX_MODEL_CHARS:
            raise EngineError("unknown_model", f"model name is {len(model_id)} characters; no configured model is that long",
                              {"field": "model"})
        try:
            info = self.get(model_id)
        except (ValueError, OSError) as exc:  # e.g. a NUL byte or an over-long path component
            raise EngineError("unknown_model", f"unknown model {model_id!r:.200}: {exc}", {"field": "model"}) from None
        if not info.available:
            if info.kind == "single_file" and is_pickle(info.id) and not self.allow_pickle:
                raise EngineError("model_refused", f"model '{info.id}' is refused: {info.detail}", {"model": info.id})
            raise EngineError("model_unavailable", f"model '{model_id}' is not available: {info.detail}", {"model": model_id})
        return info

    def caps(self, model_id: str) -> ModelCaps:
        """What preparing a job for `model_id` needs, from its description: the family's row
        and the sizes its configs give, never a live engine.  (One exception: a model the
        daemon downloads on first use has no description before that load; its loaded
        engine's, built the same way, stands in.)"""
        spec = self._spec(model_id)
        if spec.kind == "builtin":
            from .engines.classical import caps_of

            return caps_of(spec.id)
        info = self._info(spec)
        if not info.family:
            loaded = self._warm.get(spec.id)
            if loaded is not None:
                return loaded.caps
            raise EngineError("model_unavailable", f"model '{spec.id}': its family is not known yet ({info.detail})")
        return caps_for(FAMILIES[Arch(info.family)], info.native_size, self.compile)

    # -- loading -------------------------------------------------------------------

    def load(self, model_id: str, progress: ProgressFn | None = None) -> Engine:
        """The engine for `model_id`, loading it if needed; diffusion models stay warm, as
        many as the limits allow, the least recently used closed first to make room."""
        spec = self._spec(model_id)
        report = progress or (lambda stage, step, total: None)
        with self._lock:
            if spec.kind == "builtin":
                engine = self._classical.get(spec.id)
                if engine is None:
                    from .engines.classical import ClassicalEngine

                    self.admit(spec.id)
                    report("loading", 0, 1)
                    engine = self._classical[spec.id] = ClassicalEngine(spec.id)
                    report("loading", 1, 1)
                return engine

            warm = self._warm.touch(spec.id)
            if warm is not None:
                return warm

            self.admit(spec.id)

            # Make room first (by count, and by the bytes this model took last time): two
            # pipelines rarely fit in GPU memory together unless the limits say they do.
            self._warm.make_room(spec.id, self._warm.estimate(spec.id), _close)

            report("loading", 0, 1)
            before = _device_allocated(self.device or "cuda")
            engine = self._make_engine(spec)
            nbytes = max(engine_bytes(engine), _device_allocated(engine.device) - before)
            self.engine_notes = [f"{spec.id}: {note}" for note in getattr(engine, "speed_notes", [])]
            for note in self.engine_notes:
                log.info("%s", note)
            log.info("model %s loaded: %.1f MB on %s", spec.id, nbytes / 1e6, engine.device)
            # Then, measured, close more if it does not fit after all (never this one).
            self._warm.add(spec.id, engine, nbytes, _close)
            report("loading", 1, 1)
            return engine

    def _make_engine(self, spec: _Spec) -> Engine:
        """A fresh diffusion engine for `spec` (tests put a stand-in here)."""
        from .engines.diffusers_engine import DiffusersEngine, pick_device
        from .engines.speedups import Speedups

        return DiffusersEngine(
            spec.source,
            model_id=spec.id,
            device=self.device,
            config=self._configs.get(spec.id),
            local_files_only=not self.allow_download,
            cache_dir=hub_cache_dir(),
            allow_pickle=self.allow_pickle,
            speedups=Speedups.default_for(pick_device(self.device), self.compile),
            memory=self.memory_mode(spec.id),
            on_memory_mode=lambda mode: self.stepped_down(spec.id, mode),
            quantize=self.quantize,
            drop_t5=self.drop_t5,
            ip_adapter=self.ip_adapter,
        )

    def close(self) -> None:
        with self._lock:
            for engine in self._warm.pop_all():
                _close(engine)
            for engine in self._classical.values():
                engine.close()
            self._classical.clear()


def _close(engine: Engine) -> None:
    """Evict: the engine lets go of its pipeline and gives back the device's cached memory."""
    engine.close()


def _device_allocated(device: str | None) -> int:
    """CUDA memory allocated by torch now (0 elsewhere, or where torch is not loaded yet):
    a load's delta counts what parameters alone miss (buffers kept outside modules)."""
    import sys

    torch = sys.modules.get("torch")
    if torch is None or not (device or "").startswith("cuda"):
        return 0
    try:
        return int(torch.cuda.memory_allocated(device)) if torch.cuda.is_available() else 0
    except Exception:
        return 0
