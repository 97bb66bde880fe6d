"""The VIPER reward: log-likelihood of recent frames under the tokenizer + VideoGPT prior, per env step.

For step t of an episode the window holds the L = seq_len frames ``t - (L-1)*s, ..., t - s, t`` (s =
frame_skip); both come from the prior's checkpoint, so a window spans ``1 + (L-1)*s`` raw steps. Frames are
Atari-masked (score area blanked, as the tokens the prior was trained on), encoded once per episode, and the
windows are batched through the prior. Two definitions (the paper; viper_rl's ``VideoGPTRewardModel``):

* ``joint`` (default, the released code): r_t = sum_j log p(x_j | x_<j, task) over all L frames of the window.
* ``conditional`` (the paper's formula): r_t = log p(x_t | the L-1 earlier window frames, task).

Both sum over a frame's h*w tokens and are in nats, unscaled. Steps with fewer than a full window of history
(t < window_frames - 1) get NaN: the published agent never inserts them into replay (its first 15 steps are
context only), so there is no value to imitate and a made-up number would be silently wrong. The released
agent treats the first ``seq_len * frame_skip - 1`` steps as context (``context_steps``: 15 for every released
pair); for frame_skip 1 that is the same step, for (4, 4) ``score`` also scores steps 12-14, which the agent's
rewards (``agent_rewards``: replay, evaluation VIPER returns) leave out as released.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from viper import runtime
from viper.config import RewardConfig
from viper.errors import ViperError
from viper.hashing import file_sha256
from viper.models.prior_checkpoint import LoadedPrior, load_prior
from viper.models.videogpt import VideoGPT

FRAME_SHAPE = (64, 64, 3)


class Tokenizer(Protocol):
    """What the reward needs of ``viper.models.vqgan.Tokenizer``."""

    codebook: torch.Tensor
    grid: tuple[int, int]
    codebook_size: int
    hash: str

    def encode(self, frames: torch.Tensor) -> torch.Tensor: ...


def joint_reward(prior: VideoGPT, windows: torch.Tensor, task_ids: torch.Tensor | None) -> torch.Tensor:
    """Sum of every window frame's log p given the frames before it: (n, L, h, w) -> (n,) nats."""
    return prior.frame_log_probs(windows, task_ids).sum(dim=1)


def conditional_reward(prior: VideoGPT, windows: torch.Tensor, task_ids: torch.Tensor | None) -> torch.Tensor:
    """log p of the last window frame given the L-1 before it: (n, L, h, w) -> (n,) nats."""
    return prior.frame_log_probs(windows, task_ids, last_frames=1)[:, 0]


MODES: dict[str, Callable[[VideoGPT, torch.Tensor, torch.Tensor | None], torch.Tensor]] = {
    "joint": joint_reward,
    "conditional": conditional_reward,
}


