"""StyleGAN2-style discriminator and the GAN losses of the VQ-GAN (as in viper_rl's ``StyleGANDisc``).

Layout for 64x64 frames with ``base=32, max=512`` (the published settings): 1x1 conv to ``base`` channels,
four residual blocks that halve the resolution (64 -> 4; each: 3x3 conv, blurred stride-2 3x3 conv, plus a
blurred stride-2 1x1 skip, summed and scaled by 1/sqrt(2)), minibatch standard deviation (groups of 4, one
feature), a 3x3 valid conv, and two dense layers to one logit. Block widths follow the published code
(``min(2 * base * 2**i, max)``, with its in/out order). Activations are leaky ReLU with slope 0.01 (the
published code's ``jax.nn.leaky_relu`` default; StyleGAN2 itself uses 0.2); block convs start from N(0, 0.01)
weights as published.

Losses: non-saturating GAN, ``softplus(-D(fake))`` for the generator and
``softplus(D(fake)) + softplus(-D(real))`` for the discriminator, plus the R1 penalty
``gamma / 2 * mean_i ||grad_x D(x_i)||^2`` on real frames.

R1 mapping to the published ``gradient_penalty_weight = 1e8``: the published code takes the gradient of the
*batch mean* of the logits and then the *mean over all elements* of its square, i.e.
``1e8 / (B^2 * H*W*C) * mean_i ||grad D(x_i)||^2``. That depends on the batch size B; ours does not. At the
published B = 128 and 64x64x3 frames it equals ``gamma = 2e8 / (128^2 * 12288) = 0.99``, so
``r1_weight = 1.0`` is the published strength (if the published run split its batch over several devices,
each device's mean used its own smaller B and the effective gamma was larger).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from viper.models.layers import flax_init_

MBSTD_GROUP = 4
LEAKY_SLOPE = 0.01
BLUR_TAPS = (1.0, 3.0, 3.0, 1.0)


def blur(x: torch.Tensor) -> torch.Tensor:
    """Separable [1, 3, 3, 1] / 8 filter over H and W, 'valid' (each side shrinks by 3).

    Written as weighted sums of shifted slices: the same result as a depthwise 4x4 conv, but its double
    backward (needed by R1) costs a few element-wise ops instead of one small conv per channel on CPU.
    """
    taps = [t / sum(BLUR_TAPS) for t in BLUR_TAPS]
    k = len(taps)
    w = x.shape[-1] - k + 1
    x = sum(t * x[..., i : i + w] for i, t in enumerate(taps))
    h = x.shape[-2] - k + 1
    return sum(t * x[..., i : i + h, :] for i, t in enumerate(taps))


class BlurDownsampleConv(nn.Module):
    """[1,3,3,1] blur then a ``kernel``x``kernel`` conv with stride 2 (StyleGAN2's upfirdn downsampling)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int) -> None:
        super().__init__()
        # Padding that makes (blur, stride-2 conv) map H -> H/2 (upfirdn_2d's pad formula).
        total = len(BLUR_TAPS) - 2 + kernel - 1
        self.pad = ((total + 1) // 2, total // 2)
        self.conv = nn.Conv2d(in_channels, out_channels, kernel, stride=2)
        nn.init.normal_(self.conv.weight, std=0.01)
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lo, hi = self.pad
        return self.conv(blur(F.pad(x, (lo, hi, lo, hi))))


class DiscBlock(nn.Module):
    """Residual block halving the resolution: (B, in, H, W) -> (B, out, H/2, W/2)."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, mid_channels, 3, padding=1)
        nn.init.normal_(self.conv.weight, std=0.01)
        nn.init.zeros_(self.conv.bias)
        self.down = BlurDownsampleConv(mid_channels, out_channels, 3)
        self.skip = BlurDownsampleConv(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.leaky_relu(self.conv(x), LEAKY_SLOPE)
        y = F.leaky_relu(self.down(y), LEAKY_SLOPE)
        return (y + self.skip(x)) / math.sqrt(2.0)


def minibatch_stddev(x: torch.Tensor, group: int = MBSTD_GROUP) -> torch.Tensor:
    """Append one channel: the std over groups of ``group`` *consecutive* samples, averaged over C, H, W.

    Consecutive grouping (as published) keeps real and fake frames apart when they are concatenated
    ``[real; fake]`` with a batch size divisible by the group size. Deviation: the published code hands the
    group statistics back with ``tile`` (sample i gets group ``i mod (B/g)``'s value, not its own group's);
    here every sample gets its own group's value.
    """
    b, c, h, w = x.shape
    g = math.gcd(min(group, b), b)
    # (B, C, H, W) -> (B/g, g, C, H, W): statistics over the g members of each group.
    y = x.float().view(b // g, g, c, h, w)
    std = (y.var(dim=1, unbiased=False) + 1e-8).sqrt().mean(dim=(1, 2, 3))
    feature = std.repeat_interleave(g)[:, None, None, None].expand(b, 1, h, w).to(x.dtype)
    return torch.cat([x, feature], dim=1)


class Discriminator(nn.Module):
    """uint8-free interface: ``(B, 3, S, S)`` frames in [-1, 1] -> ``(B,)`` real/fake logits."""

    def __init__(self, base_channels: int = 32, max_channels: int = 512, image_size: int = 64) -> None:
        super().__init__()
        levels = int(math.log2(image_size)) - 1
        assert 2 ** (levels + 1) == image_size and levels >= 3, f"image size must be a power of 2, got {image_size}"
        widths = [min(2 * base_channels * 2**i, max_channels) for i in range(levels)]
        self.from_rgb = nn.Conv2d(3, base_channels, 1)
        blocks = []
        width = base_channels
        # Published pairing: (conv width, output width) = (widths[i+1], widths[i]).
        for mid, out in zip(widths[1:], widths[:-1], strict=True):
            blocks.append(DiscBlock(width, mid, out))
            width = out
        self.blocks = nn.Sequential(*blocks)
        self.final_conv = nn.Conv2d(width + 1, widths[-2], 3)
        self.fc = nn.Linear(widths[-2] * 2 * 2, widths[-1])
        self.out = nn.Linear(widths[-1], 1)
        # The blocks' convs are N(0, 0.01) as released; these layers keep flax's defaults there.
        flax_init_(self.from_rgb, self.final_conv, self.fc, self.out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.leaky_relu(self.from_rgb(x), LEAKY_SLOPE)
        y = self.blocks(y)
        assert y.shape[-1] == 4, f"discriminator expects 4x4 features before its head, got {tuple(y.shape)}"
        y = F.leaky_relu(self.final_conv(minibatch_stddev(y)), LEAKY_SLOPE)
        y = F.leaky_relu(self.fc(y.flatten(1)), LEAKY_SLOPE)
        return self.out(y).squeeze(1)


def generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss: mean softplus(-D(fake))."""
    return F.softplus(-fake_logits.float()).mean()


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """mean softplus(D(fake)) + softplus(-D(real))."""
    return (F.softplus(fake_logits.float()) + F.softplus(-real_logits.float())).mean()


def r1_penalty(real_logits: torch.Tensor, real: torch.Tensor, gamma: float) -> torch.Tensor:
    """``gamma / 2 * mean_i ||d D(x_i) / d x_i||^2``; ``real`` must require grad; differentiable."""
    (grad,) = torch.autograd.grad(real_logits.float().sum(), real, create_graph=True)
    return 0.5 * gamma * grad.float().pow(2).sum(dim=(1, 2, 3)).mean()
