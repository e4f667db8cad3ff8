"""The model-family table: folders, cache snapshots and single files recognised from disk alone."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from inpaintd.families import FAMILIES, Arch, Loop, UnsupportedModel, family_of_folder, inspect_single_file, native_size_of_folder


def _folder(tmp: Path, class_name: str, *, text_width: int = 768, denoiser: str = "unet", sample: int = 64) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "model_index.json").write_text(json.dumps({"_class_name": class_name}))
    (tmp / "text_encoder").mkdir(exist_ok=True)
    (tmp / "text_encoder" / "config.json").write_text(json.dumps({"hidden_size": text_width}))
    (tmp / denoiser).mkdir(exist_ok=True)
    (tmp / denoiser / "config.json").write_text(json.dumps({"sample_size": sample}))
    (tmp / "vae").mkdir(exist_ok=True)
    (tmp / "vae" / "config.json").write_text(json.dumps({"block_out_channels": [1, 2, 3, 4]}))
    return tmp


def _safetensors(path: Path, names: dict[str, list[int]]) -> Path:
    header = {name: {"dtype": "F16", "shape": shape, "data_offsets": [0, 0]} for name, shape in names.items()}
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw)
    return path


@pytest.mark.parametrize(
    ("class_name", "width", "arch"),
    [
        ("StableDiffusionInpaintPipeline", 768, Arch.SD15),
        ("StableDiffusionPipeline", 768, Arch.SD15),
        ("StableDiffusionInpaintPipeline", 1024, Arch.SD2),
        ("StableDiffusionXLInpaintPipeline", 1280, Arch.SDXL),
        ("StableDiffusionXLPipeline", 1280, Arch.SDXL),
        ("StableDiffusion3Pipeline", 768, Arch.SD3),
        ("StableDiffusion3InpaintPipeline", 768, Arch.SD3),
        ("FluxFillPipeline", 768, Arch.FLUX_FILL),
        ("FluxKontextPipeline", 768, Arch.FLUX_KONTEXT),  # what FLUX.1-Kontext-dev's model_index.json says
        ("FluxKontextInpaintPipeline", 768, Arch.FLUX_KONTEXT),
        ("Flux2KleinPipeline", 768, Arch.FLUX2_KLEIN),  # what FLUX.2-klein-4B's model_index.json says
        ("Flux2KleinInpaintPipeline", 768, Arch.FLUX2_KLEIN),
        ("QwenImageEditPipeline", 3584, Arch.QWEN_EDIT),  # what Qwen-Image-Edit's model_index.json says
        ("QwenImageEditInpaintPipeline", 3584, Arch.QWEN_EDIT),
        ("ZImagePipeline", 2560, Arch.Z_IMAGE),  # what Z-Image-Turbo's and Z-Image's model_index.json say
        ("ZImageImg2ImgPipeline", 2560, Arch.Z_IMAGE),
        ("ZImageInpaintPipeline", 2560, Arch.Z_IMAGE),
        ("ChromaPipeline", 4096, Arch.CHROMA),  # what Chroma1-HD's model_index.json says
        ("ChromaImg2ImgPipeline", 4096, Arch.CHROMA),
        ("ChromaInpaintPipeline", 4096, Arch.CHROMA),
    ],
)
def test_folders_by_class_name(tmp_path: Path, class_name: str, width: int, arch: Arch) -> None:
    assert family_of_folder(_folder(tmp_path, class_name, text_width=width)).arch == arch


@pytest.mark.parametrize(
    "class_name",
    [
        "StableDiffusionUpscalePipeline", "FluxPipeline", "FluxKontextInpaintPipelineX", "Flux2Pipeline",
        "Flux2KleinKVPipeline", "StableDiffusion3ControlNetPipeline", "QwenImageEditPlusPipeline",
        "ZImageOmniPipeline", "ZImageControlNetInpaintPipeline", "",
    ],
)
def test_other_pipelines_are_refused_by_name(tmp_path: Path, class_name: str) -> None:
    """`startswith("StableDiffusion")` once let an SD3 folder into the SD 1.5 class; SD 3 is
    served now, by its own row, and FLUX text-to-image is still neither a Fill nor a
    Kontext model (its transformer never saw the image's tokens); names match exactly.
    FLUX.2 [dev] (Mistral encoder) and klein 9B KV (cached image tokens) are not klein;
    Qwen-Image-Edit 2509/2511 (another template, several pictures) are not Qwen-Image-Edit;
    Z-Image-Omni (a SigLIP branch) and Z-Image's ControlNet pipelines are not Z-Image."""
    with pytest.raises(UnsupportedModel) as err:
        family_of_folder(_folder(tmp_path, class_name, denoiser="transformer"))
    assert (class_name or "unknown class") in str(err.value) and "supported:" in str(err.value)


def test_native_size_from_the_configs(tmp_path: Path) -> None:
    folder = _folder(tmp_path, "StableDiffusionPipeline", sample=96)  # SD 2.1 768-v style
    assert native_size_of_folder(folder, FAMILIES[Arch.SD15]) == 768
    (folder / "vae" / "config.json").unlink()
    assert native_size_of_folder(folder, FAMILIES[Arch.SD15]) == 512


def test_the_tiny_model_is_sd15(tiny_model_dir: Path) -> None:
    fam = family_of_folder(tiny_model_dir)
    assert fam.arch == Arch.SD15 and fam.denoiser == "unet"


def test_single_files(tmp_path: Path) -> None:
    unet9 = {"model.diffusion_model.input_blocks.0.0.weight": [320, 9, 3, 3]}
    unet4 = {"model.diffusion_model.input_blocks.0.0.weight": [320, 4, 3, 3]}
    sd15 = inspect_single_file(_safetensors(tmp_path / "a.safetensors", unet9))
    assert sd15 and sd15.family.arch == Arch.SD15 and sd15.inpainting
    assert sd15.reference_repo == "stable-diffusion-v1-5/stable-diffusion-inpainting"
    xl = inspect_single_file(_safetensors(tmp_path / "b.safetensors", {**unet4, "conditioner.embedders.1.model.x": [1]}))
    assert xl and xl.family.arch == Arch.SDXL and not xl.inpainting
    assert xl.reference_repo == "stabilityai/stable-diffusion-xl-base-1.0"
    sd2 = inspect_single_file(_safetensors(tmp_path / "c.safetensors", {**unet9, "cond_stage_model.model.x": [1]}))
    assert sd2 and sd2.family.arch == Arch.SD2
    # an MMDiT (SD 3.x) file is not taken for SD 1.5, and pickles are never opened
    assert inspect_single_file(_safetensors(tmp_path / "d.safetensors", {"model.diffusion_model.joint_blocks.0.x": [1]})) is None
    (tmp_path / "e.ckpt").write_bytes(b"x")
    assert inspect_single_file(tmp_path / "e.ckpt") is None


def test_z_image_single_files_by_their_keys(tmp_path: Path) -> None:
    """A Z-Image transformer, bare or ComfyUI-prefixed, whatever its name;
    Lumina 2 (the same lineage: its adaLN starts with a SiLU, `adaLN_modulation.1`), Z-Image-Omni
    (SigLIP) and the ControlNets (`control_*`) are not taken for it."""
    z = {"layers.0.adaLN_modulation.0.weight": [15360, 256], "cap_embedder.1.weight": [3840, 2560],
         "x_embedder.weight": [3840, 64], "layers.0.attention.qkv.weight": [11520, 3840]}
    for name, prefix in (("flux1-fill-dev.safetensors", ""), ("sd3.5_large.safetensors", "model.diffusion_model.")):
        sf = inspect_single_file(_safetensors(tmp_path / name, {prefix + k: v for k, v in z.items()}))
        assert sf and sf.family.arch == Arch.Z_IMAGE and sf.components == {"transformer"}
        assert sf.reference_repo == "Tongyi-MAI/Z-Image-Turbo" and "Z-Image transformer" in sf.what
    lumina = {k.replace("adaLN_modulation.0", "adaLN_modulation.1"): v for k, v in z.items()}
    omni = {**z, "siglip_embedder.1.weight": [3840, 1152]}
    control = {**z, "control_all_x_embedder.2-1.weight": [3840, 132]}
    for i, keys in enumerate((lumina, omni, control)):
        assert inspect_single_file(_safetensors(tmp_path / f"other{i}.safetensors", keys)) is None


def _chroma_keys(img_in_channels: int = 64) -> dict[str, list[int]]:
    """The tensors of `Chroma1-HD.safetensors` that tell it apart (real shapes)."""
    return {"double_blocks.0.img_attn.norm.key_norm.scale": [128], "double_blocks.0.img_attn.qkv.weight": [9216, 3072],
            "single_blocks.0.linear1.weight": [21504, 3072], "img_in.weight": [3072, img_in_channels],
            "distilled_guidance_layer.in_proj.weight": [5120, 64], "distilled_guidance_layer.in_proj.bias": [5120]}


def test_chroma_single_files_by_their_keys(tmp_path: Path) -> None:
    """A Chroma transformer, bare (lodestones' file) or ComfyUI-prefixed, whatever its name, by
    its approximator; FLUX.1 files (no approximator) are not taken for it, nor is it taken for
    FLUX.1 (no `guidance_in`), and a Chroma whose input is not FLUX.1's packed latents (pixel
    space, Chroma1-Radiance) is refused, saying what it is."""
    from inpaintd.families import single_file_problem

    for name, prefix in (("flux1-fill-dev.safetensors", ""), ("z_image_turbo_bf16.safetensors", "model.diffusion_model.")):
        sf = inspect_single_file(_safetensors(tmp_path / name, {prefix + k: v for k, v in _chroma_keys().items()}))
        assert sf and sf.family.arch == Arch.CHROMA and sf.components == {"transformer"} and sf.format == "safetensors"
        assert sf.reference_repo == "lodestones/Chroma1-HD" and sf.what == "a Chroma transformer (safetensors)"
    schnell = {k: v for k, v in _chroma_keys().items() if not k.startswith("distilled_guidance_layer.")}
    assert inspect_single_file(_safetensors(tmp_path / "schnell.safetensors", schnell)) is None
    dev = _safetensors(tmp_path / "dev.safetensors", {**schnell, "guidance_in.in_layer.weight": [3072, 256]})
    sf = inspect_single_file(dev)
    assert sf and sf.family.arch == Arch.FLUX_KONTEXT  # FLUX.1 dev's tensors, as before
    pixels = _safetensors(tmp_path / "radiance.safetensors", _chroma_keys(img_in_channels=3 * 16 * 16))
    assert inspect_single_file(pixels) is None
    assert "a Chroma transformer that does not take FLUX.1's latents" in single_file_problem(pixels)


def _klein_keys(width: int = 3072, *, guidance: bool = False) -> dict[str, list[int]]:
    """The tensors of `flux-2-klein-4b.safetensors` that tell it apart (real shapes; the 9B is
    4096 wide, FLUX.2 dev 6144 with a guidance embedding)."""
    keys = {"double_blocks.0.img_attn.qkv.weight": [3 * width, width], "double_blocks.0.img_attn.norm.key_norm.scale": [128],
            "single_stream_modulation.lin.weight": [3 * width, width], "img_in.weight": [width, 128],
            "txt_in.weight": [width, 7680 if width == 3072 else 12288], "single_blocks.0.linear1.weight": [9 * width, width]}
    return {**keys, "guidance_in.in_layer.weight": [width, 256]} if guidance else keys


def _with_metadata(path: Path, names: dict[str, list[int]], metadata: dict[str, str]) -> Path:
    header: dict[str, object] = {n: {"dtype": "F16", "shape": v, "data_offsets": [0, 0]} for n, v in names.items()}
    header["__metadata__"] = metadata
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw)
    return path


