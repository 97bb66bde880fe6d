"""The VIPER reward as an agent reward source: the video model's log-likelihood of each real step's window.

Published mechanics (viper_rl's ``VideoGPTRewardModel`` and replay): rewards are computed once, on real data, when
chunks of an env stream enter replay: 64-step chunks (the released replay's stream length, its batch length),
of which the first 15 are context; the agent replays 49-step sequences of the scored steps, as the released
replay does (``viper.agent.run_spec.sequence_length``). The context is the released code's ``seq_len * frame_skip
- 1`` of the reward model: 15 for every released (seq_len, frame_skip) pair, although the (8, 2) and (4, 4)
windows span only 15 and 13 steps (their first 1 or 3 scoreable steps stay context, as released). A prior with
another window (e.g. the CPU presets' 4-frame windows) gets its own context, and a note is printed when that
differs from ``agent.context_steps``. Steps are scored in raw nats (``reward.mode``: joint by default), with no
scaling: the world model's symlog two-hot ``density`` head learns them and the density critic's return
normaliser absorbs the scale. The chunks of all env streams that are ready at the same step are scored in one
batched call on the reward model's device (``reward.device``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from viper import paths
from viper.config import Config
from viper.errors import ViperError
from viper.hashing import file_sha256

NAME = "density"
"""Replay key, world-model head and critic of the VIPER reward (the released code's name)."""


def reward_model_dirs(cfg: Config, task: str) -> tuple[Path, Path]:
    """Tokenizer and prior run folders of ``task``'s suite under ``cfg.data_dir``; ViperError when missing."""
    suite = task.split("/", 1)[0]
    tokenizer = paths.tokenizer_dir(cfg.data_dir, suite)
    prior = paths.prior_dir(cfg.data_dir, suite)
    for what, folder, command in (("tokenizer", tokenizer, "train-tokenizer"), ("prior", prior, "train-videogpt")):
        if not (folder / "checkpoints").is_dir():
            raise ViperError(
                f"agent.reward='viper' needs the trained {what} {folder / 'checkpoints'}, which does not exist: "
                f"run `dvc repro train-videogpt` first (or `viper {command}` with the same preset and data_dir)"
            )
    return tokenizer, prior


class ViperReward:
    """``RewardSource`` of the VIPER reward for one task (see the module docstring).

    ``model`` is a ``viper.reward.VideoReward`` (or anything with its ``score``, ``agent_rewards``,
    ``context_steps``, ``window_frames`` and ``task_id``); ``chunk_steps`` is raised to ``context + 1`` when smaller.
    """

    name = NAME

    def __init__(self, model, task: str, chunk_steps: int) -> None:
        model.task_id(task)  # an unknown task raises a ViperError naming the prior's tasks
        self.model, self.task = model, task
        self.context_steps = int(model.context_steps)  # the released seq_len * frame_skip - 1
        self.chunk_steps = max(int(chunk_steps), self.context_steps + 1)

    def relabel(self, chunk: dict[str, np.ndarray]) -> np.ndarray:
        return self.relabel_batch([chunk])[0]

    def relabel_batch(self, chunks: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
        """Rewards float32 (T - context,) per chunk of frames uint8 (T, 64, 64, 3); all chunks of equal T."""
        # (n, T, 64, 64, 3): the streams' chunks as a batch of short episodes for one scoring call.
        frames = np.stack([chunk["image"] for chunk in chunks])
        scores = self.model.score(frames, self.task)
        return list(scores[:, self.context_steps :].astype(np.float32))

    def score_episode(self, frames: np.ndarray) -> np.ndarray:
        """Per-step rewards of one whole episode uint8 (T, 64, 64, 3) -> float32 (T,), NaN for the context steps
        (as replay has them: the evaluation VIPER return sums the steps training rewards)."""
        return self.model.agent_rewards(frames, self.task)

    def fingerprint(self) -> dict[str, str | int]:
        """What identifies the reward values: the prior checkpoint, its tokenizer and the reward definition.

        The scoring numerics are not recorded: a run moved between bf16 scoring (CUDA, ``reward.bf16``) and float32
        resumes, and its replay then holds rewards of both, which differ at bf16 rounding (small beside the
        rewards' spread of hundreds of nats). Restarting the run would cost far more; ``VideoReward.identity``
        keeps them apart where scores are cached."""
        model = self.model
        fp: dict[str, str | int] = {
            # The checkpoint's content, not its folder name: a retrained prior reuses names like step_000000020.
            "prior": _file_hash(Path(str(getattr(model, "prior_path", ""))) / "state.pt"),
            "tokenizer": str(getattr(getattr(model, "tokenizer", None), "hash", "")),
            "mode": str(getattr(model, "mode", "")),
            "window_frames": int(model.window_frames),
        }
        # Recorded only where the released context differs from the old window - 1 ((8, 2) and (4, 4) priors),
        # so that runs whose rewards did not change keep resuming.
        if self.context_steps != int(model.window_frames) - 1:
            fp["context_steps"] = self.context_steps
        # state.pt holds both the EMA and the raw weights, so the file hash does not tell them apart. Recorded
        # only when not the published ``ema``, so that existing checkpoints keep resuming.
        weights = str(getattr(getattr(model, "cfg", None), "weights", "ema"))
        if weights != "ema":
            fp["weights"] = weights
        return fp


def check_action_repeat(cfg: Config, task: str) -> None:
    """ViperError unless the agent steps at the frame rate of ``task``'s expert videos.

    The prior learned windows of frames ``collect.action_repeat`` env steps apart, as the store records per task
    (``action_repeat`` attribute); an agent at another repeat would be scored on windows spanning another stretch
    of time. Imported videos record no repeat (None) and are not checked; neither is a missing store.
    """
    from viper.data.store import open_store

    store = paths.store(cfg.data_dir, task.split("/", 1)[0])
    if not store.is_dir():
        return
    videos = open_store(store)
    if task not in videos.tasks:
        return
    recorded = videos.task(task).attrs.get("action_repeat")
    if recorded is not None and int(recorded) != cfg.agent.action_repeat:
        raise ViperError(
            f"{store}: the expert videos of {task} were recorded at action repeat {recorded}, but "
            f"agent.action_repeat={cfg.agent.action_repeat}; the VIPER reward scores frames at the videos' rate: "
            f"set -S agent.action_repeat={recorded} (or re-collect with -S collect.action_repeat=...)"
        )


def _file_hash(path: Path) -> str:
    """First 16 hex digits of the file's sha256 ("" when it does not exist)."""
    return file_sha256(path)[:16] if path.is_file() else ""


def load_viper_reward(cfg: Config, task: str) -> ViperReward:
    """Load the suite's reward model (``cfg.reward``: checkpoint, mode, device) as ``task``'s reward source."""
    from viper.reward import VideoReward

    tokenizer, prior = reward_model_dirs(cfg, task)
    check_action_repeat(cfg, task)
    model = VideoReward.load(tokenizer, prior, cfg.reward)
    source = ViperReward(model, task, cfg.agent.batch_length)
    if source.context_steps != cfg.agent.context_steps:
        print(
            f"train-agent: the reward model's windows are {model.seq_len} frames {model.frame_skip} step(s) apart, "
            f"so replay chunks use {source.context_steps} context steps (seq_len * frame_skip - 1; "
            f"agent.context_steps={cfg.agent.context_steps} is the published value)"
        )
    return source
