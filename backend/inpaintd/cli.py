"""`inpaintd`: the daemon and its command-line client in one tool.

Client commands import neither torch nor diffusers (a CLI call should take a blink, not
the four seconds `import diffusers` costs); only `serve` and `make-test-model` do.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from inpaintd_protocol.client import Client, DaemonUnavailable, Job
from inpaintd_protocol.connection import is_loopback, new_key, resolve_endpoint
from inpaintd_protocol.messages import DEFAULT_ENDPOINT, ENDPOINT_ENV, LIMITS, JobOptions, ProtocolError
from inpaintd_protocol.options import OPTIONS

from . import doctor
from .engines.speedups import COMPILE_MODES
from .memory import MEMORY_CHOICES

ASSETS = Path(__file__).resolve().parent / "assets"


def _add_connect(p: argparse.ArgumentParser) -> None:
    p.add_argument("--connect", metavar="ENDPOINT", help=f"daemon address (default: ${ENDPOINT_ENV}, else {DEFAULT_ENDPOINT})")


def _add_job_options(p: argparse.ArgumentParser) -> None:
    """One flag per job option, made from the option table (inpaintd_protocol.options)."""
    for opt in OPTIONS:
        low, high = opt.bounds(LIMITS)
        kw: dict[str, Any] = {"dest": opt.name, "default": opt.default, "help": opt.help.format(low=low, high=high)}
        if opt.kind is bool:
            kw["action"] = "store_true"
        else:
            kw["type"] = opt.kind
            if opt.choices:
                kw["choices"] = opt.choices
        p.add_argument(opt.cli_flag, **kw)


def _job_options(args: argparse.Namespace) -> JobOptions:
    """The job options the flags of `_add_job_options` gave."""
    return JobOptions(**{opt.name: getattr(args, opt.name) for opt in OPTIONS})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="inpaintd", description="Local inpainting daemon and client.")
    parser.add_argument("-v", "--verbose", action="store_true", help="more logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("serve", help="start the daemon")
    p.add_argument("--bind", default=None, metavar="ENDPOINT",
                   help=f"where to listen (default: ${ENDPOINT_ENV}, else {DEFAULT_ENDPOINT}; ipc:///path works too)")
    p.add_argument("--model", default=None,
                   help="default model: HF repo id, diffusers folder, .safetensors file, or a classical one "
                        "(patchmatch, opencv-telea, opencv-ns, opencv-fsr, opencv-shiftmap, biharmonic)")
    p.add_argument("--extra-model", action="append", default=[], metavar="M", help="another model clients may choose (repeatable)")
    p.add_argument("--engine", choices=["diffusers", "classical"], default=None,
                   help="classical: no weights, the best classical fill installed (--model patchmatch where pypatchmatch is)")
    p.add_argument("--device", default=None, help="cuda, cuda:1, mps or cpu (default: the best available)")
    p.add_argument("--compile", default="off", choices=COMPILE_MODES,
                   help="torch.compile the diffusion model (GPU; e.g. reduce-overhead = CUDA graphs): compiles at load for "
                        "the native size, then each new size or variant count compiles on first use (default %(default)s)")
    p.add_argument("--warm-models", type=int, default=1, metavar="N",
                   help="diffusion models kept loaded at once; loading another closes the least recently used "
                        "(default %(default)s)")
    p.add_argument("--memory-budget-gb", type=float, default=None, metavar="X",
                   help="what the warm diffusion models' weights may take on the device together; past it the least "
                        "recently used is closed (default: no budget, --warm-models alone limits)")
    p.add_argument("--memory", default="auto", choices=MEMORY_CHOICES,
                   help="how diffusion models sit in GPU memory: gpu (all of it), offload (a component at a time), group "
                        "(a block at a time, prefetched), sequential (a layer at a time, slowest); auto picks the first "
                        "whose estimated peak fits the free VRAM (`inpaintd models` shows the estimates; default %(default)s)")
    p.add_argument("--quantize", default="", metavar="PLAN",
                   help="store diffusion weights in fewer bits: METHOD for the denoiser, or COMPONENT=METHOD,... with "
                        "components denoiser (unet/transformer) and text_encoder (the large one: T5 or Qwen) and methods "
                        "none, fp8 (layerwise casting), int8, nf4 (SDNQ), gguf (the weights of a .gguf model file); "
                        "e.g. --quantize int8,text_encoder=nf4 (default: none)")
    p.add_argument("--drop-t5", action="store_true",
                   help="load SD 3.x without its T5 encoder (4.7 B parameters, about 9.5 GB in bf16): prompts are then "
                        "read by the two CLIP encoders alone, 77 tokens at most, weaker on long prompts and drawn text "
                        "(FLUX needs its T5 and keeps it)")
    p.add_argument("--ip-adapter", default=None, metavar="PATH",
                   help="an IP-Adapter (a folder laid out as h94/IP-Adapter, or its Hub id) for SD 1.x/SDXL models: their "
                        "jobs then take reference images as a style reference, weighted by --reference-weight")
    p.add_argument("--model-config", action="append", default=[], metavar="MODEL=CONFIG",
                   help="the diffusers folder or Hub repo id that lays out a single-file model (its configs and the "
                        "parts the file lacks: a FLUX transformer file needs the rest of its pipeline); repeatable")
    p.add_argument("--allow-download", action="store_true", help="let the daemon download missing models from the Hugging Face hub")
    p.add_argument("--allow-pickle", action="store_true", help="accept pickle-based checkpoints (.ckpt, .bin): they can run code")
    p.add_argument("--no-auth", action="store_true", help="do not sign messages (loopback only)")
    p.add_argument("--curve", action="store_true",
                   help="encrypt with ZeroMQ CURVE; the public key goes in the connection file (for a daemon on another machine)")
    p.add_argument("--results-ttl", type=float, default=600.0, help="seconds finished results stay fetchable (default %(default)s)")
    p.add_argument("--results-max-mb", type=float, default=1024.0,
                   help="memory for kept results; past it the oldest go first (default %(default)s)")
    p.add_argument("--peer-timeout", type=float, default=30.0,
                   help="drop a connection that leaves heartbeats unanswered this long, with its queued events (default %(default)s)")
    p.add_argument("--max-message-mb", type=float, default=None,
                   help=f"refuse messages larger than this at the socket (default {LIMITS.max_message_bytes >> 20} MB: the largest canvas)")
    p.add_argument("--data-dir", type=Path, default=None, metavar="DIR",
                   help="where the history and the user's styles live (default: $INPAINTD_DATA_DIR, else the platform's "
                        "data folder, e.g. ~/.local/share/inpaintd)")
    p.add_argument("--history-mb", type=float, default=1024.0, metavar="MB",
                   help="disk the history may take (each job's parameters, thumbnails and pixels); past it the oldest "
                        "unstarred entries go; 0 keeps no history (default %(default)s)")
    p.add_argument("--lora-dir", type=Path, default=None, metavar="DIR",
                   help="the LoRA folder (.safetensors; kohya/A1111 or diffusers format) jobs may use (default: loras/ "
                        "in the data folder)")
    p.add_argument("--embeddings-dir", type=Path, default=None, metavar="DIR",
                   help="the textual-inversion embeddings folder (default: embeddings/ in the data folder)")
    p.add_argument("--vary-subtle", type=float, default=0.35, metavar="S", help="strength of Vary Subtle (default %(default)s)")
    p.add_argument("--vary-strong", type=float, default=0.7, metavar="S", help="strength of Vary Strong (default %(default)s)")
    p.add_argument("--executor", choices=["local", "ray"], default="local",
                   help="where jobs run: local (this process, one at a time) or ray (replicas of a Ray Serve deployment, "
                        "this daemon staying the gateway; needs pip install 'inpaintd[ray]'; docs/studio.md)")
    p.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="with --executor ray: the Ray cluster to join, its head's HOST:PORT (default: start a local one)")
    p.add_argument("--replicas", default="1", metavar="MIN:MAX",
                   help="with --executor ray: engine replicas, N or autoscaled between MIN and MAX on ongoing jobs (default %(default)s)")
    p.add_argument("--gpus-per-replica", type=float, default=None, metavar="F",
                   help="with --executor ray: GPUs each replica reserves; a fraction shares a card (default: 1 where the cluster "
                        "has GPUs, else 0)")

    p = sub.add_parser("inpaint", help="inpaint an image through a running daemon")
    _add_connect(p)
    p.add_argument("--image", required=True, type=Path, help="input image (RGB or RGBA)")
    p.add_argument("--mask", required=True, type=Path, help="mask image, same size: white = regenerate, black = keep, gray = soft")
    p.add_argument("--out", required=True, type=Path, help="output image; with several variants, OUT-1.png, OUT-2.png, ...")
    p.add_argument("--timeout", type=float, default=None, help="give up after this many seconds")
    p.add_argument("--lora", action="append", default=[], metavar="NAME[:WEIGHT]",
                   help="a LoRA from `inpaintd loras` at a weight (default 1; repeatable); <lora:NAME:WEIGHT> in the "
                        "prompt works too")
    p.add_argument("--reference", action="append", default=[], type=Path, metavar="FILE",
                   help="a reference image that conditions the model (repeatable; models whose `inpaintd models` line "
                        "says it takes a reference image: FLUX.1 Kontext, FLUX.2 klein)")
    _add_job_options(p)

    for name, help_ in (("status", "show running and queued jobs"), ("models", "list the daemon's models"),
                        ("shutdown", "stop the daemon"), ("styles", "list the daemon's style presets"),
                        ("loras", "list the daemon's LoRAs and embeddings")):
        _add_connect(sub.add_parser(name, help=help_))

    p = sub.add_parser("train", help="teach the daemon a subject: train a LoRA from 3-30 pictures of it")
    _add_connect(p)
    p.add_argument("--images", required=True, type=Path, metavar="DIR",
                   help="a folder of 3 to 30 pictures of the subject; NAME.mask.png beside NAME.png marks the subject in it")
    p.add_argument("--token", required=True, help="the word prompts will call the subject by, e.g. sks")
    p.add_argument("--class", dest="class_noun", required=True, metavar="NOUN", help="what the subject is, e.g. cat")
    p.add_argument("--out", required=True, metavar="NAME", help="the LoRA's name (a file NAME.safetensors in the LoRA folder)")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--rank", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-4, help="learning rate (default %(default)s)")
    p.add_argument("--resolution", type=int, default=0, metavar="PX", help="training size (default: the model's native size)")
    p.add_argument("--prior-images", type=int, default=0, metavar="N",
                   help="class pictures made by the model for prior preservation (default 0: none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default="", help="model to train on (default: the daemon's default; SD 1.x or SDXL)")
    p.add_argument("--checkpoint-every", type=int, default=100, metavar="K",
                   help="keep a checkpoint every K steps; the same command again resumes from it (default %(default)s)")
    p.add_argument("--timeout", type=float, default=None, help="give up after this many seconds")

    p = sub.add_parser("vary", help="new variants of a result: Vary Subtle/Strong, or Remix with --prompt")
    _add_connect(p)
    p.add_argument("job", help="the job whose result to vary (`inpaintd history` lists them)")
    p.add_argument("--variant", type=int, default=0, metavar="I", help="which variant, from 0 (default %(default)s)")
    strength = p.add_mutually_exclusive_group()
    strength.add_argument("--subtle", dest="preset", action="store_const", const="subtle", default="subtle",
                          help="change it a little (the daemon's --vary-subtle strength; the default)")
    strength.add_argument("--strong", dest="preset", action="store_const", const="strong",
                          help="change it a lot (the daemon's --vary-strong strength)")
    strength.add_argument("--strength", type=float, default=None, help="an explicit strength, 0.01-1")
    _add_derived_flags(p)

    p = sub.add_parser("rerun", help="run a job from the history again: the same pixels, or with options changed")
    _add_connect(p)
    p.add_argument("job")
    _add_derived_flags(p)

    p = sub.add_parser("history", help="list the daemon's history, newest first")
    _add_connect(p)
    p.add_argument("query", nargs="?", default="", help="only entries whose prompt contains this text")
    p.add_argument("--starred", action="store_true", help="only starred entries")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--offset", type=int, default=0)
    for name, help_ in (("star", "keep a history entry whatever the history's budget"),
                        ("unstar", "let a history entry be evicted again")):
        p = sub.add_parser(name, help=help_)
        _add_connect(p)
        p.add_argument("job")
    p = sub.add_parser("fetch", help="write the result of a job (kept or in the history) as images")
    _add_connect(p)
    p.add_argument("job")
    p.add_argument("--out", required=True, type=Path, help="output image; with several variants, OUT-1.png, ...")
    p.add_argument("--image", type=Path, default=None,
                   help="the image the job was made on: write each variant composited into it (default: the layers alone)")
    p = sub.add_parser("cancel", help="cancel a queued or running job")
    _add_connect(p)
    p.add_argument("job", help="job id, as printed by `inpaintd inpaint` or `inpaintd status`")

    p = sub.add_parser("make-test-model", help="write a tiny random inpainting pipeline (for tests and offline trials)")
    p.add_argument("dir", type=Path)
    from .testmodel import TEST_FAMILIES  # standard library only at import: no diffusers here

    p.add_argument("--family", choices=TEST_FAMILIES, default="sd",
                   help="model family to lay out: sd (SD 1.5), sdxl, sd3 (SD 3.5), flux-fill, flux-kontext, flux2-klein, "
                        "qwen-edit (Qwen-Image-Edit), z-image (Z-Image), chroma (Chroma) (default %(default)s)")

    p = sub.add_parser("demo", help="start a daemon if none runs, inpaint the bundled photo, write the results")
    _add_connect(p)
    p.add_argument("--out", type=Path, default=Path("out"), help="folder for the results (default %(default)s)")
    p.add_argument("--model", default="", help="model to use (default: the daemon's default)")
    p.add_argument("--variants", type=int, default=2)
    p.add_argument("--prompt", default="an empty red saucer on a wooden table")
    p.add_argument("--test-model", action="store_true",
                   help="run the diffusion path on the tiny random pipeline (no weights needed; the pixels are noise)")

    p = sub.add_parser("install-krita", help="install the Krita plugin")
    p.add_argument("--dest", type=Path, default=None, help="pykrita folder (default: Krita's own for this user)")
    p = sub.add_parser("install-gimp", help="install the GIMP 3 plug-in")
    p.add_argument("--dest", type=Path, default=None, help="plug-ins folder (default: GIMP 3's own for this user)")
    p = sub.add_parser("doctor", help="check torch, models, editors, plugins and the daemon; say how to fix each problem")
    doctor.add_arguments(p)
    for editor in ("krita", "gimp"):
        p = sub.add_parser(f"package-{editor}", help=f"build the {editor.capitalize()} plugin zip for official builds "
                           "(carries pyzmq for each platform's bundled Python)")
        p.add_argument("--out", type=Path, default=Path("dist"), help="folder for the zip (default: dist)")
        p.add_argument("--python", action="append", default=[], metavar="X.Y",
                       help="also carry pyzmq for this Python on every platform (repeatable)")
        p.add_argument("--platform", action="append", default=[], metavar="OS-ARCH",
                       help="only these platforms: windows-x86_64, macos-arm64, macos-x86_64, linux-x86_64 (repeatable)")
        p.add_argument("--wheel-cache", type=Path, default=None,
                       help="where downloaded wheels are kept (default: ~/.cache/inpaintd/wheels)")
    return parser


def _add_derived_flags(p: argparse.ArgumentParser) -> None:
    """vary's and rerun's options: what to change, and where the results go."""
    p.add_argument("--prompt", default=None, help="a new prompt (Remix)")
    p.add_argument("--negative-prompt", default=None)
    p.add_argument("--style", default=None, help="a style preset (`inpaintd styles`)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--variants", type=int, default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--model", default=None)
    loras = p.add_mutually_exclusive_group()
    loras.add_argument("--lora", action="append", default=None, metavar="NAME[:WEIGHT]",
                       help="LoRAs instead of the job's (repeatable; default: the job's own)")
    loras.add_argument("--no-loras", action="store_true", help="without the job's LoRAs")
    references = p.add_mutually_exclusive_group()
    references.add_argument("--reference", action="append", default=None, type=Path, metavar="FILE",
                            help="reference images instead of the job's (repeatable; default: the job's own)")
    references.add_argument("--no-references", action="store_true", help="without the job's reference images")
    p.add_argument("--reference-weight", type=float, default=None, help="how strongly the references steer, 0-2")
    p.add_argument("--out", required=True, type=Path, help="output image; with several variants, OUT-1.png, ...")
    p.add_argument("--image", type=Path, default=None,
                   help="the image the job was made on: write each variant composited into it (default: the layers alone)")
    p.add_argument("--timeout", type=float, default=None)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    command = args.command.replace("-", "_")
    try:
        return int(globals()[f"cmd_{command}"](args) or 0)
    except DaemonUnavailable as exc:
        print(f"inpaintd: {exc.message}", file=sys.stderr)
        return 2
    except ProtocolError as exc:
        print(f"inpaintd: error [{exc.code}]: {exc.message}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:
        print(f"inpaintd: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


# -- serve ---------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace, wrap_registry: Callable[[Any], Any] | None = None) -> int:
    """`wrap_registry`: called with the model registry before the daemon gets it (the test
    suite's fault injection adds its model this way, tests/faults.py)."""
    from .daemon import Daemon, install_signal_handlers
    from .history import History
    from .loras import Library
    from .models import ModelRegistry
    from .paths import data_dir
    from .styles import Styles

    endpoint = resolve_endpoint(args.bind, use_connection_file=False)
    if args.no_auth and not is_loopback(endpoint):
        print(f"inpaintd: refusing to listen on {endpoint} without authentication; drop --no-auth or bind 127.0.0.1", file=sys.stderr)
        return 2
    if args.no_auth and args.curve:
        print("inpaintd: --curve needs authentication (the connection file carries its key); drop --no-auth", file=sys.stderr)
        return 2
    if not is_loopback(endpoint) and not args.curve:
        logging.getLogger("inpaintd").warning(
            "listening on %s, which other machines can reach: messages are signed but not encrypted; "
            "add --curve to encrypt them", endpoint)
    if args.warm_models < 1 or (args.memory_budget_gb is not None and args.memory_budget_gb <= 0):
        print("inpaintd: --warm-models must be at least 1 and --memory-budget-gb positive", file=sys.stderr)
        return 2
    try:
        model_args = _model_args(args)
    except ValueError as exc:
        print(f"inpaintd: {exc}", file=sys.stderr)
        return 2
    registry = ModelRegistry(**model_args)
    if args.model and registry.default_model_id != registry.get(args.model).id:
        info = registry.get(args.model)
        print(f"inpaintd: model '{args.model}' is not available: {info.detail}", file=sys.stderr)
        return 2
    for notice in registry.notices:
        logging.getLogger("inpaintd").warning("%s", notice)
    if wrap_registry is not None:
        registry = wrap_registry(registry)
    executor = None
    if args.executor == "ray":
        try:
            executor = _ray_executor(args, registry.default_model_id)
        except (ImportError, ValueError) as exc:
            print(f"inpaintd: {exc}", file=sys.stderr)
            return 2
    key = None if args.no_auth else (os.environ.get("INPAINTD_KEY", "").encode("ascii") or new_key())
    for name in ("vary_subtle", "vary_strong"):
        if not 0.01 <= getattr(args, name) <= 1.0:
            print(f"inpaintd: --{name.replace('_', '-')} must be between 0.01 and 1", file=sys.stderr)
            return 2
    data = args.data_dir or data_dir()
    history = None if args.history_mb <= 0 else History(data / "history", int(args.history_mb * (1 << 20)))
    try:
        limits = (LIMITS if args.max_message_mb is None
                  else dataclasses.replace(LIMITS, max_message_bytes=int(args.max_message_mb * (1 << 20))))
        daemon = Daemon(
            registry, endpoint, key=key, limits=limits, results_ttl=args.results_ttl,
            results_max_bytes=int(args.results_max_mb * (1 << 20)), curve=args.curve, peer_timeout=args.peer_timeout,
            executor=executor, history=history, styles=Styles(data / "styles"),
            vary_strengths=(args.vary_subtle, args.vary_strong),
            library=Library(args.lora_dir or data / "loras", args.embeddings_dir or data / "embeddings", args.allow_pickle),
            data_dir=data,
        )
    except ValueError as exc:
        print(f"inpaintd: {exc}", file=sys.stderr)
        return 2
    install_signal_handlers(daemon)
    daemon.serve_forever()
    return 0


def _model_args(args: argparse.Namespace) -> dict[str, Any]:
    """ModelRegistry's keyword arguments from serve's flags: the gateway's registry and each
    Ray replica's are built from the same.  ValueError names a malformed flag."""
    from .engines.quantize import parse_quantize
    from .models import fallback_model

    configs: dict[str, str] = {}
    for item in args.model_config:
        model, sep, config = item.rpartition("=")
        if not sep or not model or not config:
            raise ValueError(f"--model-config wants MODEL=CONFIG (a diffusers folder or repo id), not '{item}'")
        configs[model] = config
    default = fallback_model() if args.engine == "classical" and not args.model else args.model
    return {
        "models": [m for m in [args.model, *args.extra_model] if m], "default": default,
        "allow_download": args.allow_download, "device": args.device, "allow_pickle": args.allow_pickle,
        "configs": configs, "compile": args.compile, "warm_models": args.warm_models,
        "memory_budget_bytes": _budget_bytes(args), "memory": args.memory, "quantize": parse_quantize(args.quantize),
        "drop_t5": args.drop_t5, "ip_adapter": args.ip_adapter,
    }


def _budget_bytes(args: argparse.Namespace) -> int | None:
    return None if args.memory_budget_gb is None else int(args.memory_budget_gb * (1 << 30))


def _ray_executor(args: argparse.Namespace, preload: str) -> Any:
    """The executor `--executor ray` asks for: replicas built from the same model arguments
    as this daemon's registry.  Ray is imported only here, only for it."""
    from .ray_executor import RayExecutor, RayOptions, parse_replicas, require_ray

    require_ray()
    low, high = parse_replicas(args.replicas)
    registry_args = _model_args(args)
    options = RayOptions(address=args.ray_address, min_replicas=low, max_replicas=high, gpus_per_replica=args.gpus_per_replica)
    return RayExecutor(registry_args, options, preload=preload)


def cmd_make_test_model(args: argparse.Namespace) -> int:
    from .testmodel import make_family_test_model

    path = make_family_test_model(args.dir, args.family)
    print(f"wrote a tiny random {args.family} inpainting pipeline to {path}; serve it with: inpaintd serve --model {path}")
    return 0


# -- client commands -------------------------------------------------------------------------


class ProgressBar:
    """One line on stderr, redrawn in place; silent when stderr is not a terminal but for stage changes."""

    def __init__(self, stream=sys.stderr) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.last_stage = ""

    def __call__(self, job: Job, _msg: Any) -> None:
        if job.state == "queued":
            # The daemon says when the job's place in the queue changes.
            line = f"queued, {job.position} job(s) ahead"
            if self.tty:
                self.stream.write(f"\r{line:<60}")
                self.stream.flush()
            else:
                self.stream.write(line + "\n")
            return
        if job.state != "running":
            return
        total = max(job.total_steps, 1)
        if self.tty:
            filled = int(30 * job.step / total)
            line = f"\r[{'#' * filled}{'.' * (30 - filled)}] {job.stage:<11} {job.step}/{job.total_steps}  {job.elapsed:5.1f} s"
            self.stream.write(line)
            self.stream.flush()
        elif job.stage != self.last_stage:
            self.stream.write(f"{job.stage}...\n")
        self.last_stage = job.stage

    def done(self) -> None:
        if self.tty:
            self.stream.write("\n")


def _load_pixels(image_path: Path, mask_path: Path) -> tuple[bytes, int, int, int, bytes]:
    from PIL import Image

    with Image.open(image_path) as im:
        im.load()
        image = im.convert("RGBA") if "A" in im.getbands() else im.convert("RGB")
    with Image.open(mask_path) as m:
        mask = m.convert("L")
    if mask.size != image.size:
        raise ValueError(f"mask {mask_path} is {mask.size[0]}x{mask.size[1]} but image {image_path} is {image.size[0]}x{image.size[1]}")
    return image.tobytes(), image.width, image.height, len(image.getbands()), mask.tobytes()


def _out_paths(out: Path, n: int) -> list[Path]:
    if n == 1:
        return [out]
    return [out.with_name(f"{out.stem}-{i + 1}{out.suffix}") for i in range(n)]


def write_variants(job: Job, image_path: Path, out: Path) -> list[Path]:
    """Each variant as the full image with its region composited in."""
    from PIL import Image

    with Image.open(image_path) as im:
        im.load()
        base = im.convert("RGBA") if "A" in im.getbands() else im.convert("RGB")
    paths = _out_paths(out, len(job.layers))
    out.parent.mkdir(parents=True, exist_ok=True)
    for layer, path in zip(job.layers, paths, strict=True):
        # PIL reads any buffer (a memoryview here, no copy); its annotation names bytes only
        tile = Image.frombuffer("RGBA", (layer.width, layer.height), layer.data, "raw", "RGBA", layer.stride, 1)  # type: ignore[arg-type]
        full = base.copy()
        # The layer already holds source pixels outside the mask, alpha included: replace, do not blend.
        full.paste(tile.convert(full.mode), (layer.x, layer.y))
        full.save(path)
    return paths


def _load_reference(path: Path) -> tuple[bytes, int, int, int]:
    """A reference image as the protocol carries it: RGB or RGBA bytes, tightly packed."""
    from PIL import Image

    with Image.open(path) as im:
        rgb = im.convert("RGBA" if "A" in im.getbands() else "RGB")
    return rgb.tobytes(), rgb.width, rgb.height, len(rgb.getbands())


def cmd_inpaint(args: argparse.Namespace) -> int:
    data, width, height, channels, mask = _load_pixels(args.image, args.mask)
    options = _job_options(args)
    bar = ProgressBar()
    with Client(args.connect, name="inpaintd-cli") as client:
        job = client.submit(data, width, height, channels, mask, options,
                            references=[_load_reference(path) for path in args.reference],
                            loras=[_lora_arg(text) for text in args.lora])
        print(f"job {job.id} accepted (queue position {job.position})", file=sys.stderr)
        try:
            client.wait(job, args.timeout, on_event=bar)
        except KeyboardInterrupt:
            bar.done()
            client.cancel(job)
            print(f"job {job.id} cancelled", file=sys.stderr)
            return 130
        bar.done()
        job.raise_for_error()
    paths = write_variants(job, args.image, args.out)
    timings = job.result.get("timings", {})
    for layer, path in zip(job.layers, paths, strict=True):
        print(f"{path}  seed {layer.seed}  region {layer.width}x{layer.height} at ({layer.x}, {layer.y})")
    print(f"model {job.result.get('model')} on {job.result.get('device')}: {timings.get('elapsed', 0):.2f} s", file=sys.stderr)
    for note in job.notes_for_user(options.prompt):
        print(f"note: {note}", file=sys.stderr)
    return 0


def _training_pictures(folder: Path) -> tuple[list[tuple[bytes, int, int, int]], list[bytes | None]]:
    """The pictures in `folder` (sorted by name) and, for each, its NAME.mask.png or None."""
    from PIL import Image

    suffixes = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in suffixes and not p.name.lower().endswith(".mask.png"))
    images: list[tuple[bytes, int, int, int]] = []
    masks: list[bytes | None] = []
    for path in files:
        with Image.open(path) as im:
            rgb = im.convert("RGBA" if "A" in im.getbands() else "RGB")
        images.append((rgb.tobytes(), rgb.width, rgb.height, len(rgb.getbands())))
        mask_path = path.with_name(f"{path.stem}.mask.png")
        if mask_path.is_file():
            with Image.open(mask_path) as m:
                gray = m.convert("L")
            if gray.size != rgb.size:
                raise ValueError(f"mask {mask_path} is {gray.width}x{gray.height} but {path} is {rgb.width}x{rgb.height}")
            masks.append(gray.tobytes())
        else:
            masks.append(None)
    return images, masks