def test_klein_single_files_by_their_keys(tmp_path: Path) -> None:
    """FLUX.2 klein, bare (BFL's file) or ComfyUI-prefixed, whatever its name: the 4B's configs
    for a 3072-wide transformer, the 9B's for a 4096-wide one, a Base repo where the metadata
    says so.  FLUX.2 dev (the guidance embedding) is refused, saying what it is; klein is not
    taken for FLUX.1 or Chroma, nor they for klein."""
    from inpaintd.families import single_file_problem

    for name, prefix in (("qwen_image_edit_bf16.safetensors", ""), ("flux1-fill-dev.safetensors", "model.diffusion_model.")):
        sf = inspect_single_file(_safetensors(tmp_path / name, {prefix + k: v for k, v in _klein_keys().items()}))
        assert sf and sf.family.arch == Arch.FLUX2_KLEIN and sf.components == {"transformer"}
        assert sf.reference_repo == "black-forest-labs/FLUX.2-klein-4B" and sf.what == "a FLUX.2 klein transformer (safetensors)"
    nine = inspect_single_file(_safetensors(tmp_path / "9b.safetensors", _klein_keys(4096)))
    assert nine and nine.family.arch == Arch.FLUX2_KLEIN and nine.reference_repo == "black-forest-labs/FLUX.2-klein-9B"
    base = inspect_single_file(_with_metadata(tmp_path / "b.safetensors", _klein_keys(4096),
                                              {"modelspec.title": "FLUX.2 [klein] Base 9B"}))
    assert base and base.reference_repo == "black-forest-labs/FLUX.2-klein-base-9B"
    dev = _safetensors(tmp_path / "flux-2-klein-4b.safetensors", _klein_keys(6144, guidance=True))
    assert inspect_single_file(dev) is None
    assert "a FLUX.2 dev transformer (guidance-distilled" in single_file_problem(dev)
    chroma = inspect_single_file(_safetensors(tmp_path / "c.safetensors", _chroma_keys()))
    assert chroma and chroma.family.arch == Arch.CHROMA


