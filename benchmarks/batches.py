"""The random training batch the agent-update benchmarks feed ours and the reference port (numpy only)."""

from __future__ import annotations

import numpy as np


def random_batch(batch: int, length: int, action_dim: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Uniform 64x64 frames, actions in [-1, 1], normal rewards; each sequence starts an episode, none ends."""
    rng = np.random.default_rng(seed)
    is_first = np.zeros((batch, length), bool)
    is_first[:, 0] = True
    return {
        "image": rng.integers(0, 256, (batch, length, 64, 64, 3), dtype=np.uint8),
        "action": rng.uniform(-1, 1, (batch, length, action_dim)).astype(np.float32),
        "reward": rng.normal(size=(batch, length)).astype(np.float32),
        "is_first": is_first,
        "is_terminal": np.zeros((batch, length), bool),
    }
