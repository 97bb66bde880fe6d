"""VideoGPT prior over token videos, as released with VIPER (viper_rl's ``viper_rl/videogpt/models/``).

A window of T frames, each an h x w grid of codebook indices, is flattened in raster order (time, row,
column) into N = T*h*w tokens. Token i is predicted from tokens < i by a pre-LN causal transformer:

    input_i = W_in e(token_{i-1}) + concat(pos_t[t_i], pos_h[r_i], pos_w[c_i])   (input_0 = learned start vector)

where e() is the tokenizer's codebook vector (not a new embedding table) and the factorised learned position
biases give each axis its own third of the channels, concatenated (as released). Every LayerNorm (eps 1e-6) is a
conditional LayerNorm on the one-hot task id c: ``LN(x) * (1 + W_s c) + W_b c`` (with ``num_classes == 0`` a
plain affine LN). The MLP uses the released code's GELU approximation ``x * sigmoid(1.702 x)``, with dropout
after it and on both residual branches; linear weights use flax's default (LeCun-normal) initialisation. An
id outside the task map raises instead of becoming an all-zero vector as in the original. One known difference:
attention dropout draws its mask per batch element and head (PyTorch's fused attention); the released flax
attention shares one mask across both (``broadcast_dropout``), which would need the N x N weights materialised
(2 GB at the published batch).

Shape legend: B batch, T frames, h w latent grid, N = T*h*w tokens, K codebook size, D codebook vector
dimension, d model width.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from viper.errors import ViperError
from viper.models.layers import lecun_normal_

LN_EPS = 1e-6
"""LayerNorm epsilon of the released code."""


class PriorInputError(ViperError, ValueError):
    """Tokens or task ids that the prior cannot score (wrong shape, out-of-range index or task id)."""


@dataclass(frozen=True)
class PriorSpec:
    """Everything needed to rebuild a ``VideoGPT`` (stored in every checkpoint)."""

    d_model: int
    layers: int
    heads: int
    mlp_dim: int
    dropout: float
    seq_len: int
    grid: tuple[int, int]
    codebook_size: int
    embed_dim: int
    num_classes: int
    """Tasks of the conditional LayerNorms; 0 for an unconditional prior."""

    def to_dict(self) -> dict:
        return {**asdict(self), "grid": list(self.grid)}

    @classmethod
    def from_dict(cls, values: dict) -> PriorSpec:
        return cls(**{**values, "grid": tuple(values["grid"])})

    @property
    def tokens_per_frame(self) -> int:
        return self.grid[0] * self.grid[1]


class ConditionalLayerNorm(nn.Module):
    """LayerNorm whose scale and bias come from the one-hot task id: ``LN(x) * (1 + W_s c) + W_b c``."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        if num_classes == 0:
            self.norm = nn.LayerNorm(dim, eps=LN_EPS)
            return
        self.norm = nn.LayerNorm(dim, eps=LN_EPS, elementwise_affine=False)
        self.scale = nn.Linear(num_classes, dim, bias=False)
        self.bias = nn.Linear(num_classes, dim, bias=False)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        """x (B, n, d); cond (B, num_classes) one-hot float or None when unconditional."""
        x = self.norm(x)
        if self.num_classes == 0:
            return x
        return x * (1 + self.scale(cond)[:, None]) + self.bias(cond)[:, None]