_QWEN = {"txt_norm.weight": [3584], "img_in.weight": [3072, 64], "txt_in.weight": [3072, 3584],
         "transformer_blocks.0.img_mod.1.weight": [18432, 3072], "transformer_blocks.0.txt_mlp.net.0.proj.weight": [12288, 3072],
         "transformer_blocks.0.attn.to_q.weight": [3072, 3072]}


def test_qwen_edit_single_files_by_their_keys_and_metadata(tmp_path: Path) -> None:
    """Qwen-Image-Edit, ComfyUI-prefixed or bare, whatever its name.  Qwen-Image and
    Edit-2509/2511 have the same tensors: a file whose metadata names one of them is refused
    saying so, one that names none is taken for Qwen-Image-Edit.  Qwen-Image-2.1, Layered and
    the ControlNets (their own tensors) are refused whatever the metadata."""
    from inpaintd.families import single_file_problem

    for name, prefix in (("flux-2-klein-4b.safetensors", "model.diffusion_model."), ("z_image_turbo.safetensors", "")):
        sf = inspect_single_file(_safetensors(tmp_path / name, {prefix + k: v for k, v in _QWEN.items()}))
        assert sf and sf.family.arch == Arch.QWEN_EDIT and sf.components == {"transformer"}
        assert sf.reference_repo == "Qwen/Qwen-Image-Edit" and sf.what == "a Qwen-Image-Edit transformer (safetensors)"
    said = {"Qwen-Image-Edit": None, "qwen image edit bf16": None, "Qwen-Image": "a Qwen-Image transformer (text-to-image",
            "Qwen-Image-Edit-2509": "Edit-2509/2511", "Qwen-Image-Edit-2511": "Edit-2509/2511",
            "Qwen-Image-Layered": "a Qwen-Image-Layered transformer"}
    for i, (title, refusal) in enumerate(said.items()):
        path = _with_metadata(tmp_path / f"m{i}.safetensors", _QWEN, {"modelspec.title": title})
        sf = inspect_single_file(path)
        if refusal is None:
            assert sf and sf.family.arch == Arch.QWEN_EDIT, title
        else:
            assert sf is None and refusal in single_file_problem(path), title
    others = {"txt_in.text_norm.weight": "Qwen-Image-2.1", "time_text_embed.addition_t_embedding.weight": "Layered",
              "controlnet_blocks.0.weight": "ControlNet"}
    for i, (key, what) in enumerate(others.items()):
        path = _safetensors(tmp_path / f"o{i}.safetensors", {**_QWEN, key: [3072]})
        assert inspect_single_file(path) is None and what in single_file_problem(path), key
    latents = _safetensors(tmp_path / "l.safetensors", {**_QWEN, "img_in.weight": [3072, 128]})
    assert inspect_single_file(latents) is None and "128 input channels" in single_file_problem(latents)