class VideoReward:
    """Per-step VIPER rewards from a tokenizer and a prior trained on that tokenizer's tokens."""

    def __init__(self, tokenizer: Tokenizer, prior: LoadedPrior, cfg: RewardConfig) -> None:
        if cfg.mode not in MODES:
            raise ViperError(f"reward.mode={cfg.mode!r}: expected one of {', '.join(MODES)}")
        check_pair(tokenizer, prior)
        self.tokenizer = tokenizer
        self.prior = prior.model
        self.prior_path = prior.path
        """The prior's checkpoint folder (its name carries the step)."""
        self.cfg = cfg
        self.seq_len = prior.seq_len
        self.frame_skip = prior.frame_skip
        self._tasks = prior.tasks
        self._reduce = MODES[cfg.mode]
        self.device = next(self.prior.parameters()).device
        self._masks: dict[str, np.ndarray | None] = {}

    @classmethod
    def load(cls, tokenizer_dir: str | Path, prior_dir: str | Path, reward_cfg: RewardConfig) -> VideoReward:
        """Load a tokenizer run and a prior run (``reward_cfg.checkpoint``: latest or best) on the device."""
        from viper.models.vqgan import load_tokenizer

        device = runtime.resolve_device(reward_cfg.device, "reward.device")
        tokenizer = load_tokenizer(Path(tokenizer_dir), device=str(device))
        prior = load_prior(prior_dir, reward_cfg.checkpoint, device, reward_cfg.weights)
        return cls(tokenizer, prior, reward_cfg)

    def identity(self) -> str:
        """What the rewards depend on: the tokenizer's hash, the prior checkpoint's content (a retrained prior
        reuses step folder names), the mode, the weights that score (state.pt holds both EMA and raw) and, on
        CUDA, the precision. CPU scores keep the plain identity."""
        prior = file_sha256(self.prior_path / "state.pt")[:16]
        identity = f"{self.tokenizer.hash}|{prior}|{self.cfg.mode}|{self.cfg.weights}"
        if self.device.type != "cuda":
            return identity
        # Neither is the CPU's arithmetic: bf16 autocast, or float32 whose tokenizer convolutions cuDNN runs in
        # TF32 (torch's default), where a near-tie between codes can flip a token. Their scores must not mix
        # with CPU ones (reward-eval's records) or with each other.
        return identity + ("|bf16" if self.cfg.bf16 else "|cuda-float32")

    @property
    def window_frames(self) -> int:
        """Raw env steps one window spans: ``1 + (seq_len - 1) * frame_skip``."""
        return 1 + (self.seq_len - 1) * self.frame_skip

    @property
    def context_steps(self) -> int:
        """Leading steps of an episode the released agent treats as context, not reward: ``seq_len * frame_skip
        - 1`` (15 for every released pair; >= ``window_frames - 1``, by 1 for (8, 2) and 3 for (4, 4))."""
        return self.seq_len * self.frame_skip - 1

    def agent_rewards(self, frames: np.ndarray, task: str) -> np.ndarray:
        """An episode's rewards as the agent gets them: ``score`` of uint8 (T, 64, 64, 3) -> float32 (T,), NaN
        for the first ``context_steps`` steps (the training replay's and every evaluation's VIPER return)."""
        rewards = np.array(self.score(frames[None], task)[0], np.float32)
        rewards[: self.context_steps] = np.nan
        return rewards

    @property
    def tasks(self) -> tuple[str, ...]:
        """Tasks the prior was trained on, in task-id order."""
        return self._tasks

    @property
    def mode(self) -> str:
        return self.cfg.mode

    # ----------------------------------------------------------------------------------------------------
    # Inputs

    def task_id(self, task: str) -> int:
        if task not in self._tasks:
            raise ViperError(f"task {task!r} is not in the prior's task map; known tasks: {', '.join(self._tasks)}")
        return self._tasks.index(task)

    def check_frames(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 (B, T, 64, 64, 3) array or tensor -> uint8 CPU tensor; anything else raises ViperError."""
        if not isinstance(frames, (np.ndarray, torch.Tensor)):
            raise ViperError(f"frames: expected a uint8 array (B, T, 64, 64, 3), got {type(frames).__name__}")
        if frames.dtype not in (np.uint8, torch.uint8):
            raise ViperError(f"frames: expected dtype uint8 (RGB 0..255), got {frames.dtype}")
        if frames.ndim != 5 or tuple(frames.shape[2:]) != FRAME_SHAPE:
            raise ViperError(f"frames: expected shape (B, T, 64, 64, 3), got {tuple(frames.shape)}")
        # ascontiguousarray: views such as frames[:, ::-1] have negative strides, which torch refuses.
        return torch.as_tensor(np.ascontiguousarray(frames)) if isinstance(frames, np.ndarray) else frames

    def mask(self, task: str, frames: torch.Tensor) -> torch.Tensor:
        """Blank the score area of Atari frames (..., 64, 64, 3); DMC frames pass unchanged."""
        if task not in self._masks:
            from viper.envs import atari_mask

            keep = np.asarray(atari_mask(task), dtype=bool)
            assert keep.shape == FRAME_SHAPE[:2], f"atari_mask({task}) shape {keep.shape} != (64, 64)"
            self._masks[task] = None if keep.all() else keep
        keep = self._masks[task]
        if keep is None:
            return frames
        return frames * torch.from_numpy(keep)[:, :, None].to(frames.device, frames.dtype)

    @torch.inference_mode()
    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 (n, 64, 64, 3) -> long tokens (n, h, w) on the scoring device, in chunks."""
        step = max(1, self.cfg.encode_batch_frames)
        chunks = [
            self.tokenizer.encode(frames[i : i + step].to(self.device)).to(self.device)
            for i in range(0, frames.shape[0], step)
        ]
        tokens = torch.cat(chunks).long()
        h, w = self.tokenizer.grid
        assert tokens.shape == (frames.shape[0], h, w), f"tokenizer returned {tuple(tokens.shape)}"
        return tokens

    # ----------------------------------------------------------------------------------------------------
    # Scoring

    def window_offsets(self) -> np.ndarray:
        """Frame offsets of a window relative to its last step: ``-(L-1)*s, ..., -s, 0``."""
        return (np.arange(self.seq_len) - (self.seq_len - 1)) * self.frame_skip

    @torch.inference_mode()
    def score_tokens(self, tokens: torch.Tensor, task: str) -> np.ndarray:
        """Rewards of token episodes (B, T, h, w) long -> float32 (B, T) nats, NaN before a full window."""
        task_id = self.task_id(task)
        batch, steps = tokens.shape[:2]
        out = np.full((batch, steps), np.nan, dtype=np.float32)
        first = self.window_frames - 1
        if steps <= first:
            return out
        # One window per (episode b, last step t) with t >= first; gathered chunk by chunk to bound memory.
        b_idx, t_idx = np.meshgrid(np.arange(batch), np.arange(first, steps), indexing="ij")
        b_idx, t_idx = b_idx.reshape(-1), t_idx.reshape(-1)
        offsets = torch.as_tensor(self.window_offsets(), device=tokens.device)
        chunk = max(1, self.cfg.windows_per_batch)
        autocast = self.device.type == "cuda" and self.cfg.bf16
        values = []
        for i in range(0, b_idx.size, chunk):
            b = torch.as_tensor(b_idx[i : i + chunk], device=tokens.device)
            t = torch.as_tensor(t_idx[i : i + chunk], device=tokens.device)
            # (n, L, h, w): frames t + offsets of episode b
            windows = tokens[b[:, None], t[:, None] + offsets[None]]
            ids = torch.full((windows.shape[0],), task_id, device=self.device)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
                values.append(self._reduce(self.prior, windows.to(self.device), ids).float())
        # One copy to the host at the end: a copy per chunk would make the CPU wait for each chunk on a GPU
        # before it could queue the next.
        out[b_idx, t_idx] = torch.cat(values).cpu().numpy()
        return out

    def score(self, frames: np.ndarray | torch.Tensor, task: str) -> np.ndarray:
        """Per-step rewards of episodes: uint8 (B, T, 64, 64, 3) -> float32 (B, T) nats.

        Entry [b, t] scores the window ending at step t; entries with t < window_frames - 1 are NaN.
        """
        frames = self.check_frames(frames)
        self.task_id(task)
        batch, steps = frames.shape[:2]
        if steps < self.window_frames:
            return np.full((batch, steps), np.nan, dtype=np.float32)
        flat = self.mask(task, frames.reshape(batch * steps, *FRAME_SHAPE))
        tokens = self.encode(flat).reshape(batch, steps, *self.tokenizer.grid)
        return self.score_tokens(tokens, task)


def check_pair(tokenizer: Tokenizer, prior: LoadedPrior) -> None:
    """Refuse a tokenizer/prior pair whose grid, codebook or tokenizer checkpoint disagree."""
    spec = prior.model.spec
    where = f"prior {prior.path}"
    if tuple(tokenizer.grid) != tuple(spec.grid):
        raise ViperError(f"{where}: trained on a {spec.grid} token grid, the tokenizer makes {tokenizer.grid}")
    codebook = tokenizer.codebook.detach().float().cpu()
    if tuple(codebook.shape) != (spec.codebook_size, spec.embed_dim):
        raise ViperError(
            f"{where}: codebook ({spec.codebook_size}, {spec.embed_dim}) but the tokenizer's is "
            f"{tuple(codebook.shape)}: the pair does not belong together"
        )
    if prior.tokenizer_hash != tokenizer.hash:
        raise ViperError(
            f"{where}: trained on tokens of tokenizer {prior.tokenizer_hash}, but the tokenizer loaded is "
            f"{tokenizer.hash}: retrain the prior (`viper train-videogpt`) or load the matching tokenizer"
        )
    if not torch.allclose(codebook, prior.model.codebook.cpu(), atol=1e-6):
        raise ViperError(f"{where}: its stored codebook differs from the tokenizer's codebook")