class QuickGELU(nn.Module):
    """``x * sigmoid(1.702 x)``: the GELU approximation of the released VideoGPT."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


def axis_channels(d_model: int, axes: int = 3) -> list[int]:
    """Channels of each axis' position bias (T, h, w): d_model split in near-equal parts, as released."""
    return [d_model // axes + (i < d_model % axes) for i in range(axes)]


class CausalSelfAttention(nn.Module):
    def __init__(self, spec: PriorSpec) -> None:
        super().__init__()
        assert spec.d_model % spec.heads == 0, f"d_model {spec.d_model} not divisible by heads {spec.heads}"
        self.heads = spec.heads
        self.dropout = spec.dropout
        self.qkv = nn.Linear(spec.d_model, 3 * spec.d_model)
        self.out = nn.Linear(spec.d_model, spec.d_model)

    def forward(self, x: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        """x (B, n, d). With ``cache`` (a dict, filled on the first call), x are the next n tokens after the
        cached ones: the first call may hold a whole prefix (causal), later calls one token each."""
        # (B, n, 3d) -> 3 x (B, heads, n, d/heads)
        q, k, v = rearrange(self.qkv(x), "b n (three g c) -> three b g n c", three=3, g=self.heads)
        causal = True
        if cache is not None:
            if "k" in cache:
                assert x.shape[1] == 1, "after the prefix the KV cache decodes one token at a time"
                k = torch.cat([cache["k"], k], dim=2)
                v = torch.cat([cache["v"], v], dim=2)
                causal = False  # one query attending to everything before it and itself
            cache["k"], cache["v"] = k, v
        drop = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=drop, is_causal=causal)
        return self.out(rearrange(y, "b g n c -> b n (g c)"))


class Block(nn.Module):
    """Pre-LN transformer block: x + Attn(LN(x)), then x + MLP(LN(x)); dropout on both branches."""

    def __init__(self, spec: PriorSpec) -> None:
        super().__init__()
        self.ln1 = ConditionalLayerNorm(spec.d_model, spec.num_classes)
        self.attn = CausalSelfAttention(spec)
        self.ln2 = ConditionalLayerNorm(spec.d_model, spec.num_classes)
        self.mlp = nn.Sequential(
            nn.Linear(spec.d_model, spec.mlp_dim),
            QuickGELU(),
            nn.Dropout(spec.dropout),
            nn.Linear(spec.mlp_dim, spec.d_model),
        )
        self.drop = nn.Dropout(spec.dropout)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None, cache: dict | None = None) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln1(x, cond), cache))
        return x + self.drop(self.mlp(self.ln2(x, cond)))


