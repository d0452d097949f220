"""Moving a noisy latent between two diffusion models whose noise schedules and latent scalings differ.

A model with schedule alphas_cumprod `ab` and VAE latent scaling `s` sees, at timestep t,
x = sqrt(ab(t)) * s * v + sqrt(1 - ab(t)) * eps (v: the VAE latent, eps: unit noise). Its
signal-to-noise ratio is s^2 * SNR(t), SNR(t) = ab(t) / (1 - ab(t)). The render model sees the
same content at the same noise level at the timestep t' with
SNR_r(t') = (s_sketch / s_render)^2 * SNR_s(t), after rescaling x' = c * x with
c = sqrt(1 - ab_r(t')) / sqrt(1 - ab_s(t)) (the noise keeps unit variance, the signal follows).
A clean-sample estimate x0 = s * v maps by s_render / s_sketch.

Timesteps are integers (schedulers index alphas_cumprod with them), so t' is the integer whose
log-SNR is nearest to the target; the residual is at most half a timestep's log-SNR gap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def log_snr(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """log(ab / (1 - ab)) in float64; -inf where ab = 0 (zero terminal SNR), +inf where ab = 1."""
    ab = alphas_cumprod.to(torch.float64)
    return torch.log(ab) - torch.log1p(-ab)


@dataclass(frozen=True)
class SnrMatch:
    """The map from the sketch model's (timestep, latent) to the render model's."""

    sketch_alphas_cumprod: torch.Tensor
    render_alphas_cumprod: torch.Tensor
    sketch_scale: float
    render_scale: float

    @property
    def log_snr_offset(self) -> float:
        """log((s_sketch / s_render)^2): what the latent scalings add to the render model's log-SNR."""
        return 2.0 * math.log(self.sketch_scale / self.render_scale)

    def target_log_snr(self, sketch_timestep: int) -> float:
        return float(log_snr(self.sketch_alphas_cumprod[sketch_timestep])) + self.log_snr_offset

    def render_timestep(self, sketch_timestep: int) -> int:
        """The render timestep whose log-SNR is nearest to the sketch timestep's, scalings included."""
        target = self.target_log_snr(sketch_timestep)
        lam = log_snr(self.render_alphas_cumprod)
        if math.isinf(target):
            hits = torch.nonzero(lam == target).flatten()
            if len(hits):  # pure noise (or a clean sample) exists on the render schedule too
                return int(hits.max() if target < 0 else hits.min())
            return int(torch.argmin(lam)) if target < 0 else int(torch.argmax(lam))
        gap = (lam - target).abs()
        gap[~torch.isfinite(lam)] = math.inf
        return int(torch.argmin(gap))

    def latent_gain(self, sketch_timestep: int, render_timestep: int) -> float:
        """c = sqrt(1 - ab_r(t')) / sqrt(1 - ab_s(t)): keeps the noise at unit variance."""
        noise_render = 1.0 - float(self.render_alphas_cumprod[render_timestep])
        noise_sketch = 1.0 - float(self.sketch_alphas_cumprod[sketch_timestep])
        return math.sqrt(noise_render) / math.sqrt(noise_sketch)

    @property
    def clean_gain(self) -> float:
        """How a clean-sample estimate (x0 = s * v) maps from the sketch's latent space to the render's."""
        return self.render_scale / self.sketch_scale
