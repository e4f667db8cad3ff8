"""Style reference for the UNet families (SD 1.x and SDXL) through IP-Adapter.

A job's reference images (`EngineRequest.references`) steer the look of what is painted
in, as Midjourney's "style reference" does: the IP-Adapter projects each reference's CLIP
image embedding into 4 extra tokens that the UNet's cross-attention layers attend to beside
the prompt, scaled by the job's `reference_weight` (0..2).

**`serve --ip-adapter PATH`.**  PATH is a folder laid out as the Hub repo h94/IP-Adapter,
or a Hub repo id of that layout (looked up in the Hugging Face cache; downloaded only with
`--allow-download`).  Per family the engine reads (`IP_ADAPTER_FILES`):

- SD 1.x: `PATH/models/ip-adapter_sd15.safetensors`, image encoder `PATH/models/image_encoder/`
  (CLIP ViT-H/14: `config.json` and `model.safetensors`);
- SDXL: `PATH/sdxl_models/ip-adapter_sdxl.safetensors`, image encoder
  `PATH/sdxl_models/image_encoder/` (OpenCLIP ViT-bigG/14).

So `hf download h94/IP-Adapter --include 'models/ip-adapter_sd15.safetensors'
'models/image_encoder/*' 'sdxl_models/ip-adapter_sdxl.safetensors' 'sdxl_models/image_encoder/*'`
and `--ip-adapter h94/IP-Adapter` (or the snapshot folder) serves both.  SD 2.x has no
IP-Adapter in that repo: its models load without one and refuse references, as do SD 3.x
and FLUX (the flow families take references their own way, or not at all).  Pickled
weights (`.bin`) are never read.  An IP-Adapter that is missing or does not load refuses
the model (`model_unavailable`, naming the path and what is missing).

**Style only.**  For SDXL the weight goes to one attention block, the second of the first
up block, as InstantStyle found: that block carries the style (colour, texture, stroke)
and the others the layout and content, which in inpainting must come from the picture and
the prompt.  The scale is `{"up": {"block_0": [0.0, weight, 0.0]}}`, every other block 0.
SD 1.x has no such clean split, so there every cross-attention layer gets `weight` (the
original IP-Adapter): the reference's content leaks in more than with SDXL.

**Without references, or at weight 0,** every IP-Adapter layer's scale is 0, which
diffusers' IP-Adapter attention skips, and the UNet gets blank image embeddings (it wants
some once an IP-Adapter is loaded): the pixels are exactly those of the same model without
an IP-Adapter (`tests/test_ip_adapter.py`).  Two costs remain with one loaded: fused QKV
projections are not applied (diffusers' fused attention would replace the IP-Adapter's),
and the low-memory retry does not slice attention (the sliced processors would too).

Reference embeddings are cached per image (by digest), as prompt embeddings are: an artist
re-runs the same reference with new seeds and prompts.
"""

from __future__ import annotations

import hashlib
import re
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..families import Arch, Family
from .base import EngineError, is_out_of_memory
from .sd_inpaint import ReferenceEmbeds

if TYPE_CHECKING:
    import torch

#: Family -> (subfolder, weights file) of the IP-Adapter in PATH, as h94/IP-Adapter lays them out.
IP_ADAPTER_FILES: dict[Arch, tuple[str, str]] = {
    Arch.SD15: ("models", "ip-adapter_sd15.safetensors"),
    Arch.SDXL: ("sdxl_models", "ip-adapter_sdxl.safetensors"),
}
#: The image encoder's folder inside the subfolder (diffusers' `image_encoder_folder`).
IMAGE_ENCODER_FOLDER = "image_encoder"
#: Reference embeddings kept across jobs.
EMBEDDING_CACHE_SIZE = 16

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def takes_ip_adapter(family: Family) -> bool:
    """Whether an IP-Adapter loads into models of `family` (SD 1.x and SDXL)."""
    return family.arch in IP_ADAPTER_FILES


def _is_repo_id(source: str) -> bool:
    """A Hub repo id rather than a path: an existing path wins, then the shape of the string."""
    return not Path(source).expanduser().exists() and bool(_REPO_ID.match(source))


def _wanted(family: Family) -> list[str]:
    """The files (relative to PATH) an IP-Adapter for `family` needs."""
    subfolder, weight_name = IP_ADAPTER_FILES[family.arch]
    encoder = f"{subfolder}/{IMAGE_ENCODER_FOLDER}"
    return [f"{subfolder}/{weight_name}", f"{encoder}/config.json", f"{encoder}/model.safetensors"]


