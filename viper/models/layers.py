"""Convolutional building blocks of the VQ-GAN encoder/decoder (taming-transformers layout, as published).

All blocks take and return ``(B, C, H, W)`` float tensors. Normalisation is GroupNorm with 32 groups as
published; widths below 32 channels (the small presets) use the largest group count that divides the width,
so ``tiny`` runs the same code with fewer channels.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


def lecun_normal_(weight: torch.Tensor) -> None:
    """flax's default Dense / Conv kernel init: truncated normal (+-2 sigma) with variance 1 / fan_in."""
    std = math.sqrt(1.0 / weight[0].numel()) / 0.87962566103423978  # the std of N(0,1) cut at +-2
    nn.init.trunc_normal_(weight, std=std, a=-2 * std, b=2 * std)


def flax_init_(*modules: nn.Module) -> None:
    """Every Conv2d / Linear inside ``modules`` as flax initialises them by default (the released models':
    LeCun-normal kernels, zero biases), instead of PyTorch's kaiming-uniform ones."""
    for module in modules:
        for layer in module.modules():
            if isinstance(layer, (nn.Conv2d, nn.Linear)):
                lecun_normal_(layer.weight)
                if layer.bias is not None:
                    nn.init.zeros_(layer.bias)


PUBLISHED_GROUPS = 32


def norm(channels: int) -> nn.GroupNorm:
    """GroupNorm(32) as published; ``gcd(32, C)`` groups when ``C`` is not a multiple of 32."""
    return nn.GroupNorm(math.gcd(PUBLISHED_GROUPS, channels), channels, eps=1e-6)


class ResBlock(nn.Module):
    """norm -> swish -> conv3x3 -> norm -> swish -> conv3x3, plus a 1x1 projection when widths differ."""

    def __init__(self, in_channels: int, out_channels: int | None = None) -> None:
        super().__init__()
        out_channels = out_channels or in_channels
        self.norm1 = norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all ``h*w`` positions with a residual connection (mid block only)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, _, h, w = x.shape
        y = self.norm(x)
        # (B, C, h, w) -> (B, 1 head, h*w, C): one token per latent position.
        q, k, v = (rearrange(f(y), "b c h w -> b 1 (h w) c") for f in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)
        out = rearrange(out, "b 1 (h w) c -> b c h w", h=h, w=w)
        return x + self.proj(out)


class Downsample(nn.Module):
    """3x3 conv with stride 2; pads one pixel bottom/right only, like TF/flax "SAME" for even sizes."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour x2 then a 3x3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class MidBlock(nn.Module):
    """res -> attention -> res at the lowest resolution (the only attention in the published model)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.res1 = ResBlock(channels)
        self.attn = AttnBlock(channels)
        self.res2 = ResBlock(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res2(self.attn(self.res1(x)))


class Encoder(nn.Module):
    """``(B, 3, H, W)`` in [-1, 1] -> ``(B, z_channels, H / 2**(L-1), W / 2**(L-1))`` for L = len(ch_mult)."""

    def __init__(self, base: int, ch_mult: tuple[int, ...], res_blocks: int, z_channels: int) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(3, base, 3, padding=1)
        layers: list[nn.Module] = []
        width = base
        for level, mult in enumerate(ch_mult):
            for _ in range(res_blocks):
                layers.append(ResBlock(width, base * mult))
                width = base * mult
            if level != len(ch_mult) - 1:
                layers.append(Downsample(width))
        self.down = nn.Sequential(*layers)
        self.mid = MidBlock(width)
        self.norm_out = norm(width)
        self.conv_out = nn.Conv2d(width, z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.down(self.conv_in(x)))
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """``(B, z_channels, h, w)`` -> ``(B, 3, h * 2**(L-1), w * 2**(L-1))``; one more res block per level."""

    def __init__(self, base: int, ch_mult: tuple[int, ...], res_blocks: int, z_channels: int) -> None:
        super().__init__()
        width = base * ch_mult[-1]
        self.conv_in = nn.Conv2d(z_channels, width, 3, padding=1)
        self.mid = MidBlock(width)
        layers: list[nn.Module] = []
        for level in reversed(range(len(ch_mult))):
            for _ in range(res_blocks + 1):
                layers.append(ResBlock(width, base * ch_mult[level]))
                width = base * ch_mult[level]
            if level != 0:
                layers.append(Upsample(width))
        self.up = nn.Sequential(*layers)
        self.norm_out = norm(width)
        self.conv_out = nn.Conv2d(width, 3, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.up(self.mid(self.conv_in(z)))
        return self.conv_out(F.silu(self.norm_out(h)))
