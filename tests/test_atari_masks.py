"""Atari adapter and scoreboard masks: every game runs at 64x64, and each mask covers that game's score.

Evidence per game, from the emulator itself: perturbing one RAM byte at a time (then one step) finds the
bytes whose picture lies entirely inside the masked area (a counter the game draws there); for games where
the seeded policy below scores, one of those bytes changes exactly when the reward arrives, i.e. it is the
score, and the mask covers every pixel it draws. A picture of every game's raw and masked frame is written
to a temporary folder (its path is printed).
"""

from __future__ import annotations

import imageio.v3 as iio
import numpy as np
import pytest

from viper.envs import atari_mask, make, suites
from viper.envs.masks import SCORE_BOXES, apply_mask
from viper.errors import ViperError

GAMES = suites.tasks("atari")
# Policies that score within a few hundred steps (a chicken only scores by crossing the road).
SCORING_ACTION = {"atari/freeway": 2}
NO_SCORE_WITHIN_BUDGET = {"atari/zaxxon"}  # random play scores almost never; only the RAM evidence applies


def drawn_only_in_mask(env, mask: np.ndarray) -> set[int]:
    """RAM bytes whose change (then one NOOP step) alters pixels, all of them inside the masked area."""
    ale = env.ale
    state = ale.cloneState(include_rng=True)
    ram = ale.getRAM().copy()
    env.step(0)
    reference = env.render().astype(int)
    found = set()
    for address in range(len(ram)):
        for delta in (0x11, 0x05):
            ale.restoreState(state)
            ale.setRAM(address, (int(ram[address]) + delta) % 256)
            env.step(0)
            changed = np.abs(env.render().astype(int) - reference).sum(-1) > 0
            if changed.any() and not changed[mask].any():
                found.add(address)
    ale.restoreState(state)
    return found


def bytes_changing_at_rewards(task: str, max_steps: int = 700) -> tuple[set[int], int]:
    """RAM bytes that change at every rewarded step (first 2 rewards) of a seeded policy, and the count."""
    env = make(task, seed=0)
    env.reset()
    rng = np.random.default_rng(0)
    ram = env.ale.getRAM().copy()
    common: set[int] | None = None
    events = 0
    for _ in range(max_steps):
        action = SCORING_ACTION.get(task, int(rng.integers(18)))
        _, reward, terminated, _, _ = env.step(action)
        new = env.ale.getRAM().copy()
        if reward != 0:
            changed = set(np.flatnonzero(new != ram).tolist())
            common = changed if common is None else common & changed
            events += 1
            if events == 2:
                break
        ram = new
        if terminated:
            break
    env.close()
    return common or set(), events


@pytest.mark.parametrize("task", GAMES)
def test_mask_covers_the_score(task):
    mask = atari_mask(task)
    assert mask.shape == (64, 64) and mask.dtype == bool
    assert 0.03 < (~mask).mean() < 0.25, "a scoreboard mask should blank a band, not nothing or the game"
    env = make(task, seed=0)
    env.reset()
    for _ in range(30):
        env.step(0)
    hud = drawn_only_in_mask(env, mask)
    env.close()
    assert hud, f"{task}: no RAM counter is drawn inside the masked area"
    if task in NO_SCORE_WITHIN_BUDGET:
        return
    score_bytes, events = bytes_changing_at_rewards(task)
    assert events >= 1, f"{task}: the seeded policy did not score; pick another"
    assert score_bytes & hud, f"{task}: no byte that changes with the score is drawn only inside the mask"


def test_masks_are_game_specific_and_pictured(tmp_path_factory):
    masks = {task: atari_mask(task) for task in GAMES}
    distinct = {m.tobytes() for m in masks.values()}
    assert len(distinct) >= 5, "masks should follow each game's own scoreboard"
    rows = []
    for task in GAMES:
        env = make(task, seed=0)
        obs = env.reset()[0]
        for _ in range(60):
            obs = env.step(1)[0]
        env.close()
        masked = apply_mask(obs, masks[task])
        assert (masked[~masks[task]] == 0).all() and np.array_equal(masked[masks[task]], obs[masks[task]])
        rows.append(np.concatenate([obs, masked], axis=1))
    picture = np.concatenate(rows, axis=0)
    path = tmp_path_factory.mktemp("atari_masks") / "atari_masks.png"
    iio.imwrite(path, np.repeat(np.repeat(picture, 3, axis=0), 3, axis=1))
    print(f"\nAtari masks (raw | masked, one row per game {', '.join(GAMES)}): {path}")
    assert path.stat().st_size > 0
    assert set(SCORE_BOXES) == {t.removeprefix("atari/") for t in GAMES}


def test_atari_frames_actions_and_episode_limit():
    env = make("atari/pong", seed=0, episode_env_steps=5)
    obs, _ = env.reset()
    assert obs.shape == (64, 64, 3) and obs.dtype == np.uint8
    assert env.action_space.n == 18, "full action space"
    flags = [env.step(0)[3] for _ in range(5)]
    assert flags == [False] * 4 + [True]
    env.close()


def test_atari_frame_is_max_of_last_two_screens_resized():
    """Reference: replay the same actions frame by frame on a second emulator and pool by hand."""
    import cv2
    import gymnasium

    env = make("atari/boxing", seed=3, action_repeat=4)
    env.reset()
    raw = gymnasium.make("ALE/Boxing-v5", frameskip=1, repeat_action_probability=0.25, full_action_space=True).unwrapped
    raw.reset(seed=3)
    actions = raw.ale.getLegalActionSet()
    rng = np.random.default_rng(0)
    for _ in range(12):
        action = int(rng.integers(18))
        obs, reward, *_ = env.step(action)
        screens, total = [], 0.0
        for _ in range(4):
            total += raw.ale.act(actions[action])
            screens.append(raw.ale.getScreenRGB())
        expected = cv2.resize(np.maximum(screens[-2], screens[-1]), (64, 64), interpolation=cv2.INTER_AREA)
        np.testing.assert_array_equal(obs, expected)
        assert reward == total
    env.close()
    raw.close()


def test_atari_seeding():
    def frames(seed):
        env = make("atari/pong", seed=seed)
        env.reset()
        out = [env.step(a % 6)[0] for a in range(150)]
        env.close()
        return np.stack(out)

    a, b = frames(4), frames(4)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, frames(5))  # and the seed is used (sticky actions differ)


def test_unknown_game_mask():
    with pytest.raises(ViperError, match="atari/pong"):
        atari_mask("atari/tetris")