def test_every_row_is_complete() -> None:
    for arch, fam in FAMILIES.items():
        assert fam.arch == arch
        assert fam.denoiser in ("unet", "transformer")
        assert fam.native_size % fam.size_multiple == 0
        assert "default" in fam.schedulers and fam.default_steps > 0
        assert fam.inpaint_pipeline.endswith(("InpaintPipeline", "FillPipeline"))
        assert fam.inpaint_pipeline in fam.pipeline_classes or fam.arch == Arch.SD2


def test_kontext_row() -> None:
    """FLUX.1 Kontext: the flow loop, guidance-distilled, 28 steps (diffusers), guidance 2.5
    (BFL's card), and the size pinned (its pipeline would snap to its preferred resolutions)."""
    fam = FAMILIES[Arch.FLUX_KONTEXT]
    assert fam.arch.value == "flux-kontext" and fam.loop == Loop.FLOW and fam.denoiser == "transformer"
    assert fam.inpaint_pipeline == "FluxKontextInpaintPipeline" and "FluxKontextPipeline" in fam.pipeline_classes
    assert fam.size_multiple == 16 and fam.native_size == 1024 and fam.schedulers == ("default", "euler")
    assert fam.default_steps == 28 and fam.default_guidance == 2.5 and not fam.negative_prompt and fam.pins_size
    assert [f.arch for f in FAMILIES.values() if f.pins_size] == [Arch.FLUX_KONTEXT, Arch.QWEN_EDIT]
    assert "FluxPipeline" not in fam.pipeline_classes