def cmd_train(args: argparse.Namespace) -> int:
    images, masks = _training_pictures(args.images)
    settings = {"steps": args.steps, "rank": args.rank, "learning_rate": args.lr, "resolution": args.resolution,
                "prior_images": args.prior_images, "seed": args.seed, "checkpoint_every": args.checkpoint_every}
    if args.model:
        settings["model"] = args.model
    tty = sys.stderr.isatty()

    def show(job: Job, _msg: Any) -> None:
        if job.stage == "preparing":
            line = f"making class pictures {job.step}/{job.total_steps}"
        elif job.stage == "training":
            filled = int(30 * job.step / max(job.total_steps, 1))
            line = (f"[{'#' * filled}{'.' * (30 - filled)}] step {job.step}/{job.total_steps}  loss {job.loss or 0:.4f}  "
                    f"{job.remaining or 0:5.0f} s left")
        else:
            return
        if tty:
            sys.stderr.write(f"\r{line}")
            sys.stderr.flush()
        elif job.step == job.total_steps or job.step % 50 == 0:
            sys.stderr.write(line + "\n")

    with Client(args.connect, name="inpaintd-cli") as client:
        job = client.train(images, args.token, args.class_noun, args.out, masks=masks if any(masks) else (), **settings)
        print(f"training job {job.id} accepted: {len(images)} pictures of '{args.token} {args.class_noun}'", file=sys.stderr)
        try:
            client.wait(job, args.timeout, on_event=show)
        except KeyboardInterrupt:
            client.cancel(job)
            print(f"\ntraining job {job.id} cancelled; the same command resumes from its last checkpoint", file=sys.stderr)
            return 130
        if tty:
            sys.stderr.write("\n")
        job.raise_for_error()
    made = job.result.get("trained") or {}
    for note in job.result.get("notes") or []:
        print(f"note: {note}", file=sys.stderr)
    print(f"LoRA '{made.get('name')}' written to {made.get('path')} after {made.get('steps')} steps (final loss "
          f"{made.get('final_loss', 0):.4f}); use it with --lora {made.get('name')} or <lora:{made.get('name')}:1> and "
          f"'{args.token} {args.class_noun}' in the prompt")
    return 0


