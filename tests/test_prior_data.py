"""The prior's token windows (viper/train/prior_data.py) against slow loops, on a real token store whose token
values name their (task, episode, frame): which split, which stride, which task id, how balanced, how uniform."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from viper.data.tokens import write_tokens
from viper.data.windows import combine_order
from viper.errors import ViperError
from viper.train.prior_data import TrainWindows, eval_windows, load_splits

TASKS = ("dmc/cartpole_balance", "dmc/cartpole_swingup")
LENGTHS = {TASKS[0]: [9, 4, 12, 7, 3], TASKS[1]: [6, 10, 8, 5, 11]}
SPLITS = {TASKS[0]: [0, 1, 0, 1, 1], TASKS[1]: [1, 0, 0, 1, 0]}  # mixed, so a swapped code shows
SEQ_LEN, SKIP = 3, 2


def code(task: int, episode: int, frame: int) -> int:
    return task * 10_000 + episode * 100 + frame


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    url = tmp_path_factory.mktemp("tokens") / "dmc.zarr"
    for t, task in enumerate(TASKS):
        frames = [code(t, e, f) for e, n in enumerate(LENGTHS[task]) for f in range(n)]
        tokens = np.repeat(np.array(frames, np.int16)[:, None, None], 2, 1).repeat(2, 2)
        write_tokens(url, task, tokens, np.cumsum(LENGTHS[task]), np.array(SPLITS[task]), "h")
    return load_splits(url, TASKS, "h", (2, 2))


def decode(window: np.ndarray) -> list[tuple[int, int, int]]:
    """(task, episode, frame) of every frame of a window (T, h, w); all of a frame's tokens agree."""
    assert (window == window[:, :1, :1]).all()
    return [(int(v) // 10_000, int(v) // 100 % 100, int(v) % 100) for v in window[:, 0, 0]]


def legal_starts(task: str, split: int) -> list[tuple[int, int]]:
    """Slow reference: every (episode, first frame) of a window inside one ``split`` episode."""
    span = 1 + (SEQ_LEN - 1) * SKIP
    return [(e, f) for e, n in enumerate(LENGTHS[task]) if SPLITS[task][e] == split for f in range(n - span + 1)]


def test_training_windows_lie_in_one_train_episode_with_the_stride_and_task_id(splits):
    windows = TrainWindows(splits["train"], SEQ_LEN, SKIP, batch_size=8, seed=0)
    counts = {t: {s: 0 for s in legal_starts(t, 0)} for t in TASKS}
    for step in range(400):
        tokens, ids = windows.batch(step)
        assert tokens.shape == (8, SEQ_LEN, 2, 2)
        assert ids.tolist() == [t for t, count in combine_order(2, 8, step) for _ in range(count)]  # as released
        for window, task_id in zip(tokens.numpy(), ids.tolist(), strict=True):
            frames = decode(window)
            (task,), (episode,) = {f[0] for f in frames}, {f[1] for f in frames}
            assert task == task_id
            first = frames[0][2]
            assert [f[2] for f in frames] == [first + SKIP * i for i in range(SEQ_LEN)]
            counts[TASKS[task]][(episode, first)] += 1  # a KeyError: a test episode or an illegal start
    for task, per_start in counts.items():  # uniform over the legal starts of the task: within 5 sigma
        n = sum(per_start.values())
        p = 1 / len(per_start)
        sigma = (n * p * (1 - p)) ** 0.5
        assert all(abs(c - n * p) < 5 * sigma for c in per_start.values()), (task, per_start)


def test_evaluation_windows_are_evenly_spaced_test_windows(splits):
    tokens, ids = eval_windows(splits["test"], SEQ_LEN, SKIP, per_task=3)
    expected = []
    for t, task in enumerate(TASKS):
        starts = legal_starts(task, 1)
        picks = np.unique(np.linspace(0, len(starts) - 1, min(3, len(starts))).round().astype(int))
        expected += [(t, *starts[i]) for i in picks]
    got = [(task, episode, frames[0][2]) for frames in map(decode, tokens.numpy()) for task, episode, _ in frames[:1]]
    assert got == expected and ids.tolist() == [t for t, _, _ in expected]


def test_ranks_draw_their_share_of_the_one_device_batch(splits):
    one = TrainWindows(splits["train"], SEQ_LEN, SKIP, batch_size=8, seed=0)
    ranks = [TrainWindows(splits["train"], SEQ_LEN, SKIP, 4, seed=0, rank=r, world_size=2) for r in (0, 1)]
    for step in (0, 1, 7):
        shares = [r.batch(step)[1] for r in ranks]
        assert sorted(np.concatenate(shares).tolist()) == sorted(one.batch(step)[1].tolist())
    # Each rank draws its own windows (its rank is in its seed), and the same ones again at the same step.
    windows = [[r.batch(step)[0] for step in range(4)] for r in ranks]
    assert any(not torch.equal(a, b) for a, b in zip(*windows, strict=True)), "the ranks drew the same windows"
    again = TrainWindows(splits["train"], SEQ_LEN, SKIP, 4, seed=0, rank=1, world_size=2)
    assert all(torch.equal(again.batch(step)[0], windows[1][step]) for step in (3, 0, 2))


def test_token_ids_outside_the_codebook_are_refused_at_load_naming_the_task(tmp_path):
    """The prior checks index ranges on the CPU only (a GPU check would stall every update), so the splits check
    the stored ids once when they load: a store whose ids were altered after writing is named, not trained on."""
    import zarr

    from viper.data.tokens import _name

    url = tmp_path / "dmc.zarr"
    tokens = np.zeros((6, 2, 2), np.int16)
    write_tokens(url, TASKS[0], tokens, np.array([3, 6]), np.array([0, 1]), "h", codebook_size=8)
    assert load_splits(url, TASKS[:1], "h", (2, 2))["train"][TASKS[0]].tokens.max() == 0
    zarr.open_group(url / _name(TASKS[0]), mode="r+")["tokens"][4] = 8
    with pytest.raises(ViperError, match=r"cartpole_balance token ids must lie in \[0, 8\), got \[0, 8\]"):
        load_splits(url, TASKS[:1], "h", (2, 2))


def test_no_test_episode_long_enough_names_the_store_the_window_and_the_longest_episodes(splits):
    """Test episodes of at most 7 frames, a window of 25: the message names the store and both numbers."""
    with pytest.raises(ViperError, match=r"dmc.zarr: no test-split episode spans a prior window of 25 frames .*"
                       r"'dmc/cartpole_balance': 7, 'dmc/cartpole_swingup': 6"):  # fmt: skip
        eval_windows(splits["test"], 13, 2, 4, "data/tokens/dmc.zarr")


def test_a_task_without_a_long_enough_test_episode_is_named_when_the_others_evaluate(splits, capsys):
    """A window of 7 frames: cartpole_balance's 7-frame test episode holds one, cartpole_swingup's 6 do not. The
    evaluation left that task out without a word, and with it the choice of the best checkpoint."""
    tokens, ids = eval_windows(splits["test"], 4, 2, 4, "data/tokens/dmc.zarr")
    assert ids.tolist() == [0] and tokens.shape[1] == 4
    out = capsys.readouterr().out
    assert (
        "prior: note: data/tokens/dmc.zarr: no test-split episode of dmc/cartpole_swingup spans a prior window" in out
    )


def test_no_train_episode_long_enough_names_the_store_and_split(splits):
    with pytest.raises(ViperError, match=r"^data/tokens/dmc.zarr \(train split\): task dmc/cartpole_balance: no ep"):
        TrainWindows(splits["train"], 30, SKIP, 4, seed=0, where="data/tokens/dmc.zarr")
