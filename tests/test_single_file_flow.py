"""SD 3.5, FLUX.1, Z-Image, Chroma, FLUX.2 klein and Qwen-Image-Edit single files and GGUF
transformers, as people download them (#11).

The tiny SD 3, FLUX.1 Fill and Kontext, Z-Image, Chroma, FLUX.2 klein and Qwen-Image-Edit
pipelines are written in the original layouts (`single_file_layouts.py`: Stability's SD 3.x
file with its VAE, BFL's bare FLUX.1 and FLUX.2 klein transformers, lodestones' bare Chroma
one, ComfyUI's prefixed FLUX.1, FLUX.2 klein, Qwen-Image-Edit and Z-Image ones, city96's
GGUFs), and each is:

- recognised from its tensors, shapes and metadata, never its name (a file renamed to
  another family's name is still what it is);
- laid out by diffusers into the tiny model's very tensors (the layouts round-trip);
- loaded by the engine with the rest of its pipeline from the family's reference repo in
  an offline hub cache (a fake snapshot with only the parts the file lacks) or from a
  config folder, and run: the same pixels as the diffusers folder it came from.  A GGUF's
  Q8_0 weights are the folder's within Q8_0's rounding (half a step of 1/127 of each
  32-value block's largest weight), so its pixels are close, not equal (see below).
- refused, where something is missing, with a message that names each missing part and how
  to get it, and says which part is optional (SD 3's T5).

diffusers' FLUX converter assumes FLUX.1's width (3072); the tiny FLUX is 32 wide, so FLUX
loads run under `flux_converter_for_any_width` (the same converter, the width read from the
file).  A daemon process cannot take that patch, so the over-the-socket job runs on the SD 3
files, which diffusers converts for any width.  Its FLUX.2 converter needs no width (klein's
single blocks stay fused) and Qwen-Image's mapping is the identity: those need no patch, but
neither takes ComfyUI's prefix off, which the engine does (`transformer_source`).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("diffusers")
pytest.importorskip("gguf")
torch = pytest.importorskip("torch")

from daemons import start_daemon  # noqa: E402
from engine_calls import call, generate  # noqa: E402
from single_file_layouts import (  # noqa: E402
    DENOISER_PREFIX,
    flux_converter_for_any_width,
    gguf_of,
    install_reference,
    write_chroma_file,
    write_flux2_file,
    write_flux_file,
    write_gguf,
    write_qwen_file,
    write_sd3_file,
    write_z_image_file,
)

from inpaintd.engines.base import EngineError  # noqa: E402
from inpaintd.engines.diffusers_engine import DiffusersEngine, transformer_source  # noqa: E402
from inpaintd.families import Arch, inspect_single_file, read_single_file_header, single_file_problem  # noqa: E402
from inpaintd.models import ModelRegistry  # noqa: E402
from inpaintd.testmodel import TEST_NATIVE_SIZE, make_family_test_model  # noqa: E402
from inpaintd_protocol.messages import JobOptions  # noqa: E402

SIZE = TEST_NATIVE_SIZE
SD3_REPO = "stabilityai/stable-diffusion-3.5-large"
FILL_REPO = "black-forest-labs/FLUX.1-Fill-dev"
KONTEXT_REPO = "black-forest-labs/FLUX.1-Kontext-dev"
Z_IMAGE_REPO = "Tongyi-MAI/Z-Image-Turbo"
CHROMA_REPO = "lodestones/Chroma1-HD"
KLEIN_REPO = "black-forest-labs/FLUX.2-klein-4B"
QWEN_EDIT_REPO = "Qwen/Qwen-Image-Edit"
FLUX_PARTS = ("vae", "text_encoder", "text_encoder_2")
SD3_TEXT_ENCODERS = ("text_encoder", "text_encoder_2", "text_encoder_3")

#: A GGUF Q8_0 job against the folder's, in 0-255 levels over all pixels: measured here at
#: a mean of about 0.1 and a maximum of 3 (2 steps, 64 px).  Q8_0 stores each 32-value
#: block as int8 times an fp16 scale, a relative rounding of about 0.4 % per weight, which
#: the two steps and the VAE carry into the pixels; a different seed differs by about 40.
GGUF_MEAN, GGUF_MAX = 1.0, 16


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("flow-folders")
    return {f: make_family_test_model(root / f, f)
            for f in ("sd3", "flux-fill", "flux-kontext", "z-image", "chroma", "flux2-klein", "qwen-edit")}


@pytest.fixture(scope="module")
def files(folders: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The files, each named as if it were another family's, so that only its contents can tell."""
    out = tmp_path_factory.mktemp("files")
    return {
        # Stability's sd3.5_large.safetensors: MMDiT + VAE
        "sd3": write_sd3_file(folders["sd3"], out / "flux1-fill-dev.safetensors"),
        # BFL's flux1-fill-dev.safetensors: the transformer alone, bare names
        "fill": write_flux_file(folders["flux-fill"], out / "sd3.5_large.safetensors"),
        # a ComfyUI save of FLUX.1 Kontext dev: prefixed names
        "kontext": write_flux_file(folders["flux-kontext"], out / "flux1-fill-dev-comfy.safetensors",
                                   prefix=DENOISER_PREFIX),
        # city96's GGUFs
        "fill-q8": gguf_of(folders["flux-fill"], "flux", out / "sd3.5_large-Q8_0.gguf"),
        "sd3-q8": gguf_of(folders["sd3"], "sd3", out / "flux1-fill-dev-Q8_0.gguf"),
        "sd3-f16": gguf_of(folders["sd3"], "sd3", out / "model-F16.gguf", quant="F16"),
        # ComfyUI's z_image_turbo_bf16.safetensors: the transformer alone, prefixed names
        "z-image": write_z_image_file(folders["z-image"], out / "flux1-kontext-dev.safetensors"),
        # a GGUF of Z-Image-Turbo (the original names, as its converters write them)
        "z-image-q8": gguf_of(folders["z-image"], "lumina2", out / "flux1-fill-dev-Q4.gguf"),
        # lodestones' Chroma1-HD.safetensors: the transformer alone, bare names
        "chroma": write_chroma_file(folders["chroma"], out / "flux1-dev.safetensors"),
        # a ComfyUI save of it (prefixed names), and a GGUF
        "chroma-comfy": write_chroma_file(folders["chroma"], out / "z_image_turbo.safetensors", prefix=DENOISER_PREFIX),
        "chroma-q8": gguf_of(folders["chroma"], "chroma", out / "flux1-kontext-dev-Q8_0.gguf"),
        # BFL's flux-2-klein-4b.safetensors: the transformer alone, bare names; a ComfyUI save
        # of it (prefixed names), and a GGUF
        "klein": write_flux2_file(folders["flux2-klein"], out / "qwen_image_edit_bf16.safetensors"),
        "klein-comfy": write_flux2_file(folders["flux2-klein"], out / "Chroma1-HD.safetensors", prefix=DENOISER_PREFIX),
        "klein-q8": gguf_of(folders["flux2-klein"], "flux2", out / "qwen-image-edit-Q8_0.gguf"),
        # ComfyUI's qwen_image_edit_bf16.safetensors: the transformer alone, prefixed names;
        # bare re-saves of it, and the GGUFs (bare)
        "qwen-edit": write_qwen_file(folders["qwen-edit"], out / "flux-2-klein-4b.safetensors"),
        "qwen-edit-bare": write_qwen_file(folders["qwen-edit"], out / "flux-2-klein-9b.safetensors", prefix=""),
        "qwen-edit-q8": gguf_of(folders["qwen-edit"], "qwen_image", out / "flux-2-klein-4b-Q8_0.gguf"),
    }


