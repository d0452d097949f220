"""Wan image-to-video: `wan2.1-i2v` (Wan2.1-I2V-14B sketches, a 36-channel 1.3B such as
Wan2.1-Fun-1.3B-InP renders) and `wan2.2-i2v` (Wan2.2-I2V-A14B's high-noise expert sketches, its
low-noise expert renders, at the model's boundary_ratio).

Conditioning mirrors diffusers' WanImageToVideoPipeline operation for operation, once, on the sketch
side: the image resized (stretched, no crop) to the request's size by the pipeline's own
`VideoProcessor.preprocess`, followed by `num_frames - 1` black frames, VAE-encoded (the distribution's
mode) and normalised with the VAE's latents mean and std; a mask (1 on the first frame's latent
positions, 4 of them per latent frame) before those latents: `image_condition`, 4 + 16 channels the
transformer reads beside the 16 noisy ones (in_channels 36). A model with image cross-attention
(`image_dim`, Wan2.1-I2V-14B: 1280, with `added_kv_proj_dim`) also reads CLIP ViT-H's penultimate
hidden states of the original image (`CLIPImageProcessor` resizes and crops it to 224):
`image_embeds`, computed iff the sketch transformer has `image_dim`, as the pipeline decides by its
`transformer`, and passed to each model that has image cross-attention. Wan2.2-I2V-A14B has none.

Both tensors cross in the handoff (format version 2), so the render side needs no image, VAE encoder
or CLIP model. The pair check names every misfit: channels (36 = 2 x z_dim + the VAE's temporal
factor), the image embedding width, text width, VAE and scheduler.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from diffusers.video_processor import VideoProcessor
from transformers import CLIPVisionConfig, CLIPVisionModel

from srserve.engine.config import ModelPairConfig
from srserve.engine.families.base import IncompatiblePairError, refuse_misfit, require_component_config
from srserve.engine.families.wan import WanFamily
from srserve.engine.families.wan22 import Wan22Family, locate, pipeline_folder
from srserve.engine.handoff import HandoffState
from srserve.engine.models.component_config import read_component_config, read_model_index
from srserve.engine.request import ResolvedRequest

if TYPE_CHECKING:
    from transformers import CLIPImageProcessor

# diffusers' WanAttnProcessor splits the image tokens off the text context as "all but the last 512".
I2V_TEXT_TOKENS = 512


def expected_in_channels(vae: dict[str, Any]) -> int:
    """Noisy latents, the mask (one channel per frame of a temporal group) and the condition latents."""
    z_dim = int(vae.get("z_dim", 16))
    return 2 * z_dim + int(vae.get("scale_factor_temporal", 4))


def _i2v_channel_problem(vae: dict[str, Any], transformer: dict[str, Any]) -> str | None:
    expected = expected_in_channels(vae)
    if transformer.get("in_channels") != expected:
        return (
            f"transformer in_channels {transformer.get('in_channels')} != {expected}, what an image-to-video model "
            f"takes with VAE z_dim {vae.get('z_dim')} (noise + mask + first-frame latents); a text-to-video model?"
        )
    if transformer.get("out_channels") != vae.get("z_dim"):
        return f"transformer out_channels {transformer.get('out_channels')} != VAE z_dim {vae.get('z_dim')}"
    return None


def image_problems(
    sketch_t: dict[str, Any], render_t: dict[str, Any], sketch_pipeline: Path, max_sequence_length: int | None
) -> list[str]:
    """The image embeddings: the render reads none or the sketch's (same width), made by the sketch folder's CLIP."""
    problems = []
    sketch_dim, render_dim = sketch_t.get("image_dim"), render_t.get("image_dim")
    if render_dim is not None and render_dim != sketch_dim:
        problems.append(
            f"image_dim (image embedding width): render takes {render_dim!r}, the sketch makes "
            f"{'none' if sketch_dim is None else sketch_dim}"
        )
    for label, cfg in (("sketch", sketch_t), ("render", render_t)):
        if (cfg.get("image_dim") is None) != (cfg.get("added_kv_proj_dim") is None):
            problems.append(
                f"{label} transformer has image_dim {cfg.get('image_dim')!r} but added_kv_proj_dim "
                f"{cfg.get('added_kv_proj_dim')!r} (image cross-attention needs both)"
            )
    if sketch_dim is not None:
        encoder = read_component_config(sketch_pipeline, "image_encoder")
        if encoder is None or not (sketch_pipeline / "image_processor" / "preprocessor_config.json").is_file():
            problems.append(
                f"image_dim: the sketch takes CLIP image embeddings ({sketch_dim}) but {str(sketch_pipeline)!r} has no "
                "image_encoder/ and image_processor/"
            )
        else:
            width = CLIPVisionConfig.from_dict(encoder).hidden_size
            if width != sketch_dim:
                problems.append(f"image_dim: the image encoder's width is {width}, the transformers take {sketch_dim}")
        if (max_sequence_length or I2V_TEXT_TOKENS) != I2V_TEXT_TOKENS:
            problems.append(
                f"max_sequence_length {max_sequence_length}: a model with image cross-attention reads exactly "
                f"{I2V_TEXT_TOKENS} text tokens (diffusers' WanAttnProcessor)"
            )
    return problems


class _ImageConditioned:
    """What both Wan image-to-video families add to their text-to-video parents."""

    takes_image = True
    name: str

    def channel_problem(self, vae: dict[str, Any], transformer: dict[str, Any]) -> str | None:
        return _i2v_channel_problem(vae, transformer)

    def load_image_encoder(
        self, config: ModelPairConfig, dtype: torch.dtype, device: torch.device
    ) -> tuple[CLIPImageProcessor, CLIPVisionModel] | None:
        """The sketch folder's CLIP processor and vision model, if the sketch transformer takes image embeddings."""
        folder = pipeline_folder(config.sketch_path)
        transformer = locate_sketch_transformer(config.sketch_path)
        if transformer.get("image_dim") is None:
            return None
        # Imported here: transformers warns on import when torchvision is absent, and a text-to-video
        # deployment (or a one-line start-up error) should not print it.
        from transformers import CLIPImageProcessor

        processor = CLIPImageProcessor.from_pretrained(str(folder), subfolder="image_processor")
        encoder = CLIPVisionModel.from_pretrained(str(folder), subfolder="image_encoder", dtype=dtype)
        return processor, encoder.to(device).eval()

    @torch.no_grad()
    def encode_image(
        self,
        image: Any,
        request: ResolvedRequest,
        image_encoder: Any,
        vae: torch.nn.Module,
        device: torch.device,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        embeds = None
        if image_encoder is not None:  # WanImageToVideoPipeline.encode_image
            processor, encoder = image_encoder
            pixels = processor(images=image, return_tensors="pt").to(next(encoder.parameters()).device)
            embeds = encoder(**pixels, output_hidden_states=True).hidden_states[-2].to(device)
        cfg = vae.config
        frame = VideoProcessor(vae_scale_factor=cfg.scale_factor_spatial).preprocess(
            image, height=request.height, width=request.width
        )
        return _first_frame_condition(frame.to(device, dtype=torch.float32), request, vae, device), embeds

    def check_image_handoff(self, state: HandoffState, render_transformer: dict[str, Any], vae: dict[str, Any]) -> None:
        """The image tensors a render model needs, with the shapes it takes; IncompatiblePairError names the misfit."""
        problems = []
        r = state.request
        temporal, spatial = int(vae.get("scale_factor_temporal", 4)), int(vae.get("scale_factor_spatial", 8))
        z_dim = int(vae.get("z_dim", 16))
        expected = [1, z_dim + temporal, (r.num_frames - 1) // temporal + 1, r.height // spatial, r.width // spatial]
        if state.image_condition is None:
            problems.append(f"no image_condition (a text-to-video or version 1 handoff): {self.name} needs one")
        elif list(state.image_condition.shape) != expected:
            problems.append(f"image_condition has shape {list(state.image_condition.shape)}, expected {expected}")
        image_dim = render_transformer.get("image_dim")
        if image_dim is not None:
            embeds = state.image_embeds
            if embeds is None:
                problems.append(f"no image_embeds, and the render model takes image embeddings of width {image_dim}")
            elif embeds.ndim != 3 or embeds.shape[-1] != image_dim:
                problems.append(
                    f"image_embeds have shape {list(embeds.shape)}, the render model reads width {image_dim}"
                )
        if problems:
            raise IncompatiblePairError("handoff does not fit this image-to-video render model: " + "; ".join(problems))


def locate_sketch_transformer(sketch_path: str) -> dict[str, Any]:
    """The sketch transformer's config: a pipeline folder's `transformer/`, or the transformer folder named."""
    where = locate(sketch_path, render=False)
    return require_component_config(where.pipeline, where.subfolder)


@torch.no_grad()
def _first_frame_condition(
    image: torch.Tensor, request: ResolvedRequest, vae: torch.nn.Module, device: torch.device
) -> torch.Tensor:
    """WanImageToVideoPipeline.prepare_latents' condition for one image (batch 1, no last image): mask + latents."""
    from diffusers.pipelines.wan.pipeline_wan_i2v import retrieve_latents  # imports CLIPImageProcessor: see above

    cfg = vae.config
    temporal, spatial = cfg.scale_factor_temporal, cfg.scale_factor_spatial
    num_frames = request.num_frames
    height, width = request.height, request.width
    latent_height, latent_width = height // spatial, width // spatial
    image = image.unsqueeze(2)
    video_condition = torch.cat(
        [image, image.new_zeros(image.shape[0], image.shape[1], num_frames - 1, height, width)], dim=2
    )
    video_condition = video_condition.to(device=next(vae.parameters()).device, dtype=vae.dtype)
    latents_mean = torch.tensor(cfg.latents_mean).view(1, cfg.z_dim, 1, 1, 1).to(device, torch.float32)
    latents_std = 1.0 / torch.tensor(cfg.latents_std).view(1, cfg.z_dim, 1, 1, 1).to(device, torch.float32)
    latent_condition = retrieve_latents(vae.encode(video_condition), sample_mode="argmax")
    latent_condition = latent_condition.to(device=device, dtype=torch.float32)
    latent_condition = (latent_condition - latents_mean) * latents_std
    mask = torch.ones(1, 1, num_frames, latent_height, latent_width)
    mask[:, :, list(range(1, num_frames))] = 0
    first_frame_mask = torch.repeat_interleave(mask[:, :, 0:1], dim=2, repeats=temporal)
    mask = torch.concat([first_frame_mask, mask[:, :, 1:, :]], dim=2)
    mask = mask.view(1, -1, temporal, latent_height, latent_width).transpose(1, 2).to(latent_condition.device)
    return torch.concat([mask, latent_condition], dim=1)


class WanI2VFamily(_ImageConditioned, WanFamily):
    """Wan2.1-I2V-14B sketches, a 36-channel Wan2.1 1.3B (Fun-1.3B-InP) renders; one schedule, one latent space."""

    name = "wan2.1-i2v"

    def __init__(self) -> None:
        self._render_transformer: dict[str, Any] = {}
        self._vae: dict[str, Any] = {}

    def check_pair(self, config: ModelPairConfig) -> None:
        index = read_model_index(config.sketch_path) or {}
        if index.get("boundary_ratio") is not None or index.get("expand_timesteps"):
            raise IncompatiblePairError(
                f"sketch folder {config.sketch_path!r} is a Wan2.2 folder (boundary_ratio / expand_timesteps in its "
                "model_index.json): use family wan2.2-i2v"
            )
        super().check_pair(config)  # folders, transformer fields, text width, VAE (and channels), scheduler
        sketch_t = require_component_config(config.sketch_path, "transformer")
        render_t = require_component_config(config.render_path, "transformer")
        problems = image_problems(sketch_t, render_t, Path(config.sketch_path), config.max_sequence_length)
        refuse_misfit(config.sketch_path, config.render_path, problems)

    def bind(self, config: ModelPairConfig) -> None:
        self._render_transformer = require_component_config(config.render_path, "transformer")
        self._vae = require_component_config(config.vae_path or config.render_path, "vae")

    def check_handoff(self, state: HandoffState) -> None:
        self.check_image_handoff(state, self._render_transformer, self._vae)

    def render_timesteps(self, scheduler: Any, state: HandoffState) -> torch.Tensor:
        self.check_image_handoff(state, self._render_transformer, self._vae)
        return super().render_timesteps(scheduler, state)


class Wan22I2VFamily(_ImageConditioned, Wan22Family):
    """Wan2.2-I2V-A14B: its high-noise expert sketches, its low-noise expert renders (no CLIP: image_dim None)."""

    name = "wan2.2-i2v"

    def check_pair(self, config: ModelPairConfig) -> None:
        super().check_pair(config)
        sketch, render = locate(config.sketch_path, render=False), locate(config.render_path, render=True)
        sketch_t = require_component_config(sketch.pipeline, sketch.subfolder)
        render_t = require_component_config(render.pipeline, render.subfolder)
        problems = image_problems(sketch_t, render_t, sketch.pipeline, config.max_sequence_length)
        refuse_misfit(sketch.transformer, render.transformer, problems)

    def check_handoff(self, state: HandoffState) -> None:
        self.check_image_handoff(state, self._render_transformer, self._vae_config)
        super().check_handoff(state)

    def render_timesteps(self, scheduler: Any, state: HandoffState) -> torch.Tensor:
        self.check_image_handoff(state, self._render_transformer, self._vae_config)
        return super().render_timesteps(scheduler, state)