def test_klein_row() -> None:
    """FLUX.2 klein: the flow loop, no pooled embedding (Qwen3 hidden states only), 4 steps
    and guidance 1 as the distilled 4B/9B cards; a negative prompt for the Base checkpoints' CFG."""
    fam = FAMILIES[Arch.FLUX2_KLEIN]
    assert fam.arch.value == "flux2-klein" and fam.loop == Loop.FLOW and fam.denoiser == "transformer"
    assert fam.inpaint_pipeline == "Flux2KleinInpaintPipeline" and "Flux2KleinPipeline" in fam.pipeline_classes
    assert fam.size_multiple == 16 and fam.native_size == 1024 and fam.schedulers == ("default", "euler")
    assert fam.default_steps == 4 and fam.default_guidance == 1.0 and fam.negative_prompt
    assert not fam.pooled_prompt and not fam.pins_size and fam.max_pixels == 1024 * 1024
    assert [f.arch for f in FAMILIES.values() if not f.pooled_prompt] == [
        Arch.FLUX2_KLEIN, Arch.QWEN_EDIT, Arch.Z_IMAGE, Arch.CHROMA]


def test_z_image_row() -> None:
    """Z-Image: the flow loop, Qwen3 hidden states only (no pooled embedding) handed over as
    lists, Turbo's guidance 0 and 8 transformer evaluations, a negative prompt for the base
    model's CFG, 16 px multiples (VAE 8 x 2x2 patches), LoRAs, and the only listed-prompt row."""
    fam = FAMILIES[Arch.Z_IMAGE]
    assert fam.arch.value == "z-image" and fam.loop == Loop.FLOW and fam.denoiser == "transformer"
    assert fam.inpaint_pipeline == "ZImageInpaintPipeline"
    assert fam.pipeline_classes == {"ZImagePipeline", "ZImageImg2ImgPipeline", "ZImageInpaintPipeline"}
    assert fam.size_multiple == 16 and fam.native_size == 1024 and fam.schedulers == ("default", "euler")
    assert fam.default_steps == 8 and fam.default_guidance == 0.0 and fam.negative_prompt and fam.lora
    assert not fam.pooled_prompt and not fam.pins_size and fam.max_pixels is None and not fam.reference_image
    assert fam.large_text_encoder == "text_encoder" and not fam.optional_components
    assert fam.reference_repos == ("Tongyi-MAI/Z-Image-Turbo", "Tongyi-MAI/Z-Image-Turbo")
    assert [f.arch for f in FAMILIES.values() if f.listed_prompt] == [Arch.Z_IMAGE]