def _derived_options(args: argparse.Namespace) -> dict[str, Any]:
    names = ("prompt", "negative_prompt", "style", "seed", "variants", "steps", "model", "reference_weight")
    return {n: getattr(args, n) for n in names if getattr(args, n) is not None}


def _derived_addons(args: argparse.Namespace) -> dict[str, Any]:
    """vary's and rerun's `loras` and `references`: left out (the job's own) unless given."""
    out: dict[str, Any] = {}
    if args.no_loras or args.lora:
        out["loras"] = [] if args.no_loras else [_lora_arg(text) for text in args.lora]
    if args.no_references or args.reference:
        out["references"] = [] if args.no_references else [_load_reference(path) for path in args.reference]
    return out


def _run_and_write(client: Client, job: Job, args: argparse.Namespace) -> int:
    print(f"job {job.id} accepted (queue position {job.position})", file=sys.stderr)
    bar = ProgressBar()
    client.wait(job, args.timeout, on_event=bar)
    bar.done()
    job.raise_for_error()
    _write_result(job, args.out, args.image)
    return 0


def _write_result(job: Job, out: Path, image: Path | None) -> None:
    """Each variant composited into `image`, or as its layer alone (RGBA, its place printed)."""
    if image is not None:
        paths = write_variants(job, image, out)
    else:
        from PIL import Image

        paths = _out_paths(out, len(job.layers))
        out.parent.mkdir(parents=True, exist_ok=True)
        for layer, path in zip(job.layers, paths, strict=True):
            Image.frombuffer("RGBA", (layer.width, layer.height), layer.tight_bytes(), "raw", "RGBA", 0, 1).save(path)
    for layer, path in zip(job.layers, paths, strict=True):
        print(f"{path}  seed {layer.seed}  region {layer.width}x{layer.height} at ({layer.x}, {layer.y})")
    for note in job.result.get("notes", []):
        print(f"note: {note}", file=sys.stderr)


