"""The VIPER reward computed the slow, obvious way: one window at a time, encoded and scored on its own.

This is the reference the batched ``VideoReward.score`` is tested against, and the naive baseline of
benchmarks/bench_reward.py. It evaluates the prior on the full window in both modes and picks the frames the
mode needs, so it shares no windowing or chunking code with the fast path.
"""

from __future__ import annotations

import numpy as np
import torch

from viper.reward.model import VideoReward


@torch.inference_mode()
def score_per_window(reward: VideoReward, frames: np.ndarray, task: str) -> np.ndarray:
    """uint8 (B, T, 64, 64, 3) -> float32 (B, T) nats, NaN before a full window; one forward per step."""
    frames = reward.check_frames(frames)
    task_id = torch.tensor([reward.task_id(task)], device=reward.device)
    batch, steps = frames.shape[:2]
    out = np.full((batch, steps), np.nan, dtype=np.float32)
    span = (reward.seq_len - 1) * reward.frame_skip
    for b in range(batch):
        for t in range(span, steps):
            window = frames[b, t - span : t + 1 : reward.frame_skip]
            assert window.shape[0] == reward.seq_len
            tokens = reward.tokenizer.encode(reward.mask(task, window).to(reward.device)).long()
            per_frame = reward.prior.frame_log_probs(tokens[None].to(reward.device), task_id)[0].float()
            out[b, t] = per_frame.sum().item() if reward.mode == "joint" else per_frame[-1].item()
    return out
