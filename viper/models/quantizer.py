"""Vector quantizer of the VQ-GAN: L2 nearest neighbour, straight-through gradient, commitment loss.

As published (viper_rl's ``VectorQuantizer``): the codebook is a plain learned parameter (no EMA), initialised
uniformly in ``[-1/K, 1/K]``; the loss is ``||sg(z) - e||^2 + beta * ||z - sg(e)||^2`` (means over all
elements) with ``beta = 0.25``; the decoder sees ``z + sg(e - z)``. Two named options, off by default because
the published code has neither: ``kmeans_init`` (codebook from k-means on the first training batch) and
``dead_code_restart`` (codes unused for ``restart_every`` training steps are re-seeded from encoder outputs).
Both keep every DistributedDataParallel rank identical by broadcasting rank 0's codebook.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from einops import rearrange
from torch import nn

KMEANS_ITERS = 10
NEAREST_CHUNK_ROWS = 16384
"""Rows per distance-matrix chunk: bounds memory at (16384, K) floats when tokenising large batches."""


@dataclass
class Quantized:
    """Output of ``VectorQuantizer.forward``; losses are 0-d float32 tensors."""

    z_q: torch.Tensor
    """(B, D, h, w) straight-through quantized latents (forward value = codebook vectors)."""
    codes: torch.Tensor
    """(B, h, w) long code indices."""
    loss: torch.Tensor
    """codebook term + commitment_weight * commitment term."""
    commitment: torch.Tensor
    """mean ||z - sg(e)||^2 (unweighted)."""
    perplexity: torch.Tensor
    """exp(entropy) of the batch's code histogram (K when uniform, 1 when collapsed)."""
    usage: torch.Tensor
    """Fraction of the K codes used at least once in the batch."""


def nearest_codes(flat: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Index of the L2-nearest codebook row for each row of ``flat`` (N, D) -> (N,) long; no gradient."""
    with torch.no_grad():
        sq_codes = codebook.pow(2).sum(1)
        out = []
        for part in flat.split(NEAREST_CHUNK_ROWS):
            # ||x - e||^2 = ||x||^2 - 2 x.e + ||e||^2; ||x||^2 does not change the argmin, so it is left out.
            dist_sq = sq_codes[None, :] - 2.0 * part @ codebook.t()
            out.append(dist_sq.argmin(1))
        return torch.cat(out) if out else flat.new_zeros(0, dtype=torch.long)


def code_stats(codes: torch.Tensor, codebook_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(counts (K,) float, perplexity, usage fraction) of a set of code indices."""
    counts = torch.bincount(codes.flatten(), minlength=codebook_size).float()
    probs = counts / counts.sum().clamp_min(1.0)
    perplexity = torch.exp(-(probs * torch.log(probs + 1e-10)).sum())
    usage = (counts > 0).float().mean()
    return counts, perplexity, usage


def kmeans(x: torch.Tensor, k: int, iters: int = KMEANS_ITERS) -> torch.Tensor:
    """Lloyd's k-means on rows of ``x`` (N, D) -> centroids (k, D); seeds from the torch global RNG."""
    n = x.shape[0]
    pick = torch.randperm(n, device=x.device)[:k] if n >= k else torch.randint(0, n, (k,), device=x.device)
    centroids = x[pick].clone()
    for _ in range(iters):
        assign = nearest_codes(x, centroids)
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).float()[:, None]
        # An empty cluster keeps its previous centroid instead of becoming NaN.
        centroids = torch.where(counts > 0, sums / counts.clamp_min(1.0), centroids)
    return centroids


def _broadcast_from_rank0(tensor: torch.Tensor) -> None:
    if dist.is_available() and dist.is_initialized():
        dist.broadcast(tensor, src=0)