def cmd_vary(args: argparse.Namespace) -> int:
    with Client(args.connect, name="inpaintd-cli") as client:
        job = client.vary(args.job, args.variant, preset=args.preset, strength=args.strength,
                          options=_derived_options(args), **_derived_addons(args))
        return _run_and_write(client, job, args)


def cmd_rerun(args: argparse.Namespace) -> int:
    with Client(args.connect, name="inpaintd-cli") as client:
        return _run_and_write(client, client.rerun(args.job, _derived_options(args), **_derived_addons(args)), args)


def cmd_history(args: argparse.Namespace) -> int:
    with Client(args.connect, name="inpaintd-cli") as client:
        page = client.history(args.query, offset=args.offset, limit=args.limit, starred=args.starred)
    if page.get("max_bytes") is not None:
        print(f"{page['total']} entr{'y' if page['total'] == 1 else 'ies'}"
              f"{' matching ' + repr(args.query) if args.query else ''}; history {page.get('bytes', 0) / 1e6:.1f} of "
              f"{page['max_bytes'] / 1e6:.0f} MB")
    for e in page["entries"]:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(e["created"]))
        star = "*" if e["starred"] else " "
        seeds = ", ".join(str(v["seed"]) for v in e["variants"])
        origin = f" ({e['kind']} of {e['parent']} #{e['parent_variant']})" if e["kind"] == "vary" else (
            f" (rerun of {e['parent']})" if e["kind"] == "rerun" else "")
        kept = "" if e["pixels_kept"] else "  [pixels not kept]"
        print(f"{star} {e['job']}  {when}  {Path(e['model']).name}  seeds {seeds}{origin}{kept}")
        print(f"    {e['prompt'][:100]!r}{_addons_text(e)}")
    return 0