def test_chroma_row() -> None:
    """Chroma: the flow loop, T5 embeddings with their padding masks (no pooled embedding),
    real CFG with a negative prompt, Chroma1-HD's 40 steps at guidance 3 (diffusers' documented
    settings, not its pipelines' argument defaults), 16 px multiples (VAE 8 x 2x2 packing),
    LoRAs, and the only masked-prompt row."""
    fam = FAMILIES[Arch.CHROMA]
    assert fam.arch.value == "chroma" and fam.loop == Loop.FLOW and fam.denoiser == "transformer"
    assert fam.inpaint_pipeline == "ChromaInpaintPipeline"
    assert fam.pipeline_classes == {"ChromaPipeline", "ChromaImg2ImgPipeline", "ChromaInpaintPipeline"}
    assert fam.size_multiple == 16 and fam.native_size == 1024 and fam.schedulers == ("default", "euler")
    assert fam.default_steps == 40 and fam.default_guidance == 3.0 and fam.negative_prompt and fam.lora
    assert not fam.pooled_prompt and not fam.pins_size and fam.max_pixels is None and not fam.reference_image
    assert not fam.true_cfg and not fam.listed_prompt and not fam.textual_inversion
    assert fam.large_text_encoder == "text_encoder" and not fam.optional_components
    assert fam.reference_repos == ("lodestones/Chroma1-HD", "lodestones/Chroma1-HD")
    assert [f.arch for f in FAMILIES.values() if f.masked_prompt] == [Arch.CHROMA]


@pytest.mark.parametrize(
    ("family", "class_name", "arch"),
    [
        ("flux-kontext", "FluxKontextPipeline", Arch.FLUX_KONTEXT),
        ("flux2-klein", "Flux2KleinPipeline", Arch.FLUX2_KLEIN),
        ("qwen-edit", "QwenImageEditPipeline", Arch.QWEN_EDIT),
        ("z-image", "ZImagePipeline", Arch.Z_IMAGE),
        ("chroma", "ChromaPipeline", Arch.CHROMA),
    ],
)
def test_the_tiny_models_are_recognised(tmp_path: Path, family: str, class_name: str, arch: Arch) -> None:
    """`make-test-model --family` writes the class the real repos carry, and the folder is
    recognised from disk alone, native size from its configs."""
    pytest.importorskip("diffusers")
    from inpaintd.testmodel import make_family_test_model

    folder = make_family_test_model(tmp_path / family, family)
    assert json.loads((folder / "model_index.json").read_text())["_class_name"] == class_name
    fam = family_of_folder(folder)
    assert fam.arch == arch and native_size_of_folder(folder, fam) == 64


