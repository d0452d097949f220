"""Wan2.1 text-to-video: sketch with Wan2.1-T2V-14B, render with Wan2.1-T2V-1.3B.

Both checkpoints share the umT5 text encoder, the Wan VAE, patch size and the UniPC flow
scheduler, so latents cross the handoff unchanged. The conditioning and decoding code mirrors
diffusers' WanPipeline operation for operation, which is what makes bit-exact parity possible.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_args

import numpy as np
import torch
from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
from diffusers.pipelines.wan.pipeline_wan import prompt_clean
from diffusers.video_processor import VideoProcessor
from transformers import AutoTokenizer, UMT5EncoderModel

from srserve.engine.config import ModelPairConfig
from srserve.engine.denoising.schedule import SCHEDULER_NAMES
from srserve.engine.families.base import EncodedPrompt, IncompatiblePairError, ModelFamily, require_component_config
from srserve.engine.models.attention import AttentionBackend
from srserve.engine.models.component_config import read_component_config
from srserve.engine.parallel.cfg import CfgSplit
from srserve.engine.request import ResolvedRequest

# Transformer fields that must agree for a latent to cross from one model to the other.
_TRANSFORMER_KEYS = ("in_channels", "out_channels", "patch_size", "text_dim")
_VAE_KEYS = ("z_dim", "latents_mean", "latents_std", "scale_factor_spatial", "scale_factor_temporal")
_SCHEDULER_KEYS = ("_class_name", "prediction_type", "use_flow_sigmas", "flow_shift", "num_train_timesteps")


def _compare(what: str, keys: tuple[str, ...], a: dict[str, Any], b: dict[str, Any], names: tuple[str, str]):
    for key in keys:
        if a.get(key) != b.get(key):
            raise IncompatiblePairError(
                f"{what} mismatch on {key!r}: {names[0]} has {a.get(key)!r}, {names[1]} has {b.get(key)!r}"
            )


class WanFamily(ModelFamily):
    name = "wan2.1"
    # WanAttnProcessor calls diffusers' dispatch_attention_fn (no mask, no joint text+video RoPE),
    # so every dispatcher backend applies.
    attention_backends = frozenset(get_args(AttentionBackend))
    cached_modules = (r"blocks\.\d+\.(attn1|attn2|ffn)",)
    lora_pipeline = WanPipeline  # its loader also serves wan2.2's two experts (transformer, transformer_2)
    # Flow matching: UniPC in its flow mode (the folders' own) or flow-match Euler (few-step checkpoints).
    schedulers = frozenset(SCHEDULER_NAMES)

    def check_pair(self, config: ModelPairConfig) -> None:
        if config.use_dynamic_cfg:
            raise IncompatiblePairError("use_dynamic_cfg is CogVideoXPipeline's option; Wan2.1 has no such schedule")
        for label, path in (("sketch", config.sketch_path), ("render", config.render_path)):
            if not Path(path).is_dir():
                raise IncompatiblePairError(f"{label} model folder {path!r} does not exist")
        sketch_t = require_component_config(config.sketch_path, "transformer")
        render_t = require_component_config(config.render_path, "transformer")
        _compare("transformer", _TRANSFORMER_KEYS, sketch_t, render_t, ("sketch", "render"))
        te = require_component_config(config.text_encoder_path or config.sketch_path, "text_encoder")
        if te.get("d_model") != sketch_t.get("text_dim"):
            raise IncompatiblePairError(
                f"text encoder width {te.get('d_model')} != transformer text_dim {sketch_t.get('text_dim')}"
            )
        vae = require_component_config(config.vae_path or config.render_path, "vae")
        problem = self.channel_problem(vae, sketch_t)
        if problem:
            raise IncompatiblePairError(problem)
        other_vae = read_component_config(config.sketch_path, "vae")
        if other_vae is not None:
            _compare("VAE", _VAE_KEYS, other_vae, vae, ("sketch", "render"))
        other_sched = read_component_config(config.render_path, "scheduler")
        if other_sched is not None:
            sched = require_component_config(config.sketch_path, "scheduler")
            _compare("scheduler", _SCHEDULER_KEYS, sched, other_sched, ("sketch", "render"))

    def channel_problem(self, vae: dict[str, Any], transformer: dict[str, Any]) -> str | None:
        """Whether the transformer's input channels are what this family feeds it from the VAE's latents."""
        if vae.get("z_dim") != transformer.get("in_channels"):
            return f"VAE z_dim {vae.get('z_dim')} != transformer in_channels {transformer.get('in_channels')}"
        return None

    def load_transformer(self, path: str, dtype: torch.dtype, device: torch.device) -> torch.nn.Module:
        model = WanTransformer3DModel.from_pretrained(path, subfolder="transformer", torch_dtype=dtype)
        return model.to(device).eval()

    def load_text_encoder(self, path: str, dtype: torch.dtype, device: torch.device) -> tuple[Any, Any]:
        tokenizer = AutoTokenizer.from_pretrained(path, subfolder="tokenizer")
        encoder = UMT5EncoderModel.from_pretrained(path, subfolder="text_encoder", dtype=dtype)
        return tokenizer, encoder.to(device).eval()

    def load_vae(self, path: str, dtype: torch.dtype, device: torch.device) -> torch.nn.Module:
        vae = AutoencoderKLWan.from_pretrained(path, subfolder="vae", torch_dtype=dtype)
        return vae.to(device).eval()

    def load_scheduler(self, path: str) -> Any:
        return UniPCMultistepScheduler.from_pretrained(path, subfolder="scheduler")

    def _embed(self, tokenizer: Any, encoder: Any, text: str, max_len: int, device: torch.device) -> torch.Tensor:
        inputs = tokenizer(
            [prompt_clean(text)],
            padding="max_length",
            max_length=max_len,
            truncation=True,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        ids, mask = inputs.input_ids, inputs.attention_mask
        seq_lens = mask.gt(0).sum(dim=1).long()
        enc_device = next(encoder.parameters()).device
        embeds = encoder(ids.to(enc_device), mask.to(enc_device)).last_hidden_state
        embeds = embeds.to(dtype=encoder.dtype, device=device)
        # Zero the padding positions, as WanPipeline does.
        embeds = [u[:v] for u, v in zip(embeds, seq_lens, strict=True)]
        return torch.stack([torch.cat([u, u.new_zeros(max_len - u.size(0), u.size(1))]) for u in embeds])

    @torch.no_grad()
    def encode_prompt(
        self, tokenizer: Any, text_encoder: Any, request: ResolvedRequest, max_len: int, device: torch.device
    ) -> EncodedPrompt:
        positive = self._embed(tokenizer, text_encoder, request.prompt, max_len, device)
        negative = None
        if request.guidance_scale > 1.0:
            negative = self._embed(tokenizer, text_encoder, request.negative_prompt or "", max_len, device)
        return EncodedPrompt(positive, negative)

    def latent_shape(self, request: ResolvedRequest, vae_config: dict[str, Any]) -> tuple[int, ...]:
        temporal = int(vae_config.get("scale_factor_temporal", 4))
        spatial = int(vae_config.get("scale_factor_spatial", 8))
        frames = (request.num_frames - 1) // temporal + 1
        return (
            1,
            int(vae_config.get("z_dim", 16)),
            frames,
            request.height // spatial,
            request.width // spatial,
        )

    @torch.no_grad()
    def predict(
        self,
        transformer: torch.nn.Module,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        encoded: EncodedPrompt,
        guidance_scale: float,
        *,
        cfg_split: CfgSplit | None = None,
    ) -> torch.Tensor:
        cfg = guidance_scale > 1.0
        return self._guided(transformer, latents, timestep, encoded, guidance_scale, cfg=cfg, cfg_split=cfg_split)

    def _guided(
        self,
        transformer: torch.nn.Module,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        encoded: EncodedPrompt,
        guidance_scale: float,
        *,
        cfg: bool,
        cfg_split: CfgSplit | None = None,
    ) -> torch.Tensor:
        """WanPipeline's step prediction; `cfg` apart from the scale, since Wan2.2 decides it on another scale.

        Image-to-video (WanImageToVideoPipeline): the image condition joins the latent's channels, and
        the CLIP embeddings go to a transformer that has image cross-attention (`image_dim`), only.
        Video editing (WanVACEPipeline): the VACE context goes to the VACE blocks, scaled per VACE layer; the
        pipeline sizes the scale by its first transformer's layers, this by each model's own (a scalar scale
        either way, so equal where the pipeline runs, and a 1.3B with more VACE layers than a 14B runs too).
        """
        dtype = transformer.dtype
        if encoded.image_condition is None:
            model_input = latents.to(dtype)
        else:
            model_input = torch.cat([latents, encoded.image_condition.to(latents.device)], dim=1).to(dtype)
        image_embeds = None
        if encoded.image_embeds is not None and transformer.config.get("image_dim") is not None:
            image_embeds = encoded.image_embeds.to(latents.device, dtype)
        t = timestep.expand(latents.shape[0])
        control: dict[str, torch.Tensor] = {}
        if encoded.vace_context is not None:  # WanVACEPipeline: the context, its scale per VACE layer of this model
            layers = len(transformer.config.vace_layers)
            control = {
                "control_hidden_states": encoded.vace_context.to(latents.device, dtype),
                "control_hidden_states_scale": torch.tensor([encoded.conditioning_scale] * layers).to(
                    latents.device, dtype
                ),
            }

        def branch(name: str, embeds: torch.Tensor) -> torch.Tensor:
            # The named context keeps a step cache's state per branch (as WanPipeline does); a no-op without one.
            with transformer.cache_context(name):
                return transformer(
                    hidden_states=model_input,
                    timestep=t,
                    encoder_hidden_states=embeds.to(dtype),
                    encoder_hidden_states_image=image_embeds,
                    return_dict=False,
                    **control,
                )[0]

        if cfg:
            assert encoded.negative_prompt_embeds is not None
        if cfg and cfg_split is not None:  # CFG parallel: this rank's branch only, the other's by exchange
            name = cfg_split.branch
            mine = branch(name, encoded.prompt_embeds if name == "cond" else encoded.negative_prompt_embeds)
            pred, uncond = cfg_split.exchange(mine)
            return uncond + guidance_scale * (pred - uncond)
        pred = branch("cond", encoded.prompt_embeds)
        if cfg:
            uncond = branch("uncond", encoded.negative_prompt_embeds)
            pred = uncond + guidance_scale * (pred - uncond)
        return pred

    @torch.no_grad()
    def decode(self, vae: torch.nn.Module, latents: torch.Tensor) -> np.ndarray:
        cfg = vae.config
        latents = latents.to(next(vae.parameters()).device, dtype=vae.dtype)
        mean = torch.tensor(cfg.latents_mean).view(1, cfg.z_dim, 1, 1, 1).to(latents.device, latents.dtype)
        inv_std = 1.0 / torch.tensor(cfg.latents_std).view(1, cfg.z_dim, 1, 1, 1).to(latents.device, latents.dtype)
        latents = latents / inv_std + mean
        video = vae.decode(latents, return_dict=False)[0]
        frames = VideoProcessor(vae_scale_factor=cfg.scale_factor_spatial).postprocess_video(video, output_type="np")
        return np.asarray(frames[0], dtype=np.float32)