def ip_adapter_problem(
    source: str, family: Family, *, local_files_only: bool = True, cache_dir: str | None = None
) -> str | None:
    """What keeps the IP-Adapter at `source` from loading into a `family` model, from the file
    system alone; None where its files are all there (or a repo will be downloaded)."""
    wanted = _wanted(family)
    layout = (
        f"expected a folder laid out as h94/IP-Adapter ({wanted[0]}, and the image encoder in "
        f"{wanted[1].rsplit('/', 1)[0]}/: config.json and model.safetensors) or its Hub repo id"
    )
    if _is_repo_id(source):
        if not local_files_only:
            return None  # fetched as it loads
        from huggingface_hub import try_to_load_from_cache

        missing = [w for w in wanted if not isinstance(try_to_load_from_cache(source, w, cache_dir=cache_dir), str)]
        if not missing:
            return None
        return (
            f"IP-Adapter '{source}' is not in the Hugging Face cache{f' at {cache_dir}' if cache_dir else ''}: "
            f"{', '.join(missing)} missing; run `hf download {source} {' '.join(missing)}` on a machine with network "
            "access, or start the daemon with --allow-download"
        )
    folder = Path(source).expanduser()
    if not folder.is_dir():
        return f"IP-Adapter '{source}': no such folder; {layout}"
    missing = [w for w in wanted if not (folder / w).is_file()]
    if wanted[2] in missing and (folder / f"{wanted[2]}.index.json").is_file():
        missing.remove(wanted[2])  # sharded weights
    if not missing:
        return None
    pickled = wanted[2] in missing and (folder / wanted[2].replace("model.safetensors", "pytorch_model.bin")).is_file()
    extra = " (its image encoder has pickled .bin weights only, which are never read: convert them)" if pickled else ""
    return f"IP-Adapter '{folder}' has no {' and no '.join(missing)} for {family.label} models{extra}; {layout}"


def ip_adapter_parts(source: str, family: Family, *, cache_dir: str | Path | None = None) -> dict[str, Path]:
    """Where the IP-Adapter's parts for `family` are on disk, for the memory estimates: its
    weights file (`ip_adapter`) and its image encoder's folder (`image_encoder`, the larger:
    about 0.6 B parameters for SD 1.x's ViT-H, 1.8 B for SDXL's ViT-bigG); those not here
    are left out."""
    subfolder, weight_name = IP_ADAPTER_FILES[family.arch]
    if _is_repo_id(source):
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(source, f"{subfolder}/{weight_name}",
                                       cache_dir=str(cache_dir) if cache_dir is not None else None)
        if not isinstance(found, str):
            return {}
        base = Path(found).parent
    else:
        base = Path(source).expanduser() / subfolder
    parts = {"ip_adapter": base / weight_name, "image_encoder": base / IMAGE_ENCODER_FOLDER}
    return {name: path for name, path in parts.items() if path.exists()}


def load_ip_adapter(
    pipe: Any, source: str, family: Family, *, local_files_only: bool = True, cache_dir: str | None = None
) -> None:
    """Load the IP-Adapter at `source` (see the module docstring) into `pipe`, a `family`
    pipeline: its image encoder, a feature extractor sized for it, and the UNet's IP-Adapter
    attention processors.  Raises EngineError("model_unavailable") naming the path and what
    is missing or wrong."""
    problem = ip_adapter_problem(source, family, local_files_only=local_files_only, cache_dir=cache_dir)
    if problem is not None:
        raise EngineError("model_unavailable", problem)
    subfolder, weight_name = IP_ADAPTER_FILES[family.arch]
    location = source if _is_repo_id(source) else str(Path(source).expanduser())
    kwargs: dict[str, Any] = {"local_files_only": local_files_only}
    if cache_dir is not None:
        kwargs["cache_dir"] = cache_dir
    try:
        pipe.load_ip_adapter(
            location, subfolder=subfolder, weight_name=weight_name, image_encoder_folder=IMAGE_ENCODER_FOLDER, **kwargs
        )
    except Exception as exc:  # a wrong layout, shapes of another family, a failed download
        if is_out_of_memory(exc):
            raise
        raise EngineError(
            "model_unavailable",
            f"cannot load IP-Adapter '{source}' ({subfolder}/{weight_name} with its {IMAGE_ENCODER_FOLDER}) into a "
            f"{family.label} model: {exc}",
        ) from exc
    _size_feature_extractor(pipe)