def _addons_text(entry: dict[str, Any]) -> str:
    """A history entry's LoRAs and reference images, as vary and rerun will use them again."""
    loras = ", ".join(f"{a.get('name')} {a.get('weight', 1.0):g}" for a in entry.get("loras") or [])
    refs = int(entry.get("references") or 0)
    parts = ([f"LoRA {loras}"] if loras else []) + ([f"{refs} reference image{'s' if refs != 1 else ''}"] if refs else [])
    return f"  ({'; '.join(parts)})" if parts else ""


def cmd_star(args: argparse.Namespace, on: bool = True) -> int:
    with Client(args.connect, name="inpaintd-cli") as client:
        entry = client.star(args.job, on)
    print(f"job {entry['job']}: {'starred' if entry['starred'] else 'not starred'}")
    return 0


def cmd_unstar(args: argparse.Namespace) -> int:
    return cmd_star(args, on=False)


def cmd_fetch(args: argparse.Namespace) -> int:
    with Client(args.connect, name="inpaintd-cli") as client:
        job = client.fetch(args.job).raise_for_error()
    _write_result(job, args.out, args.image)
    return 0


def cmd_styles(args: argparse.Namespace) -> int:
    with Client(args.connect, name="inpaintd-cli") as client:
        styles = client.styles()
    for s in styles:
        settings = ", ".join(f"{k} {v}" for k, v in s["settings"].items())
        print(f"{s['name']:<20} {s['source']:<8} {s['description']}")
        if s["prompt"] or settings:
            print(f"    {s['prompt']!r}{'; ' + settings if settings else ''}")
        if s["problem"]:
            print(f"    unusable: {s['problem']}")
    return 0


