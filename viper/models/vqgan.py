"""VQ-GAN frame tokenizer: the published taming-style model and the ``Tokenizer`` that the prior uses.

Model (viper_rl's ``VQGAN`` in ``videogpt/models/vqgan.py``, sizes in ``configs/vqgan/``): conv encoder with
``len(channel_mult)`` levels (``res_blocks`` residual blocks each, stride-2 conv between levels), a mid block
res-attention-res, a 1x1 conv to ``embed_dim``, the vector quantizer, a 1x1 conv back and the mirrored decoder
with one more residual block per level. ``z_channels = embed_dim`` (both 64 as published). 64x64 frames give a
8x8 grid with 4 levels (DMC) and 16x16 with 3 levels (Atari).

Frames cross this module's boundary as uint8 ``(N, 64, 64, 3)`` (H W C); inside the model they are float
``(B, 3, H, W)`` scaled to [-1, 1].
"""

from __future__ import annotations

import hashlib
import pickle
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from einops import rearrange
from torch import nn

from viper.config import TokenizerConfig
from viper.errors import ViperError
from viper.models.layers import Decoder, Encoder, flax_init_
from viper.models.quantizer import Quantized, VectorQuantizer

IMAGE_SIZE = 64


@dataclass(frozen=True)
class VQGANArch:
    """The fields that fix the weights' shapes; stored in every checkpoint and checked on load."""

    base_channels: int
    channel_mult: tuple[int, ...]
    res_blocks: int
    embed_dim: int
    codebook_size: int

    @classmethod
    def from_config(cls, cfg: TokenizerConfig) -> VQGANArch:
        return cls(**{f.name: getattr(cfg, f.name) for f in fields(cls)})

    @property
    def grid(self) -> tuple[int, int]:
        """Latent grid (h, w) of a 64x64 frame."""
        side = IMAGE_SIZE // 2 ** (len(self.channel_mult) - 1)
        return side, side

    def mismatches(self, other: VQGANArch) -> list[str]:
        """``tokenizer.key: mine vs other`` for every differing field."""
        a, b = asdict(self), asdict(other)
        return [f"tokenizer.{k}: {a[k]!r} vs {b[k]!r}" for k in a if tuple_or(a[k]) != tuple_or(b[k])]