class VideoGPT(nn.Module):
    """Autoregressive prior p(tokens | task) over windows of up to ``spec.seq_len`` frames.

    ``codebook`` (K, D) float is the tokenizer's codebook, kept as a frozen buffer: it is saved with the
    prior, so a reward model can refuse a tokenizer whose codebook differs.
    """

    def __init__(self, spec: PriorSpec, codebook: torch.Tensor) -> None:
        super().__init__()
        assert codebook.shape == (spec.codebook_size, spec.embed_dim), (
            f"codebook shape {tuple(codebook.shape)} != (codebook_size, embed_dim) "
            f"({spec.codebook_size}, {spec.embed_dim})"
        )
        self.spec = spec
        d = spec.d_model
        self.register_buffer("codebook", codebook.detach().float().clone())
        self.proj_in = nn.Linear(spec.embed_dim, d)
        self.start = nn.Parameter(torch.zeros(d))
        c_t, c_h, c_w = axis_channels(d)
        self.pos_t = nn.Parameter(torch.zeros(spec.seq_len, c_t))
        self.pos_h = nn.Parameter(torch.zeros(spec.grid[0], c_h))
        self.pos_w = nn.Parameter(torch.zeros(spec.grid[1], c_w))
        self.blocks = nn.ModuleList(Block(spec) for _ in range(spec.layers))
        self.ln_f = ConditionalLayerNorm(d, spec.num_classes)
        self.head = nn.Linear(d, spec.codebook_size)
        self.drop = nn.Dropout(spec.dropout)
        self._init_weights()

    def _init_weights(self) -> None:
        # As released (flax defaults): LeCun-normal weights, zero biases; start and position tables N(0, 0.02).
        for module in self.modules():
            if isinstance(module, nn.Linear):
                lecun_normal_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        for table in (self.start, self.pos_t, self.pos_h, self.pos_w):
            nn.init.normal_(table, std=0.02)

    # ----------------------------------------------------------------------------------------------------
    # Input checks and embeddings

    def check_inputs(self, tokens: torch.Tensor, task_ids: torch.Tensor | None) -> torch.Tensor | None:
        """Validate tokens (B, T, h, w) and task ids (B,); return the one-hot condition (B, C) or None.

        The index ranges are checked for CPU tensors only: on a GPU, reading them back would make the CPU wait
        for the device at every update and every reward chunk. GPU inputs come from checked places (token
        store splits at load, the tokenizer's own encodings, task ids from ``task_id``), and an index out of
        range there still fails loudly, as a device-side assert of the embedding lookup."""
        spec = self.spec
        if tokens.dim() != 4 or tuple(tokens.shape[2:]) != spec.grid or not 1 <= tokens.shape[1] <= spec.seq_len:
            raise PriorInputError(
                f"prior tokens: expected (B, T<={spec.seq_len}, {spec.grid[0]}, {spec.grid[1]}), "
                f"got {tuple(tokens.shape)}"
            )
        if tokens.dtype not in (torch.int16, torch.int32, torch.int64, torch.uint8):
            raise PriorInputError(f"prior tokens: expected an integer tensor, got {tokens.dtype}")
        on_cpu = tokens.device.type == "cpu"
        if on_cpu and tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= spec.codebook_size):
            raise PriorInputError(
                f"prior tokens: indices must lie in [0, {spec.codebook_size}), "
                f"got [{int(tokens.min())}, {int(tokens.max())}]"
            )
        if spec.num_classes == 0:
            return None
        if task_ids is None:
            raise PriorInputError(f"prior is task-conditioned ({spec.num_classes} tasks): task_ids required")
        task_ids = torch.as_tensor(task_ids, device=tokens.device).long().reshape(-1)
        if task_ids.shape[0] != tokens.shape[0]:
            raise PriorInputError(f"task_ids: expected {tokens.shape[0]} ids, got {task_ids.shape[0]}")
        if on_cpu and task_ids.numel() and (int(task_ids.min()) < 0 or int(task_ids.max()) >= spec.num_classes):
            raise PriorInputError(
                f"task_ids: the prior knows task ids 0..{spec.num_classes - 1}, got {task_ids.tolist()}"
            )
        return F.one_hot(task_ids, spec.num_classes).to(self.start.dtype)

    def positions(self, frames: int) -> torch.Tensor:
        """Factorised position biases of the first ``frames`` frames, flattened in raster order: (N, d)."""
        (h, w), parts = self.spec.grid, (self.pos_t[:frames], self.pos_h, self.pos_w)
        # Each axis' table broadcast over the other two axes, then the three channel chunks side by side.
        pos = torch.cat(
            [
                parts[0][:, None, None].expand(frames, h, w, -1),
                parts[1][None, :, None].expand(frames, h, w, -1),
                parts[2][None, None, :].expand(frames, h, w, -1),
            ],
            dim=-1,
        )
        return rearrange(pos, "t h w d -> (t h w) d")

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Right-shifted inputs: tokens (B, T, h, w) -> (B, N, d), position i sees token i-1."""
        x = self.proj_in(self.codebook[tokens.long()])
        x = rearrange(x, "b t h w d -> b (t h w) d")
        start = self.start.expand(x.shape[0], 1, -1)
        x = torch.cat([start, x[:, :-1]], dim=1)
        return self.drop(x + self.positions(tokens.shape[1]))

    # ----------------------------------------------------------------------------------------------------
    # Likelihoods

    def hidden(self, tokens: torch.Tensor, task_ids: torch.Tensor | None) -> torch.Tensor:
        """Final (normalised) hidden states (B, N, d) for tokens (B, T, h, w)."""
        cond = self.check_inputs(tokens, task_ids)
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x, cond)
        return self.ln_f(x, cond)

    def forward(self, tokens: torch.Tensor, task_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, T, h, w, K) of every token given the tokens before it in raster order."""
        logits = self.logits(self.hidden(tokens, task_ids))
        return rearrange(logits, "b (t h w) k -> b t h w k", t=tokens.shape[1], h=self.spec.grid[0])

    def frame_log_probs(
        self, tokens: torch.Tensor, task_ids: torch.Tensor | None = None, last_frames: int | None = None
    ) -> torch.Tensor:
        """log p(frame_t | frames < t, task) summed over each frame's h*w tokens, in nats: float32 (B, T).

        ``last_frames=n`` evaluates the output head only on the last n frames (returns (B, n)); the
        conditional reward needs only the last frame.
        """
        hidden = self.hidden(tokens, task_ids)
        frames = tokens.shape[1] if last_frames is None else last_frames
        assert 1 <= frames <= tokens.shape[1], f"last_frames={last_frames} outside 1..{tokens.shape[1]}"
        logits = self.logits(hidden[:, -frames * self.spec.tokens_per_frame :])
        targets = rearrange(tokens[:, -frames:].long(), "b t h w -> b (t h w)")
        nll = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
        return -rearrange(nll, "b (t n) -> b t n", t=frames).sum(-1)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The output head in float32 even under bf16 autocast (the logits, not only the cross entropy):
        rewards sum log-probabilities over a frame's tokens, and bf16 logits move a frame's sum by ~1 nat."""
        with torch.autocast(hidden.device.type, enabled=False):
            return self.head(hidden.float())

    def loss(self, tokens: torch.Tensor, task_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Mean negative log-likelihood per token in nats (divide by ln 2 for bits per token)."""
        logits = self.logits(self.hidden(tokens, task_ids))
        targets = rearrange(tokens.long(), "b t h w -> b (t h w)")
        return F.cross_entropy(logits.transpose(1, 2), targets)

    # ----------------------------------------------------------------------------------------------------
    # Sampling (open-loop predictions for the training pictures)

    @torch.no_grad()
    def sample(
        self,
        context: torch.Tensor,
        task_ids: torch.Tensor | None,
        frames: int,
        generator: torch.Generator | None = None,
        temperature: float = 1.0,
    ) -> torch.Tensor:
        """Continue ``context`` tokens (B, k, h, w) by ``frames`` sampled frames: (B, k + frames, h, w) long.

        Uses a KV cache: the context in one causal pass, then one token per step.
        """
        assert not self.training, "sample() expects eval mode (dropout off)"
        spec = self.spec
        total = context.shape[1] + frames
        assert context.shape[1] >= 1 and total <= spec.seq_len, f"context + frames must lie in 1..{spec.seq_len}"
        cond = self.check_inputs(context, task_ids)
        if frames == 0:
            return context.long()
        caches: list[dict] = [{} for _ in self.blocks]
        pos = self.positions(total)
        # Prefix pass: inputs for positions 0..n_ctx (the first token to sample is position n_ctx).
        n_ctx = context.shape[1] * spec.tokens_per_frame
        flat = rearrange(context.long(), "b t h w -> b (t h w)")
        x = self.proj_in(self.codebook[flat])
        x = torch.cat([self.start.expand(x.shape[0], 1, -1), x], dim=1) + pos[: n_ctx + 1]
        out = list(flat.unbind(1))
        for i in range(n_ctx, total * spec.tokens_per_frame):
            for block, cache in zip(self.blocks, caches, strict=True):
                x = block(x, cond, cache)
            logits = self.logits(self.ln_f(x[:, -1:], cond))[:, 0] / temperature
            token = torch.multinomial(logits.softmax(-1), 1, generator=generator)[:, 0]
            out.append(token)
            if i + 1 < total * spec.tokens_per_frame:
                x = self.proj_in(self.codebook[token])[:, None] + pos[i + 1]
        grid = torch.stack(out, dim=1)
        return rearrange(grid, "b (t h w) -> b t h w", t=total, h=spec.grid[0])
