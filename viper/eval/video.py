"""Episode videos with the reward curve drawn under the frames (GIF), without a plotting library per frame."""

from __future__ import annotations

from pathlib import Path

import numpy as np

CURVE_HEIGHT = 40


def reward_strip(rewards: np.ndarray, width: int, height: int = CURVE_HEIGHT) -> np.ndarray:
    """uint8 (T, height, width, 3): frame t shows the reward curve up to step t and a cursor at t.

    ``rewards`` (T,) float; NaN steps (no full window of history) are left out of the curve.
    """
    steps = len(rewards)
    finite = np.isfinite(rewards)
    low, high = (float(rewards[finite].min()), float(rewards[finite].max())) if finite.any() else (0.0, 1.0)
    span = max(high - low, 1e-8)
    # Pixel coordinates of every step: x across the width, y from the bottom (high reward at the top).
    xs = np.round(np.linspace(0, width - 1, steps)).astype(int) if steps > 1 else np.zeros(1, int)
    ys = np.where(finite, np.round((high - np.nan_to_num(rewards, nan=low)) / span * (height - 3)) + 1, -1).astype(int)
    strips = np.full((steps, height, width, 3), 24, dtype=np.uint8)
    for t in range(steps):
        if ys[t] >= 0:
            strips[t:, ys[t], xs[t]] = (90, 200, 255)  # the point stays drawn in every later frame
        strips[t, :, xs[t]] = np.maximum(strips[t, :, xs[t]], 70)  # cursor
    return strips


def reward_video(frames: np.ndarray, rewards: np.ndarray, scale: int = 2) -> np.ndarray:
    """uint8 (T, scale*H + CURVE_HEIGHT, scale*W, 3): frames upscaled, the reward curve underneath."""
    assert frames.ndim == 4 and frames.shape[-1] == 3, f"expected frames (T, H, W, 3), got {frames.shape}"
    assert len(frames) == len(rewards), f"{len(frames)} frames but {len(rewards)} rewards"
    big = frames.repeat(scale, axis=1).repeat(scale, axis=2)
    return np.concatenate([big, reward_strip(np.asarray(rewards, np.float64), big.shape[2])], axis=1)


def write_gif(path: str | Path, video: np.ndarray, fps: int = 20) -> Path:
    """Write ``video`` uint8 (T, H, W, 3) as a looping GIF atomically."""
    import imageio.v3 as iio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    iio.imwrite(tmp, video, extension=".gif", duration=1000 / fps, loop=0)
    tmp.replace(path)
    return path