@pytest.fixture(scope="module")
def hub(folders: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """An offline hub cache with each family's reference repo as a user would have it
    beside a single file: configs, tokenizers, scheduler, and only the parts files lack
    (SD 3: the text encoders; FLUX: the VAE and text encoders; never the transformer)."""
    cache = tmp_path_factory.mktemp("hf") / "hub"
    install_reference(folders["sd3"], cache, SD3_REPO, weights=(*SD3_TEXT_ENCODERS, "vae"))
    install_reference(folders["flux-fill"], cache, FILL_REPO, weights=FLUX_PARTS)
    install_reference(folders["flux-kontext"], cache, KONTEXT_REPO, weights=FLUX_PARTS)
    install_reference(folders["z-image"], cache, Z_IMAGE_REPO, weights=("vae", "text_encoder"))
    install_reference(folders["chroma"], cache, CHROMA_REPO, weights=("vae", "text_encoder"))
    install_reference(folders["flux2-klein"], cache, KLEIN_REPO, weights=("vae", "text_encoder"))
    install_reference(folders["qwen-edit"], cache, QWEN_EDIT_REPO, weights=("vae", "text_encoder"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_CACHE", str(cache))
        mp.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
        yield cache


@pytest.fixture(scope="module")
def flux_any_width() -> Iterator[None]:
    with flux_converter_for_any_width():
        yield


def make_task(**overrides):
    rng = np.random.default_rng(3)
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[16:48, 16:48] = 255
    fields = dict(image=rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8), mask=mask, prompt="a stone bridge",
                  negative_prompt="", seeds=[1, 2], steps=2, guidance_scale=4.0, strength=1.0, scheduler="default")
    fields.update(overrides)
    return call(**fields)


def aligned(engine: DiffusersEngine) -> DiffusersEngine:
    """Every weight copied to fresh memory.  Weights mapped from a folder's files sit at the
    files' offsets, a single file's were copied; CPU kernels take other paths for unaligned
    memory and round differently in the last bit (2e-7 in the tiny FLUX transformer's
    output, sometimes one level in one pixel), which is not what these tests are about."""
    for module in engine.pipe.components.values():
        if isinstance(module, torch.nn.Module):
            for p in [*module.parameters(), *module.buffers()]:
                p.data = p.data.clone()
    return engine


_folder_pixels: dict[str, list[np.ndarray]] = {}


def folder_pixels(folder: Path) -> list[np.ndarray]:
    if str(folder) not in _folder_pixels:
        engine = aligned(DiffusersEngine(folder, device="cpu"))
        try:
            _folder_pixels[str(folder)] = generate(engine, make_task())
        finally:
            engine.close()
    return _folder_pixels[str(folder)]


def same_weights(loaded: DiffusersEngine, folder: Path, components: tuple[str, ...]) -> None:
    source = DiffusersEngine(folder, device="cpu")
    try:
        for name in components:
            got, want = getattr(loaded.pipe, name).state_dict(), getattr(source.pipe, name).state_dict()
            assert sorted(got) == sorted(want), name
            assert [k for k in want if not torch.equal(got[k], want[k])] == [], name
    finally:
        source.close()


# -- recognition ------------------------------------------------------------------------


def test_each_file_is_recognised_by_its_contents(files: dict[str, Path]) -> None:
    expected = {
        "sd3": (Arch.SD3, {"transformer", "vae"}, "safetensors", "", SD3_REPO),
        "fill": (Arch.FLUX_FILL, {"transformer"}, "safetensors", "", FILL_REPO),
        "kontext": (Arch.FLUX_KONTEXT, {"transformer"}, "safetensors", "", KONTEXT_REPO),
        "fill-q8": (Arch.FLUX_FILL, {"transformer"}, "gguf", "Q8_0", FILL_REPO),
        "sd3-q8": (Arch.SD3, {"transformer"}, "gguf", "Q8_0", SD3_REPO),
        "sd3-f16": (Arch.SD3, {"transformer"}, "gguf", "F16", SD3_REPO),
        "z-image": (Arch.Z_IMAGE, {"transformer"}, "safetensors", "", Z_IMAGE_REPO),
        "z-image-q8": (Arch.Z_IMAGE, {"transformer"}, "gguf", "Q8_0", Z_IMAGE_REPO),
        "chroma": (Arch.CHROMA, {"transformer"}, "safetensors", "", CHROMA_REPO),
        "chroma-comfy": (Arch.CHROMA, {"transformer"}, "safetensors", "", CHROMA_REPO),
        "chroma-q8": (Arch.CHROMA, {"transformer"}, "gguf", "Q8_0", CHROMA_REPO),
        "klein": (Arch.FLUX2_KLEIN, {"transformer"}, "safetensors", "", KLEIN_REPO),
        "klein-comfy": (Arch.FLUX2_KLEIN, {"transformer"}, "safetensors", "", KLEIN_REPO),
        "klein-q8": (Arch.FLUX2_KLEIN, {"transformer"}, "gguf", "Q8_0", KLEIN_REPO),
        "qwen-edit": (Arch.QWEN_EDIT, {"transformer"}, "safetensors", "", QWEN_EDIT_REPO),
        "qwen-edit-bare": (Arch.QWEN_EDIT, {"transformer"}, "safetensors", "", QWEN_EDIT_REPO),
        "qwen-edit-q8": (Arch.QWEN_EDIT, {"transformer"}, "gguf", "Q8_0", QWEN_EDIT_REPO),
    }
    for name, (arch, components, fmt, quant, repo) in expected.items():
        sf = inspect_single_file(files[name])
        assert sf is not None, name
        got = (sf.family.arch, set(sf.components), sf.format, sf.quantization, sf.reference_repo)
        assert got == (arch, components, fmt, quant, repo), name
    # the names lie on purpose: the SD 3 file is called flux1-fill-dev, the FLUX Fill GGUF sd3.5_large
    assert files["sd3"].name.startswith("flux1-fill") and files["fill-q8"].name.startswith("sd3.5")


def test_the_gguf_header_is_read_without_gguf_or_torch(files: dict[str, Path]) -> None:
    """Listing models reads a GGUF's header itself: names as the original layout's, shapes in
    torch's order (a quantised weight's logical shape, not its bytes), types, metadata."""
    import gguf

    header = read_single_file_header(files["fill-q8"])
    assert header["__metadata__"]["general.architecture"] == "flux"
    assert header["img_in.weight"] == {"dtype": "Q8_0", "shape": [32, 384]}
    assert header["img_in.bias"] == {"dtype": "F32", "shape": [32]}
    reader = gguf.GGUFReader(str(files["fill-q8"]))
    assert {t.name for t in reader.tensors} == set(header) - {"__metadata__"}
    for t in reader.tensors:
        assert header[t.name]["shape"] == [int(d) for d in reversed(t.shape)], t.name
        assert header[t.name]["dtype"] == t.tensor_type.name, t.name


def _flux_like(path: Path, channels: int, *, guidance: bool = True, metadata: dict[str, str] | None = None,
               extra: tuple[str, ...] = ()) -> Path:
    from safetensors.torch import save_file

    names = ["double_blocks.0.img_attn.norm.key_norm.scale", "single_blocks.0.linear1.weight", *extra]
    names += ["guidance_in.in_layer.weight"] if guidance else []
    tensors = {n: torch.zeros(2, 2) for n in names}
    tensors["img_in.weight"] = torch.zeros(4, channels)
    save_file(tensors, str(path), metadata={"format": "pt", **(metadata or {})})
    return path


#: The tensors that make a file Qwen-Image's transformer (any of its models).
QWEN_KEYS = ("txt_norm.weight", "img_in.weight", "transformer_blocks.0.img_mod.1.weight",
             "transformer_blocks.0.txt_mlp.net.0.proj.weight")


def test_kontext_and_plain_dev_are_told_apart_only_by_metadata(tmp_path: Path) -> None:
    """FLUX.1 Kontext dev and FLUX.1 dev have the same tensors: a 64-channel file is taken
    for Kontext unless its metadata names dev and not Kontext."""
    bare = inspect_single_file(_flux_like(tmp_path / "a.safetensors", 64))
    assert bare is not None and bare.family.arch == Arch.FLUX_KONTEXT
    said = inspect_single_file(_flux_like(tmp_path / "b.safetensors", 64, metadata={"modelspec.title": "FLUX.1 Kontext [dev]"}))
    assert said is not None and said.family.arch == Arch.FLUX_KONTEXT
    dev = _flux_like(tmp_path / "c.safetensors", 64, metadata={"modelspec.title": "FLUX.1 [dev]"})
    assert inspect_single_file(dev) is None
    assert "FLUX.1 dev transformer" in single_file_problem(dev)


@pytest.mark.parametrize(
    ("kind", "says"),
    [
        ("schnell", "FLUX.1 schnell"),
        ("depth", "Depth or Canny"),
        ("flux2", "FLUX.2"),
        ("flux2-dev", "a FLUX.2 dev transformer (guidance-distilled, Flux2Pipeline"),
        ("qwen-image", "a Qwen-Image transformer (text-to-image: its metadata names Qwen-Image, not Qwen-Image-Edit)"),
        ("qwen-edit-2511", "a Qwen-Image-Edit-2509/2511 transformer (its metadata says so: QwenImageEditPlusPipeline"),
        ("unknown", "no family inpaintd knows"),
        ("broken", "cannot be read"),
        ("broken-gguf", "cannot be read as gguf"),
    ],
)
def test_a_file_of_no_family_gets_a_clear_refusal(tmp_path: Path, kind: str, says: str) -> None:
    from safetensors.torch import save_file

    path = tmp_path / ("model.gguf" if kind == "broken-gguf" else "model.safetensors")
    if kind == "schnell":
        _flux_like(path, 64, guidance=False)
    elif kind == "depth":
        _flux_like(path, 128)
    elif kind == "flux2":
        _flux_like(path, 128, extra=("single_stream_modulation.lin.weight",))
    elif kind == "flux2-dev":  # klein's tensors and the guidance embedding
        _flux_like(path, 128, extra=("single_stream_modulation.lin.weight", "double_blocks.0.img_attn.qkv.weight"))
    elif kind.startswith("qwen"):  # Qwen-Image-Edit's tensors, named otherwise by the metadata
        title = {"qwen-image": "Qwen-Image", "qwen-edit-2511": "Qwen-Image-Edit-2511"}[kind]
        save_file({f"{DENOISER_PREFIX}{n}": torch.zeros(4, 64 if n == "img_in.weight" else 4) for n in QWEN_KEYS},
                  str(path), metadata={"modelspec.title": title})
    elif kind == "unknown":
        save_file({"encoder.layer.0.weight": torch.zeros(2)}, str(path))
    elif kind == "broken":
        path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    else:
        path.write_bytes(b"GGUF\x03\x00\x00\x00")
    assert inspect_single_file(path) is None
    registry = ModelRegistry([str(path)], device="cpu")
    info = registry.get(str(path))
    assert not info.available and says in info.detail
    assert kind.startswith("broken") or "FLUX.1 Fill and Kontext" in info.detail  # what it would read
    with pytest.raises(EngineError) as err:
        DiffusersEngine(path, device="cpu")
    assert err.value.code == "model_refused" and says in err.value.message


# -- the layouts round-trip ----------------------------------------------------------------


@pytest.mark.parametrize("name", ["sd3", "fill", "kontext", "sd3-f16", "z-image", "chroma", "chroma-comfy",
                                  "klein", "klein-comfy", "qwen-edit", "qwen-edit-bare"])
def test_diffusers_lays_each_file_out_as_the_tiny_model(name: str, files: dict[str, Path], folders: dict[str, Path],
                                                        flux_any_width: None) -> None:
    """Through the engine's own door (`transformer_source`: ComfyUI's prefix taken off, which
    diffusers' FLUX.2 and Qwen-Image mappings do not do themselves)."""
    import diffusers

    folder = folders[{"sd3": "sd3", "fill": "flux-fill", "kontext": "flux-kontext", "sd3-f16": "sd3", "z-image": "z-image",
                      "chroma": "chroma", "chroma-comfy": "chroma", "klein": "flux2-klein", "klein-comfy": "flux2-klein",
                      "qwen-edit": "qwen-edit", "qwen-edit-bare": "qwen-edit"}[name]]
    cls_name = json.loads((folder / "model_index.json").read_text())["transformer"][1]
    cls = getattr(diffusers, cls_name)
    kwargs = {"quantization_config": diffusers.GGUFQuantizationConfig(compute_dtype=torch.float32)} if name.endswith("f16") else {}
    got = cls.from_single_file(transformer_source(files[name]), config=str(folder), subfolder="transformer",
                               **kwargs).state_dict()
    want = cls.from_pretrained(str(folder), subfolder="transformer").state_dict()
    assert sorted(got) == sorted(want)
    if name.endswith("f16"):  # F16 in the file: each weight rounded to half precision, no more
        assert all(torch.equal(got[k], want[k].half().float()) for k in want)
    else:
        assert [k for k in want if not torch.equal(got[k], want[k])] == []


def test_q8_0_weights_are_the_folders_within_q8_0_rounding(files: dict[str, Path], folders: dict[str, Path],
                                                            flux_any_width: None) -> None:
    import diffusers
    from diffusers.quantizers.gguf.utils import GGUFLinear, dequantize_gguf_tensor

    config = diffusers.GGUFQuantizationConfig(compute_dtype=torch.float32)
    model = diffusers.FluxTransformer2DModel.from_single_file(
        str(files["fill-q8"]), config=str(folders["flux-fill"]), subfolder="transformer", quantization_config=config)
    want = diffusers.FluxTransformer2DModel.from_pretrained(str(folders["flux-fill"]), subfolder="transformer").state_dict()
    quantised = {name: m for name, m in model.named_modules() if isinstance(m, GGUFLinear)}
    assert len(quantised) > 20  # every Linear layer: the file's 2-D weights are Q8_0
    for name, module in quantised.items():
        w = want[f"{name}.weight"]
        blocks = w.reshape(-1, 32).abs().amax(dim=1, keepdim=True)
        step = (blocks / 127).expand(-1, 32).reshape(w.shape)  # int8 step of each 32-value block
        err = (dequantize_gguf_tensor(module.weight).float() - w).abs()
        # Half a step of rounding, plus twice 2^-11 of up to 127 steps: the scale is stored in
        # fp16, and diffusers multiplies it out in fp16 too.
        assert bool((err <= (0.5 + 2 * 127 * 2**-11) * step + 1e-7).all()), name


# -- loading and running ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "family", "exact"),
    [
        ("sd3", "sd3", True),
        ("fill", "flux-fill", True),
        ("kontext", "flux-kontext", True),
        ("fill-q8", "flux-fill", False),
        ("sd3-q8", "sd3", False),
        ("z-image", "z-image", True),
        ("z-image-q8", "z-image", False),
        ("chroma", "chroma", True),
        ("chroma-q8", "chroma", False),
        ("klein-comfy", "flux2-klein", True),
        ("klein-q8", "flux2-klein", False),
        ("qwen-edit", "qwen-edit", True),
        ("qwen-edit-q8", "qwen-edit", False),
    ],
)
def test_a_single_file_paints_what_its_folder_paints(name: str, family: str, exact: bool, files: dict[str, Path],
                                                     folders: dict[str, Path], hub: Path, flux_any_width: None) -> None:
    engine = aligned(DiffusersEngine(files[name], device="cpu", cache_dir=hub))
    try:
        assert engine.caps.family == family and engine.caps.native_size == SIZE
        want = folder_pixels(folders[family])
        got = generate(engine, make_task())
        assert not np.array_equal(want[0], want[1])  # the seeds matter, so equality means something
        if exact:
            for a, b in zip(got, want, strict=True):
                np.testing.assert_array_equal(a, b)
        else:
            diff = [np.abs(a.astype(int) - b.astype(int)) for a, b in zip(got, want, strict=True)]
            assert all(d.mean() <= GGUF_MEAN and d.max() <= GGUF_MAX for d in diff), [(d.mean(), d.max()) for d in diff]
            seeds_apart = np.abs(want[0].astype(int) - want[1].astype(int)).mean()
            # Another seed moves the tiny models' pixels by 30-45 levels on average, the tiny
            # Qwen-Image-Edit's by about 8 (measured here; its Q8_0 file differs by about 0.03).
            assert seeds_apart > (5 if family == "qwen-edit" else 10) * GGUF_MEAN
            transformer = engine.pipe.transformer
            layer = transformer.layers[0].attention.to_q if family == "z-image" else transformer.transformer_blocks[0].attn.to_q
            assert type(layer).__name__ == "GGUFLinear" and layer.compute_dtype == torch.float32
    finally:
        engine.close()


def test_sd3_with_its_t5_inside_takes_it_from_the_file(folders: dict[str, Path], tmp_path: Path) -> None:
    """A file that bundles the T5 encoder (`text_encoders.t5xxl.*`) beside a reference that
    lacks it: the T5 comes from the file, the CLIPs from the reference, and all run."""
    path = write_sd3_file(folders["sd3"], tmp_path / "sd3_incl_t5.safetensors", t5=True)
    sf = inspect_single_file(path)
    assert sf is not None and set(sf.components) == {"transformer", "vae", "text_encoder_3"}
    cache = tmp_path / "hub"
    install_reference(folders["sd3"], cache, SD3_REPO, weights=("text_encoder", "text_encoder_2"))
    engine = aligned(DiffusersEngine(path, device="cpu", cache_dir=cache))
    try:
        same_weights(engine, folders["sd3"], ("transformer", "vae", *SD3_TEXT_ENCODERS))
        assert not engine.pipe.text_encoder_3.training  # diffusers leaves it in training mode (dropout)
        for a, b in zip(generate(engine, make_task()), folder_pixels(folders["sd3"]), strict=True):
            np.testing.assert_array_equal(a, b)
    finally:
        engine.close()


def test_a_config_folder_completes_a_gguf_without_any_cache(files: dict[str, Path], folders: dict[str, Path],
                                                             tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             flux_any_width: None) -> None:
    """The registry's `configs`: a diffusers folder of the same model stands in for the
    reference repo (here the tiny folder itself, whose transformer is not used)."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    model = str(files["fill-q8"])
    registry = ModelRegistry([model], device="cpu", configs={model: str(folders["flux-fill"])})
    try:
        info = registry.get(model)
        assert info.available and info.family == "flux-fill" and info.native_size == SIZE, info.detail
        assert registry.caps(model).native_size == SIZE
        engine = registry.load(model)
        assert type(engine.pipe.transformer.x_embedder).__name__ == "GGUFLinear"
        assert len(generate(engine, make_task(seeds=[1]))) == 1
    finally:
        registry.close()


# -- what is missing, named ---------------------------------------------------------------


def test_without_its_reference_a_transformer_file_says_what_to_download(files: dict[str, Path], tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty-hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(empty))
    model = str(files["fill-q8"])
    info = ModelRegistry([model], device="cpu").get(model)
    with pytest.raises(EngineError) as err:
        DiffusersEngine(files["fill-q8"], device="cpu", cache_dir=empty)
    assert err.value.code == "model_unavailable"
    for message in (info.detail, err.value.message):
        assert "a FLUX.1 Fill transformer (GGUF Q8_0)" in message and FILL_REPO in message
        assert f'hf download {FILL_REPO} --include "*.json"' in message
        assert all(f'"{part}/*"' in message for part in (*FLUX_PARTS, "tokenizer", "tokenizer_2"))
        assert "--model-config" in message and "--allow-download" in message
    assert not info.available and info.family == "flux-fill"


def test_a_configs_only_reference_names_each_missing_part(files: dict[str, Path], folders: dict[str, Path],
                                                          tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`hf download REPO --include '*.json' '*.txt'` leaves configs only: the VAE and both
    text encoders are missing, each named with the command that gets it."""
    cache = tmp_path / "hub"
    install_reference(folders["flux-fill"], cache, FILL_REPO, weights=("text_encoder",))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    model = str(files["fill"])
    info = ModelRegistry([model], device="cpu").get(model)
    with pytest.raises(EngineError) as err:
        DiffusersEngine(files["fill"], device="cpu", cache_dir=cache)
    assert err.value.code == "model_unavailable" and not info.available
    for message in (info.detail, err.value.message):
        assert f'vae (VAE): `hf download {FILL_REPO} --include "vae/*"`' in message
        assert f'text_encoder_2 (T5 text encoder): `hf download {FILL_REPO} --include "text_encoder_2/*" "tokenizer_2/*"`' in message
        assert "text_encoder (" not in message  # that one is there


@pytest.mark.parametrize(
    ("name", "family", "repo", "encoder"),
    [("klein-q8", "flux2-klein", KLEIN_REPO, "Qwen3 text encoder"),
     ("qwen-edit", "qwen-edit", QWEN_EDIT_REPO, "Qwen2.5-VL text encoder")],
)
def test_klein_and_qwen_files_name_what_their_reference_lacks(name: str, family: str, repo: str, encoder: str,
                                                               files: dict[str, Path], folders: dict[str, Path],
                                                               tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No reference at all: the repo and the `hf download` line that gets what the file lacks;
    a configs-only snapshot: the VAE and the text encoder, each named with its command."""
    empty = tmp_path / "empty-hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(empty))
    model = str(files[name])
    info = ModelRegistry([model], device="cpu").get(model)
    with pytest.raises(EngineError) as err:
        DiffusersEngine(files[name], device="cpu", cache_dir=empty)
    assert err.value.code == "model_unavailable" and not info.available and info.family == family
    for message in (info.detail, err.value.message):
        assert f'hf download {repo} --include "*.json"' in message and "--model-config" in message
        assert all(f'"{part}/*"' in message for part in ("vae", "text_encoder", "tokenizer"))
        assert '"transformer/*"' not in message  # the file holds it

    cache = tmp_path / "hub"
    install_reference(folders[family], cache, repo)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    info = ModelRegistry([model], device="cpu").get(model)
    with pytest.raises(EngineError) as err:
        DiffusersEngine(files[name], device="cpu", cache_dir=cache)
    assert err.value.code == "model_unavailable" and not info.available
    for message in (info.detail, err.value.message):
        assert f'vae (VAE): `hf download {repo} --include "vae/*"`' in message
        assert f'text_encoder ({encoder}): `hf download {repo} --include "text_encoder/*" "tokenizer/*"`' in message


def test_sd3_without_t5_loads_and_a_missing_clip_is_named_with_t5_optional(
    files: dict[str, Path], folders: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    install_reference(folders["sd3"], cache, SD3_REPO, weights=("text_encoder", "text_encoder_2"))
    model = str(files["sd3"])
    assert ModelRegistry([model], device="cpu").get(model).available
    engine = DiffusersEngine(files["sd3"], device="cpu", cache_dir=cache)
    try:  # the T5 is optional: the pipeline runs without it
        assert engine.pipe.text_encoder_3 is None and engine.pipe.tokenizer_3 is None
        assert len(generate(engine, make_task(seeds=[1]))) == 1
    finally:
        engine.close()

    shutil.rmtree(cache)
    install_reference(folders["sd3"], cache, SD3_REPO, weights=("text_encoder",))
    info = ModelRegistry([model], device="cpu").get(model)
    with pytest.raises(EngineError) as err:
        DiffusersEngine(files["sd3"], device="cpu", cache_dir=cache)
    for message in (info.detail, err.value.message):
        assert f'text_encoder_2 (CLIP text encoder): `hf download {SD3_REPO} --include "text_encoder_2/*" "tokenizer_2/*"`' in message
        assert "text_encoder_3 (T5 text encoder, optional: the pipeline runs without it, at some cost in prompt fidelity" in message
        assert "vae" not in message.split("lacks", 1)[1]  # the file holds its VAE


def test_a_folder_without_its_vae_is_listed_unavailable_naming_it(folders: dict[str, Path], tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "sd3-no-vae"
    shutil.copytree(folders["sd3"], folder)
    for f in (folder / "vae").glob("*.safetensors"):
        f.unlink()
    info = ModelRegistry([str(folder)], device="cpu").get(str(folder))
    assert not info.available and "vae (VAE)" in info.detail and info.family == "sd3"
    with pytest.raises(EngineError) as err:
        DiffusersEngine(folder, device="cpu")
    assert err.value.code == "model_unavailable" and "weights are missing for vae (VAE)" in err.value.message
    # the same from the hub cache: the command names the repo and the folder
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    install_reference(folders["sd3"], cache, SD3_REPO, weights=("transformer", *SD3_TEXT_ENCODERS))
    info = ModelRegistry([SD3_REPO], device="cpu").get(SD3_REPO)
    assert not info.available and f'vae (VAE): `hf download {SD3_REPO} --include "vae/*"`' in info.detail


# -- through the daemon -------------------------------------------------------------------


@pytest.mark.slow
def test_daemon_jobs_on_sd3_single_files_match_the_folder(files: dict[str, Path], folders: dict[str, Path],
                                                          hub: Path, tmp_path: Path) -> None:
    """One daemon, the SD 3 folder and its two single files (Stability's layout with the VAE;
    a Q8_0 GGUF): the same job on each.  The daemon's process maps the folder's weights from
    its files and copies the single files' (see `aligned`), so equal means equal up to the
    last bit of float rounding: at most one level in a handful of pixels."""
    folder, single, quantised = str(folders["sd3"]), str(files["sd3"]), str(files["sd3-q8"])
    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[12:52, 20:44] = 255
    d = start_daemon(tmp_path, "--model", folder, "--extra-model", single, "--extra-model", quantised, "--device", "cpu")
    try:
        with d.client() as c:
            models = {m["id"]: m for m in c.models()}
            for model in (single, quantised):
                assert models[model]["available"] and models[model]["family"] == "sd3", models[model]["detail"]
                assert models[model]["native_size"] == SIZE and models[model]["kind"] == "single_file"

            def job(model: str) -> np.ndarray:
                options = JobOptions(model=model, steps=2, seed=7, prompt="a stone bridge", grow=0, feather=0)
                j = c.wait(c.submit(image.tobytes(), SIZE, SIZE, 3, mask.tobytes(), options), timeout=120)
                j.raise_for_error()
                layer = j.layers[0]
                return np.frombuffer(layer.tight_bytes(), np.uint8).reshape(layer.height, layer.width, 4).astype(int)

            want, got, close = job(folder), job(single), job(quantised)
    finally:
        d.stop()
    diff = np.abs(got - want)
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01, (diff.max(), (diff > 0).mean())
    qdiff = np.abs(close - want)
    assert qdiff.mean() <= GGUF_MEAN and qdiff.max() <= GGUF_MAX, (qdiff.mean(), qdiff.max())
    assert (qdiff > 0).any()  # quantised: not the same weights


def test_an_sd3_medium_file_is_laid_out_by_mediums_configs(tmp_path: Path) -> None:
    """SD 3.5 Medium's MMDiT-X (extra self-attention in its first blocks) needs Medium's
    configs, not Large's; SD 3.0 Medium (24 plain blocks) its own repo."""
    names = ["model.diffusion_model.context_embedder.weight"]
    medium = [*names, *(f"model.diffusion_model.joint_blocks.{i}.x_block.attn.qkv.weight" for i in range(24)),
              "model.diffusion_model.joint_blocks.0.x_block.attn2.qkv.weight"]
    sf = inspect_single_file(_header_only(tmp_path / "m.safetensors", medium))
    assert sf is not None and sf.reference_repo == "stabilityai/stable-diffusion-3.5-medium"
    v3 = [*names, *(f"model.diffusion_model.joint_blocks.{i}.x_block.attn.qkv.weight" for i in range(24))]
    sf = inspect_single_file(_header_only(tmp_path / "v3.safetensors", v3))
    assert sf is not None and sf.reference_repo == "stabilityai/stable-diffusion-3-medium-diffusers"
    large = [*names, *(f"joint_blocks.{i}.x_block.attn.qkv.weight" for i in range(38))]
    sf = inspect_single_file(write_gguf({n: torch.zeros(1) for n in large}, tmp_path / "l.gguf", "sd3", "F16"))
    assert sf is not None and sf.reference_repo == SD3_REPO and sf.format == "gguf"


def _header_only(path: Path, names: list[str]) -> Path:
    from safetensors.torch import save_file

    save_file({n: torch.zeros(1) for n in names}, str(path))
    return path


def test_serve_flags_model_config_and_quantize_over_the_socket(files: dict[str, Path], folders: dict[str, Path],
                                                               tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`serve --model-config FILE=FOLDER` completes a GGUF with no hub cache at all, and
    `--quantize text_encoder=fp8` stores its T5 in fp8 (hello's notices say so); the
    models reply counts the GGUF's bytes as stored, not at the compute precision.  A plan
    that would quantise the GGUF's transformer again is refused, naming it, with the
    daemon still serving."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    gguf, folder = str(files["sd3-q8"]), str(folders["sd3"])
    rng = np.random.default_rng(9)
    image = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[12:52, 20:44] = 255
    options = JobOptions(model=gguf, steps=2, seed=3, prompt="a stone bridge", grow=0, feather=0)
    d = start_daemon(tmp_path / "fp8", "--model", gguf, "--model-config", f"{gguf}={folder}",
                     "--quantize", "text_encoder=fp8", "--device", "cpu")
    try:
        with d.client() as c:
            entry = next(m for m in c.models() if m["id"] == gguf)
            assert entry["available"] and entry["family"] == "sd3", entry["detail"]
            memory = entry["memory"]
            assert memory["quantize"] == {"text_encoder": "fp8"}
            # the GGUF's transformer as stored (Q8_0: 34 bytes a block of 32) beside the folder's parts
            assert "transformer" in memory["components"] and "text_encoder_3" in memory["components"]
            notices = c.hello()["notices"]
            assert any("quantised text_encoder_3: fp8 storage" in n for n in notices), notices
            job = c.wait(c.submit(image.tobytes(), SIZE, SIZE, 3, mask.tobytes(), options), timeout=120)
            job.raise_for_error()
            assert len(job.layers) == 1
    finally:
        d.stop()

    d = start_daemon(tmp_path / "int8", "--model", folder, "--extra-model", gguf, "--model-config", f"{gguf}={folder}",
                     "--quantize", "int8", "--device", "cpu")
    try:
        with d.client() as c:
            job = c.wait(c.submit(image.tobytes(), SIZE, SIZE, 3, mask.tobytes(), options), timeout=120)
            assert job.error is not None and job.error.code == "model_refused", job.error
            assert "transformer is loaded from a .gguf file and is quantised already" in job.error.message
            fine = c.wait(c.submit(image.tobytes(), SIZE, SIZE, 3, mask.tobytes(),
                                   JobOptions(model=folder, steps=2, seed=3, prompt="x", grow=0, feather=0)), timeout=120)
            fine.raise_for_error()  # the folder's transformer in int8 (SDNQ), the daemon still serving
    finally:
        d.stop()