def _size_feature_extractor(pipe: Any) -> None:
    """A checkpoint's own feature extractor (the safety checker's) is kept by diffusers; it
    must feed the image encoder at the encoder's size, or encoding fails."""
    from transformers import CLIPImageProcessor

    side = int(pipe.image_encoder.config.image_size)
    extractor = getattr(pipe, "feature_extractor", None)
    crop = getattr(extractor, "crop_size", None)
    if isinstance(crop, dict) and crop.get("height") == side and crop.get("width") == side:
        return
    pipe.register_modules(feature_extractor=CLIPImageProcessor(size=side, crop_size=side))


def style_scale(unet: Any, family: Family, weight: float) -> float | dict[str, Any]:
    """The IP-Adapter scale for `weight` (see "Style only" above): SDXL's style block only,
    every layer for SD 1.x; 0 everywhere for a weight of 0."""
    weight = max(float(weight), 0.0)
    if weight == 0.0 or family.arch != Arch.SDXL:
        return weight
    first_up = unet.up_blocks[0]
    count = len(getattr(first_up, "attentions", ()))
    if count == 0:
        return weight
    layers = [0.0] * count
    layers[min(1, count - 1)] = weight
    return {"up": {"block_0": layers}}


def _digest(image: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest() + f":{image.shape}"


class ReferenceEncoder:
    """The IP-Adapter of one loaded pipeline: sets its scale for each job and turns the job's
    references into the image embeddings the loop hands the UNet (`sd_inpaint.ReferenceEmbeds`)."""

    def __init__(self, pipe: Any, family: Family) -> None:
        from diffusers.models.embeddings import ImageProjection

        self.pipe = pipe
        self.family = family
        projection = pipe.unet.encoder_hid_proj.image_projection_layers[0]
        #: A plain IP-Adapter reads the image embedding; "Plus" ones the encoder's hidden states.
        self._hidden_states = not isinstance(projection, ImageProjection)
        self._embed_dim = int(projection.image_embeds.in_features) if not self._hidden_states else 0
        self._cache: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self._blank: torch.Tensor | None = None
        self._scale: Any = None

    def __call__(self, references: list[np.ndarray], weight: float) -> ReferenceEmbeds:
        """Embeddings for a job: the references' at `weight`, or blank ones with every scale 0
        (no references, or weight 0: the model then paints as without an IP-Adapter)."""
        import torch

        used = bool(references) and weight > 0
        self._set_scale(style_scale(self.pipe.unet, self.family, weight if used else 0.0))
        with torch.inference_mode():
            if not used:
                blank = self._blank_embeds()
                return ReferenceEmbeds(blank, blank)
            pairs = [self._embed(r) for r in references]
            return ReferenceEmbeds(torch.cat([p for p, _ in pairs]), torch.cat([n for _, n in pairs]))

    def _set_scale(self, scale: float | dict[str, Any]) -> None:
        if scale != self._scale:  # each change walks every processor (and recompiles a compiled UNet)
            self.pipe.set_ip_adapter_scale(scale)
            self._scale = scale

    def _embed(self, reference: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(embedding, unconditional embedding) of one reference, each 1 x ..., cached by digest."""
        from PIL import Image

        key = _digest(reference)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        # A PIL image: an h x w x 3 array of height 3 would be read as channels first.
        picture = Image.fromarray(np.ascontiguousarray(reference[:, :, :3]))
        pair = self.pipe.encode_image(picture, self.pipe._execution_device, 1, self._hidden_states)
        self._cache[key] = (pair[0], pair[1])
        while len(self._cache) > EMBEDDING_CACHE_SIZE:
            self._cache.popitem(last=False)
        return pair[0], pair[1]

    def _blank_embeds(self) -> torch.Tensor:
        """Embeddings of no image, 1 x ...: zeros for a plain IP-Adapter (as diffusers' negative
        embeddings), a black image's unconditional hidden states for the others."""
        import torch

        if self._blank is None:
            if self._hidden_states:
                self._blank = self._embed(np.zeros((8, 8, 3), np.uint8))[1]
            else:  # the loop casts it to the UNet's dtype
                self._blank = torch.zeros((1, self._embed_dim), device=self.pipe._execution_device)
        return self._blank

    def clear(self) -> None:
        self._cache.clear()
        self._blank = None
