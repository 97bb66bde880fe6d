"""LPIPS-VGG16 perceptual distance (Zhang et al. 2018, "lin" v0.1 variant), loaded from a local file only.

Nothing downloads at run time here, so the weights come from ``tokenizer.lpips_weights_path``: one
``torch.save``d dict holding torchvision's VGG16 ``features.<i>.weight/bias`` tensors and the LPIPS linear
heads, either as the lpips package names them (``lin<k>.model.1.weight``) or as ``lins.<k>.weight``. To
make it on a machine with network access::

    vgg = torchvision.models.vgg16(weights="IMAGENET1K_V1").state_dict()
    lins = torch.load("lpips/weights/v0.1/vgg.pth")        # from the lpips package
    torch.save({**{k: v for k, v in vgg.items() if k.startswith("features.")}, **lins}, "lpips_vgg.pt")

Without a configured file the perceptual term is switched off with one log line (``build_perceptual``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from viper.errors import ViperError

# VGG16 "D" configuration: conv widths, "M" = 2x2 max-pool; LPIPS taps relu1_2, 2_2, 3_3, 4_3 and 5_3.
VGG16_LAYERS = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
TAP_WIDTHS = (64, 128, 256, 512, 512)
# LPIPS input normalisation for images in [-1, 1].
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)


class LPIPS(nn.Module):
    """``forward(x, y)``: (B, 3, H, W) in [-1, 1] twice -> (B,) perceptual distances. Frozen, eval mode."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_channels = 3
        self.taps: list[int] = []
        for spec in VGG16_LAYERS:
            if spec == "M":
                layers.append(nn.MaxPool2d(2, 2))
                continue
            layers += [nn.Conv2d(in_channels, int(spec), 3, padding=1), nn.ReLU()]
            in_channels = int(spec)
        # Tap after the ReLU that precedes each pool, and after the last ReLU.
        self.taps = [i - 1 for i, m in enumerate(layers) if isinstance(m, nn.MaxPool2d)] + [len(layers) - 1]
        self.features = nn.Sequential(*layers)
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in TAP_WIDTHS)
        self.register_buffer("shift", torch.tensor(SHIFT)[None, :, None, None], persistent=False)
        self.register_buffer("scale", torch.tensor(SCALE)[None, :, None, None], persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> LPIPS:
        # Always frozen: a parent's .train() must not switch it.
        return super().train(False)

    def _features(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        h = (x - self.shift) / self.scale
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in self.taps:
                out.append(h)
        return out

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        total = x.new_zeros(x.shape[0], dtype=torch.float32)
        for fx, fy, lin in zip(self._features(x), self._features(y), self.lins, strict=True):
            # Unit-normalise each position's channel vector, then a learned non-negative channel weighting.
            nx = fx.float() / (fx.float().pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            ny = fy.float() / (fy.float().pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            total = total + F.conv2d((nx - ny).pow(2), lin.weight.float()).mean(dim=(1, 2, 3))
        return total


def _rename(key: str) -> str:
    match = re.fullmatch(r"lin(\d)\.model\.1\.weight", key) or re.fullmatch(r"lin(\d)\.weight", key)
    return f"lins.{match.group(1)}.weight" if match else key


def load_lpips(path: str | Path) -> LPIPS:
    """Build LPIPS-VGG16 from the local weights file described in the module docstring."""
    path = Path(path)
    if not path.is_file():
        raise ViperError(
            f"tokenizer.lpips_weights_path={str(path)!r}: file not found (expected a torch.save'd dict of "
            "VGG16 'features.*' and LPIPS 'lin*' weights; set it to '' to train without the perceptual term)"
        )
    raw = torch.load(path, map_location="cpu", weights_only=True)
    state = {_rename(k): v for k, v in raw.items() if k.startswith(("features.", "lin"))}
    model = LPIPS()
    missing = sorted(set(model.state_dict()) - set(state))
    if missing:
        raise ViperError(f"{path}: LPIPS-VGG weights file lacks {len(missing)} tensors, e.g. {missing[:3]}")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ViperError(f"{path}: LPIPS-VGG weights have the wrong shapes: {exc}") from None
    return model


def build_perceptual(weight: float, weights_path: str, log: Callable[[str], None]) -> LPIPS | None:
    """LPIPS when ``weight > 0`` and a weights file is configured; else ``None`` and one log line."""
    if weight <= 0:
        log("tokenizer: perceptual (LPIPS) term off: tokenizer.perceptual_weight is 0")
        return None
    if not weights_path:
        log(
            "tokenizer: perceptual (LPIPS-VGG) term OFF - tokenizer.lpips_weights_path is empty and weights "
            "cannot be downloaded here; training without it (see viper/models/lpips.py for where to get them)"
        )
        return None
    return load_lpips(weights_path)
