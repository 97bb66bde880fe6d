"""Reward curves drawn under episode frames: pixel positions against a direct computation."""

from __future__ import annotations

import numpy as np

from viper.eval.video import CURVE_HEIGHT, reward_strip, reward_video, write_gif


def test_strip_draws_each_step_at_its_height_and_keeps_it():
    rewards = np.array([np.nan, 0.0, 5.0, 10.0])
    strips = reward_strip(rewards, width=4)
    assert strips.shape == (4, CURVE_HEIGHT, 4, 3)
    curve = (90, 200, 255)
    # Lowest reward at the bottom row used (height-2), highest at row 1; NaN is not drawn.
    expected_rows = {1: CURVE_HEIGHT - 2, 2: round((10 - 5) / 10 * (CURVE_HEIGHT - 3)) + 1, 3: 1}
    for t, row in expected_rows.items():
        assert tuple(strips[t, row, t]) == curve
        assert tuple(strips[-1, row, t]) == curve, "earlier points stay drawn"
        assert tuple(strips[t - 1, row, t]) != curve, "a point appears only from its own step on"
    assert not (strips[:, :, 0] == curve).all(axis=-1).any(), "the NaN step has no point"


def test_video_stacks_frames_and_curve_and_writes_a_gif(tmp_path):
    frames = np.random.default_rng(0).integers(0, 255, (5, 64, 64, 3), dtype=np.uint8)
    video = reward_video(frames, np.arange(5.0))
    assert video.shape == (5, 128 + CURVE_HEIGHT, 128, 3)
    assert (video[:, :128:2, ::2] == frames).all()
    path = write_gif(tmp_path / "ep.gif", video)
    import imageio.v3 as iio

    assert iio.imread(path, index=None).shape[0] == 5