class VectorQuantizer(nn.Module):
    """Quantize ``(B, D, h, w)`` latents to the nearest of ``codebook_size`` learned ``D``-vectors."""

    def __init__(
        self,
        codebook_size: int,
        dim: int,
        commitment_weight: float = 0.25,
        kmeans_init: bool = False,
        dead_code_restart: bool = False,
        restart_every: int = 200,
    ) -> None:
        super().__init__()
        self.codebook_size = codebook_size
        self.dim = dim
        self.commitment_weight = commitment_weight
        self.dead_code_restart = dead_code_restart
        self.restart_every = restart_every
        k = codebook_size
        self.codebook = nn.Parameter(torch.empty(k, dim).uniform_(-1.0 / k, 1.0 / k))
        # Persistent so that a resumed run neither re-initialises nor loses the restart window.
        self.register_buffer("initialized", torch.tensor(not kmeans_init))
        self.register_buffer("window_counts", torch.zeros(k))
        self.register_buffer("window_steps", torch.zeros((), dtype=torch.long))
        self._mirror_buffers()

    def _mirror_buffers(self) -> None:
        """Host copies of ``initialized`` and ``window_steps``, which the training forward consults every update:
        reading the buffers there would make the CPU wait for the GPU at each one."""
        self._initialized, self._window_steps = bool(self.initialized), int(self.window_steps)

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._mirror_buffers()  # a resumed run: the loaded buffers, read once

    def forward(self, z: torch.Tensor) -> Quantized:
        """``z`` (B, D, h, w) -> ``Quantized``; distances and losses in float32 even under autocast."""
        assert z.ndim == 4 and z.shape[1] == self.dim, f"expected (B, {self.dim}, h, w) latents, got {z.shape}"
        b, _, h, w = z.shape
        with torch.autocast(z.device.type, enabled=False):
            # (B, D, h, w) -> (B*h*w, D): one row per latent position.
            flat = rearrange(z.float(), "b d h w -> (b h w) d")
            if self.training and not self._initialized:
                self._kmeans_init(flat.detach())
            codes = nearest_codes(flat, self.codebook)
            e = self.codebook[codes]
            commitment = F.mse_loss(flat, e.detach())
            codebook_term = F.mse_loss(e, flat.detach())
            loss = codebook_term + self.commitment_weight * commitment
            # Straight-through: forward value e, gradient of the identity to the encoder.
            st = flat + (e - flat).detach()
            counts, perplexity, usage = code_stats(codes, self.codebook_size)
            if self.training and self.dead_code_restart:
                self._track_and_restart(flat.detach(), counts)
        z_q = rearrange(st, "(b h w) d -> b d h w", b=b, h=h, w=w).to(z.dtype)
        return Quantized(
            z_q=z_q,
            codes=codes.view(b, h, w),
            loss=loss,
            commitment=commitment.detach(),
            perplexity=perplexity,
            usage=usage,
        )

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, h, w) long -> (B, D, h, w) codebook vectors."""
        return rearrange(self.codebook[codes], "b h w d -> b d h w")

    @torch.no_grad()
    def _kmeans_init(self, flat: torch.Tensor) -> None:
        self.codebook.data.copy_(kmeans(flat, self.codebook_size))
        _broadcast_from_rank0(self.codebook.data)
        self.initialized.fill_(True)
        self._initialized = True

    @torch.no_grad()
    def _track_and_restart(self, flat: torch.Tensor, counts: torch.Tensor) -> None:
        self.window_counts += counts
        self.window_steps += 1
        self._window_steps += 1
        if self._window_steps < self.restart_every:
            return
        total = self.window_counts.clone()
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(total)
        dead = total == 0
        n_dead = int(dead.sum())
        if n_dead:
            # Re-seed each dead code at a random encoder output of this batch (rank 0's, then broadcast).
            pick = torch.randint(0, flat.shape[0], (n_dead,), device=flat.device)
            self.codebook.data[dead] = flat[pick]
            _broadcast_from_rank0(self.codebook.data)
        self.window_counts.zero_()
        self.window_steps.zero_()
        self._window_steps = 0
