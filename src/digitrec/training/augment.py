"""Batched augmentation on tensors: the whole batch is transformed in a few tensor ops.

Each image gets its own random affine transform (rotation, zoom, shear, shift), and
optionally a thicker or thinner stroke, a fat pen's filled loops, uneven ink with
speckle, and an elastic distortion, so the model sees the ways people really draw and
photograph: slanted, off-centre, bold or thin, pressed unevenly. Digits and negatives of a batch are
augmented alike, so no augmentation can tell them apart. Inputs and outputs are
float images in [0, 1] with ink = 1, shape (N, 1, H, W); labels are never touched.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from digitrec.config import Settings


@dataclass(frozen=True)
class AugmentConfig:
    """The ``aug_*`` settings (see config.py for their meaning and defaults)."""

    rotation: float
    scale: float
    shear: float
    translate: float
    stroke: float = 0.0
    elastic: float = 0.0
    elastic_alpha: float = 1.5
    elastic_sigma: float = 3.0
    texture: float = 0.0
    fat: float = 0.0

    @classmethod
    def from_settings(cls, s: Settings) -> AugmentConfig:
        """Each field from the setting of the same name with ``aug_`` in front (a field
        without its setting fails here, at once, rather than silently keep a default)."""
        return cls(**{f.name: getattr(s, f"aug_{f.name}") for f in fields(cls)})


def _uniform(n: int, limit: float, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    return (torch.rand(n, generator=gen, device=device) * 2 - 1) * limit


def affine_matrices(
    n: int, cfg: AugmentConfig, gen: torch.Generator, device: torch.device
) -> torch.Tensor:
    """(n, 2, 3) matrices mapping output to input coordinates in [-1, 1] space."""
    angle = _uniform(n, math.radians(cfg.rotation), gen, device)
    zoom = 1 + _uniform(n, cfg.scale, gen, device)
    shear = _uniform(n, cfg.shear, gen, device)
    shift = torch.stack([_uniform(n, 2 * cfg.translate, gen, device) for _ in range(2)], 1)
    cos, sin = torch.cos(angle), torch.sin(angle)
    linear = (
        torch.stack(
            [
                torch.stack([cos, cos * shear - sin], 1),
                torch.stack([sin, sin * shear + cos], 1),
            ],
            1,
        )
        / zoom[:, None, None]
    )
    return torch.cat([linear, shift[:, :, None]], 2)


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, math.ceil(3 * sigma))
    coords = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-(coords**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    channels = x.shape[1]
    kx = kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1)
    ky = kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), kx, groups=channels)
    return F.conv2d(F.pad(x, (0, 0, radius, radius), mode="reflect"), ky, groups=channels)


def _on_some(
    x: torch.Tensor, chosen: torch.Tensor, change: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """``x`` with ``change`` applied to the chosen images only (computed for those alone:
    a change applied to a few images of a batch costs a few images' work)."""
    rows = chosen.nonzero().flatten()
    if rows.numel() == 0:
        return x
    out = x.clone()
    out[rows] = change(x[rows])
    return out


def _change_stroke(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """Dilate (thicker) or erode (thinner) a random share of the batch by half a pixel."""
    pick = torch.rand(x.shape[0], generator=gen, device=x.device)
    x = _on_some(x, pick < cfg.stroke, lambda a: F.max_pool2d(F.pad(a, (0, 1, 0, 1)), 2, stride=1))
    return _on_some(
        x, pick > 1 - cfg.stroke, lambda a: -F.max_pool2d(F.pad(-a, (0, 1, 0, 1)), 2, stride=1)
    )


def _fat(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """For a random share of the batch: a fat pen, as a small digit drawn with a broad
    one arrives once its strokes are thinned back: small loops and gaps filled (a 5x5
    closing), strokes half a pixel bolder."""

    def fat(a: torch.Tensor) -> torch.Tensor:
        closed = -F.max_pool2d(-F.max_pool2d(a, 5, stride=1, padding=2), 5, stride=1, padding=2)
        return F.max_pool2d(F.pad(closed, (0, 1, 0, 1)), 2, stride=1)

    return _on_some(x, torch.rand(x.shape[0], generator=gen, device=x.device) < cfg.fat, fat)


def _texture(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """For a random share of the batch: uneven ink (a smooth random field between 0.5 and
    1 multiplies it, as pen pressure or a photo's light does) and faint speckle around
    the strokes, as photos and JPEG screenshots arrive after preprocessing."""
    n = x.shape[0]
    field = _gaussian_blur(torch.rand(x.shape, generator=gen, device=x.device), 1.0)
    field = 0.5 + 0.5 * (field - field.amin((2, 3), keepdim=True)) / (
        field.amax((2, 3), keepdim=True) - field.amin((2, 3), keepdim=True)
    ).clamp_min(1e-6)
    speckle = torch.rand(x.shape, generator=gen, device=x.device) * 0.12
    near_ink = F.max_pool2d(x, 5, stride=1, padding=2) > 0.2
    textured = (x * field + speckle * near_ink).clamp(0, 1)
    apply = torch.rand(n, generator=gen, device=x.device)[:, None, None, None] < cfg.texture
    return torch.where(apply, textured, x)


def augment_batch(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """Randomly transform each image of a float batch (N, 1, H, W) in [0, 1]."""
    n, _, h, w = x.shape
    if cfg.stroke > 0:
        x = _change_stroke(x, cfg, gen)
    if cfg.fat > 0:
        x = _fat(x, cfg, gen)
    if cfg.texture > 0:
        x = _texture(x, cfg, gen)
    grid = F.affine_grid(affine_matrices(n, cfg, gen, x.device), [n, 1, h, w], align_corners=False)
    if cfg.elastic > 0:
        noise = torch.rand(n, 2, h, w, generator=gen, device=x.device) * 2 - 1
        field = _gaussian_blur(noise, cfg.elastic_sigma)
        field = field / field.abs().amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)
        apply = torch.rand(n, generator=gen, device=x.device) < cfg.elastic
        scale = torch.tensor(
            [2 * cfg.elastic_alpha / w, 2 * cfg.elastic_alpha / h], device=x.device
        )
        field = field.permute(0, 2, 3, 1) * scale * apply[:, None, None, None]
        grid = grid + field
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.clamp_(0, 1)