def test_qwen_edit_row() -> None:
    """Qwen-Image-Edit: the flow loop with true CFG (4, with a negative prompt) over 50 steps,
    the prompt read with the picture (no pooled embedding), the size pinned (its pipeline would
    work at 1024^2 whatever it is given), no reference input, the processor optional."""
    fam = FAMILIES[Arch.QWEN_EDIT]
    assert fam.arch.value == "qwen-edit" and fam.loop == Loop.FLOW and fam.denoiser == "transformer"
    assert fam.inpaint_pipeline == "QwenImageEditInpaintPipeline" and "QwenImageEditPipeline" in fam.pipeline_classes
    assert fam.size_multiple == 16 and fam.native_size == 1024 and fam.schedulers == ("default", "euler")
    assert fam.default_steps == 50 and fam.default_guidance == 4.0 and fam.negative_prompt and fam.true_cfg
    assert fam.vision_prompt and not fam.pooled_prompt and fam.pins_size and fam.max_pixels is None
    assert not fam.reference_image and fam.optional_components == ("processor",)
    assert [f.arch for f in FAMILIES.values() if f.vision_prompt or f.true_cfg] == [Arch.QWEN_EDIT]


def test_reference_rows() -> None:
    """FLUX.1 Kontext takes one reference, FLUX.2 klein up to four (BFL's limit); no other family takes one."""
    takes = {f.arch: f.max_references for f in FAMILIES.values() if f.reference_image}
    assert takes == {Arch.FLUX_KONTEXT: 1, Arch.FLUX2_KLEIN: 4}


def test_flow_families_rows() -> None:
    sd3, flux = FAMILIES[Arch.SD3], FAMILIES[Arch.FLUX_FILL]
    assert sd3.denoiser == flux.denoiser == "transformer"
    assert sd3.size_multiple == flux.size_multiple == 16 and sd3.native_size == flux.native_size == 1024
    assert sd3.default_steps == 28 and sd3.negative_prompt and "text_encoder_3" in sd3.optional_components
    assert flux.default_steps == 50 and not flux.negative_prompt and flux.default_guidance == 30.0
    for fam in (sd3, flux):
        assert fam.loop == Loop.FLOW and fam.schedulers == ("default", "euler")


def test_flow_folders_by_class_name_and_native_size(tmp_path: Path) -> None:
    sd3 = _folder(tmp_path / "sd3", "StableDiffusion3Pipeline", denoiser="transformer", sample=128)
    fam = family_of_folder(sd3)
    assert fam.arch == Arch.SD3 and native_size_of_folder(sd3, fam) == 1024
    flux = _folder(tmp_path / "flux", "FluxFillPipeline", denoiser="transformer")
    (flux / "transformer" / "config.json").write_text(json.dumps({"in_channels": 384}))  # no sample_size in FLUX
    fam = family_of_folder(flux)
    assert fam.arch == Arch.FLUX_FILL and native_size_of_folder(flux, fam) == 1024


def test_flow_snapshots_in_the_hub_cache(tmp_path: Path) -> None:
    """A cache snapshot counts once its `transformer/` (not `unet/`) holds weights."""
    from inpaintd.models import cached_snapshot
    from inpaintd.testmodel import install_in_hub_cache

    folder = _folder(tmp_path / "src", "FluxFillPipeline", denoiser="transformer")
    snapshot = install_in_hub_cache(folder, tmp_path / "hub", "black-forest-labs/FLUX.1-Fill-dev")
    assert cached_snapshot("black-forest-labs/FLUX.1-Fill-dev", tmp_path / "hub") is None
    assert cached_snapshot("black-forest-labs/FLUX.1-Fill-dev", tmp_path / "hub", need_weights=False) == snapshot
    (snapshot / "transformer" / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    assert cached_snapshot("black-forest-labs/FLUX.1-Fill-dev", tmp_path / "hub") == snapshot