def tuple_or(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def frames_to_model(frames: np.ndarray | torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float32 (N, 3, H, W) in [-1, 1] on ``device``."""
    x = torch.as_tensor(frames)
    assert x.dtype == torch.uint8 and x.ndim == 4 and x.shape[-1] == 3, (
        f"expected uint8 frames (N, H, W, 3), got {tuple(x.shape)} {x.dtype}"
    )
    x = x.to(device, non_blocking=True)
    return rearrange(x, "n h w c -> n c h w").float().div_(127.5).sub_(1.0)


def model_to_frames(x: torch.Tensor) -> torch.Tensor:
    """float (N, 3, H, W) in [-1, 1] -> uint8 (N, H, W, 3), clamped and rounded."""
    x = ((x.float().clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)
    return rearrange(x, "n c h w -> n h w c")


@dataclass
class VQGANOutput:
    recon: torch.Tensor
    """(B, 3, H, W) reconstruction in model scale (not clamped)."""
    quant: Quantized


class VQGAN(nn.Module):
    """Encoder -> quant_conv -> vector quantizer -> post_quant_conv -> decoder."""

    def __init__(
        self,
        arch: VQGANArch,
        commitment_weight: float = 0.25,
        kmeans_init: bool = False,
        dead_code_restart: bool = False,
        restart_every: int = 200,
    ) -> None:
        super().__init__()
        self.arch = arch
        z = arch.embed_dim
        self.encoder = Encoder(arch.base_channels, arch.channel_mult, arch.res_blocks, z)
        self.quant_conv = nn.Conv2d(z, arch.embed_dim, 1)
        self.quantizer = VectorQuantizer(
            arch.codebook_size,
            arch.embed_dim,
            commitment_weight,
            kmeans_init,
            dead_code_restart,
            restart_every,
        )
        self.post_quant_conv = nn.Conv2d(arch.embed_dim, z, 1)
        self.decoder = Decoder(arch.base_channels, arch.channel_mult, arch.res_blocks, z)
        flax_init_(self.encoder, self.quant_conv, self.post_quant_conv, self.decoder)

    @classmethod
    def from_config(cls, cfg: TokenizerConfig) -> VQGAN:
        return cls(
            VQGANArch.from_config(cfg),
            cfg.commitment_weight,
            cfg.kmeans_init,
            cfg.dead_code_restart,
            cfg.dead_code_every_grad_steps,
        )

    def forward(self, x: torch.Tensor) -> VQGANOutput:
        """``x`` (B, 3, 64, 64) in [-1, 1] -> reconstruction and quantizer output."""
        quant = self.quantizer(self.quant_conv(self.encoder(x)))
        return VQGANOutput(self.decoder(self.post_quant_conv(quant.z_q)), quant)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, 64, 64) in [-1, 1] -> (B, h, w) long codes."""
        return self.quantizer(self.quant_conv(self.encoder(x))).codes

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, h, w) long codes -> (B, 3, 64, 64) reconstruction in model scale."""
        return self.decoder(self.post_quant_conv(self.quantizer.lookup(codes)))


def weights_hash(state_dict: dict[str, torch.Tensor]) -> str:
    """sha256 over (name, dtype, shape, bytes) of every tensor in name order; first 16 hex digits."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()[:16]


class Tokenizer:
    """A trained VQ-GAN in eval mode: uint8 frames <-> (N, h, w) long tokens."""

    def __init__(self, model: VQGAN, hash: str, device: torch.device | str = "cpu", batch_size: int = 256):
        self.model = model.eval().to(device)
        self.device = torch.device(device)
        self.hash = hash
        self.batch_size = batch_size

    @property
    def grid(self) -> tuple[int, int]:
        return self.model.arch.grid

    @property
    def codebook_size(self) -> int:
        return self.model.arch.codebook_size

    @property
    def codebook(self) -> torch.Tensor:
        """(K, D) float32 codebook vectors (a detached copy on the tokenizer's device)."""
        return self.model.quantizer.codebook.detach().clone()

    @torch.no_grad()
    def encode(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 (N, 64, 64, 3) -> long (N, h, w) on the tokenizer's device, in batches of ``batch_size``."""
        frames = torch.as_tensor(frames)
        assert frames.ndim == 4 and frames.shape[1:] == (IMAGE_SIZE, IMAGE_SIZE, 3), (
            f"expected frames (N, {IMAGE_SIZE}, {IMAGE_SIZE}, 3), got {tuple(frames.shape)}"
        )
        out = [self.model.encode(frames_to_model(part, self.device)) for part in frames.split(self.batch_size)]
        return torch.cat(out) if out else torch.zeros((0, *self.grid), dtype=torch.long, device=self.device)

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """long (N, h, w) -> uint8 (N, 64, 64, 3) on the tokenizer's device."""
        tokens = torch.as_tensor(tokens).to(self.device, torch.long)
        assert tokens.ndim == 3 and tuple(tokens.shape[1:]) == self.grid, (
            f"expected tokens (N, {self.grid[0]}, {self.grid[1]}), got {tuple(tokens.shape)}"
        )
        assert tokens.numel() == 0 or int(tokens.min()) >= 0 and int(tokens.max()) < self.codebook_size, (
            f"token ids must lie in [0, {self.codebook_size})"
        )
        out = [model_to_frames(self.model.decode(part)) for part in tokens.split(self.batch_size)]
        empty = torch.zeros((0, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=torch.uint8, device=self.device)
        return torch.cat(out) if out else empty


def resolve_checkpoint(path: str | Path) -> Path:
    """A run folder, its ``checkpoints/`` folder, a step folder or a ``state.pt`` -> the ``state.pt`` file."""
    from viper.checkpoint import Checkpointer

    path = Path(path)
    if path.is_file():
        return path
    for folder in (path / "checkpoints", path):
        latest = Checkpointer(folder).latest_path() if folder.is_dir() else None
        if latest is not None:
            return latest / "state.pt"
    if (path / "state.pt").is_file():
        return path / "state.pt"
    raise ViperError(
        f"no tokenizer checkpoint under {path} (expected checkpoints/step_*/state.pt with a 'done' marker); "
        "run `viper train-tokenizer` first"
    )


def check_arch(saved: VQGANArch, expected: VQGANArch, source: Path) -> None:
    """Raise a ViperError naming each differing field when a checkpoint does not fit the configuration."""
    diffs = expected.mismatches(saved)
    if diffs:
        raise ViperError(
            f"tokenizer checkpoint {source} does not match the configuration (config vs checkpoint): "
            + "; ".join(diffs)
            + ". Use the preset it was trained with, or delete the run folder to train anew."
        )


def load_tokenizer(
    run_dir_or_checkpoint: str | Path,
    device: torch.device | str = "cpu",
    expected: TokenizerConfig | None = None,
) -> Tokenizer:
    """Load the newest complete tokenizer checkpoint (eval mode). ``expected`` checks the architecture."""
    from viper.file_integrity import verify

    source = resolve_checkpoint(run_dir_or_checkpoint)
    verify(source.parent)  # damaged weights would tokenise (and so score) without a word
    try:
        state = torch.load(source, map_location="cpu", weights_only=False)
    except (OSError, EOFError, RuntimeError, pickle.UnpicklingError) as exc:
        raise ViperError(f"{source}: cannot be read as a tokenizer checkpoint ({exc})") from None
    if not isinstance(state, dict) or "model" not in state or "arch" not in state:
        raise ViperError(f"{source}: not a tokenizer checkpoint (expected keys 'model' and 'arch')")
    try:
        saved = VQGANArch(**{**state["arch"], "channel_mult": tuple(state["arch"]["channel_mult"])})
    except (KeyError, TypeError) as exc:
        raise ViperError(
            f"{source}: its 'arch' does not describe this code's VQ-GAN ({exc}); was it written by another "
            "version? Train the tokenizer again (viper train-tokenizer)"
        ) from None
    if expected is not None:
        check_arch(saved, VQGANArch.from_config(expected), source)
    model = VQGAN(saved)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise ViperError(f"{source}: weights do not fit the stored architecture {saved}: {exc}") from None
    return Tokenizer(model, weights_hash(state["model"]), device)