def _lora_arg(text: str) -> tuple[str, float]:
    name, sep, weight = text.rpartition(":")
    if not sep:
        return text, 1.0
    try:
        return name, float(weight)
    except ValueError:
        return text, 1.0  # a name with a colon in it


def cmd_loras(args: argparse.Namespace) -> int:
    with Client(args.connect, name="inpaintd-cli") as client:
        body = client.request("loras").body
    for kind, folder in (("loras", body.get("lora_dir", "")), ("embeddings", body.get("embeddings_dir", ""))):
        print(f"{kind} in {folder}:" if body.get(kind) else f"{kind}: none in {folder}")
        for a in body.get(kind, []):
            words = f"  triggers: {', '.join(a['trigger_words'])}" if a["trigger_words"] else ""
            state = f"  unusable: {a['problem']}" if a["problem"] else ""
            print(f"  {a['name']:<30} {a['family'] or '?':<6} {a['format']:<9} weight {a['default_weight']:g}  "
                  f"{a['bytes'] / 1e6:.1f} MB{words}{state}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    with Client(args.connect, name="inpaintd-cli") as client:
        st = client.status(timeout=3.0)
    print(f"inpaintd {st['daemon_version']} at {client.endpoint}: up {st['uptime']:.0f} s, device {st['device']}, "
          f"default model {st['default_model']}")
    for kind in ("running", "queued"):
        for j in st[kind]:
            print(f"  {kind:<8} {j['job']}  {j['width']}x{j['height']}  {j['model']}  {j['stage']} {j['step']}/{j['total_steps']}  "
                  f"{j['prompt'][:40]!r}")
    if not st["running"] and not st["queued"]:
        print("  idle")
    for w in st.get("warm_models", []):  # an older daemon sends none
        print(f"  warm     {w['model']}  {w['device']}  {w['bytes'] / 1e6:.1f} MB  used {w['last_used']:.0f} s ago")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    with Client(args.connect, name="inpaintd-cli") as client:
        body = client.request("list_models").body
    for m in body["models"]:
        mark = "*" if m["id"] == body["default"] else " "
        state = "ready" if m["available"] else "missing"
        print(f"{mark} {m['id']:<55} {m['engine']:<10} {state:<8} {m['detail']}")
        for line in _model_lines(m):
            print(f"      {line}")
    return 0


def _model_lines(m: dict[str, Any]) -> list[str]:
    """A model's family defaults and memory estimates, for `inpaintd models` (older daemons
    send neither)."""
    lines = []
    defaults = m.get("defaults") or {}
    if m.get("label") and defaults:
        takes = [k.replace("_", " ") for k, v in (m.get("takes") or {}).items() if v]
        lines.append(
            f"{m['label']}: {defaults.get('steps')} steps, guidance {defaults.get('guidance_scale')}, "
            f"size multiple {m.get('size_multiple')}; takes {', '.join(takes) or 'a prompt only'}"
        )
    mem = m.get("memory")
    if mem:
        gb = {k: v / 1e9 for k, v in mem["peak"].items()}
        lines.append(
            f"{mem['parameters'] / 1e9:.2f} B parameters, {mem['bytes']['bf16'] / 1e9:.1f} GB in bf16; estimated peak "
            + ", ".join(f"{k} {v:.1f} GB" for k, v in gb.items())
            + f"; mode {mem['mode']} (auto: {mem['reason']})"
        )
    return lines


def cmd_cancel(args: argparse.Namespace) -> int:
    with Client(args.connect, name="inpaintd-cli") as client:
        reply = client.cancel(args.job)
    print(f"job {reply['job']}: {reply['state']}")
    return 0


def cmd_shutdown(args: argparse.Namespace) -> int:
    with Client(args.connect, name="inpaintd-cli") as client:
        client.shutdown()
    print("daemon shutting down")
    return 0


def _wait_for_connection_file(endpoint: str, proc: subprocess.Popen, since: float, timeout: float = 60.0) -> None:
    """A daemon we just started writes its key there; a client made earlier would sign with none."""
    from inpaintd_protocol.connection import connection_file

    path = connection_file(endpoint)
    deadline = time.monotonic() + timeout
    while not path.exists() or path.stat().st_mtime < since:
        if proc.poll() is not None:
            raise ProtocolError("daemon_exited", f"the daemon exited with status {proc.returncode} before it was ready")
        if time.monotonic() > deadline:
            raise ProtocolError("daemon_unavailable", f"the daemon did not write {path} within {timeout:.0f} s")
        time.sleep(0.05)


def cmd_demo(args: argparse.Namespace) -> int:
    """The README's first command: a real inpaint of a real photo, end to end."""
    endpoint = resolve_endpoint(args.connect)
    started: subprocess.Popen | None = None
    with Client(endpoint, name="inpaintd-demo") as probe:
        try:
            probe.ping(timeout=1.0)
            print(f"using the daemon already running at {endpoint}")
        except DaemonUnavailable:
            probe.close()
            print(f"starting a daemon at {endpoint} ...")
            since = time.time() - 1.0
            serve = [sys.executable, "-m", "inpaintd", "serve", "--bind", endpoint]
            if args.test_model:
                from .testmodel import make_test_model

                folder = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "inpaintd" / "tiny-inpaint"
                if not (folder / "model_index.json").exists():
                    make_test_model(folder)
                serve += ["--model", str(folder)]
            started = subprocess.Popen(serve)
            _wait_for_connection_file(endpoint, started, since)
    try:
        with Client(endpoint, name="inpaintd-demo") as client:
            hello = client.hello(timeout=120.0)
            for notice in hello.get("notices", []):
                print(f"notice: {notice}")
            print(f"daemon {hello['daemon_version']} on {hello['device']}, default model {hello['default_model']}")
            data, width, height, channels, mask = _load_pixels(ASSETS / "coffee.jpg", ASSETS / "coffee-spoon-mask.png")
            # A deterministic engine makes one variant whatever is asked, and says so in the
            # result's notes (printed below), as it does for every client.
            options = JobOptions(prompt=args.prompt, variants=args.variants, seed=1234, model=args.model)
            bar = ProgressBar()
            t0 = time.perf_counter()
            job = client.submit(data, width, height, channels, mask, options)
            client.wait(job, on_event=bar).raise_for_error()
            bar.done()
            paths = write_variants(job, ASSETS / "coffee.jpg", args.out / "coffee.png")
            photo = ASSETS / "coffee.jpg"
            shown = os.path.relpath(photo) if photo.is_relative_to(Path.cwd()) else photo
            print(f"inpainted the spoon out of {shown} with {job.result['model']} in {time.perf_counter() - t0:.2f} s:")
            for layer, path in zip(job.layers, paths, strict=True):
                print(f"  {path}  (seed {layer.seed}, region {layer.width}x{layer.height} at {layer.x},{layer.y})")
            for note in job.notes_for_user(args.prompt):
                print(f"note: {note}")
    finally:
        if started:
            with Client(endpoint, name="inpaintd-demo") as client:
                try:
                    client.shutdown(timeout=5.0)
                except ProtocolError:
                    started.terminate()
            started.wait(timeout=30)
    return 0


def cmd_install_krita(args: argparse.Namespace) -> int:
    from .install_krita import install

    return install(args.dest)


def cmd_install_gimp(args: argparse.Namespace) -> int:
    from .install_gimp import install

    return install(args.dest)


def cmd_doctor(args: argparse.Namespace) -> int:
    return doctor.main(args)


def cmd_package_krita(args: argparse.Namespace) -> int:
    return _package(args, "krita")


def cmd_package_gimp(args: argparse.Namespace) -> int:
    return _package(args, "gimp")


def _package(args: argparse.Namespace, editor: str) -> int:
    from . import packaging

    table = packaging.KRITA_TARGETS if editor == "krita" else packaging.GIMP_TARGETS
    build = packaging.build_krita if editor == "krita" else packaging.build_gimp
    try:
        targets = packaging.select_targets(table, args.python, args.platform)
        print(f"fetching pyzmq wheels for {len(targets)} editor builds ({packaging.PYZMQ_SPEC})...", file=sys.stderr)
        built = build(args.out, targets, cache=args.wheel_cache)
    except packaging.PackagingError as exc:
        print(f"inpaintd: {exc}", file=sys.stderr)
        return 1
    print(built.summary())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
