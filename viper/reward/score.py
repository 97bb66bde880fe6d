"""``viper score``: per-step VIPER rewards of one episode, printed as a summary and drawn under its frames.

The episode comes from an ``.npz`` file (uint8 (T, 64, 64, 3) frames under ``frames`` or the published
``arr_0`` key) or from a video store (``viper score data/videos/dmc.zarr --task dmc/cartpole_balance
--episode 3``). The tokenizer and prior are the suite's runs under ``data_dir``.
"""

from __future__ import annotations

import argparse
import zipfile
from pathlib import Path

import numpy as np

from viper import paths
from viper.config import Config
from viper.errors import ViperError
from viper.metrics import save_figure
from viper.reward.model import VideoReward


def load_episode(source: str | Path, task: str, episode: int | None) -> tuple[np.ndarray, str]:
    """Frames uint8 (T, 64, 64, 3) and a label, from an ``.npz`` file or a store's task group."""
    source = Path(source)
    if source.suffix == ".npz":
        if episode is not None:
            raise ViperError(f"{source}: --episode selects an episode of a video store, not of an .npz file")
        if not source.is_file():
            raise ViperError(f"{source}: no such episode file")
        try:
            with np.load(source, allow_pickle=False) as data:
                key = next((k for k in ("frames", "arr_0") if k in data.files), None)
                if key is None:
                    raise ViperError(f"{source}: expected frames under key 'frames' or 'arr_0', found {data.files}")
                frames = data[key]
        except ViperError:
            raise
        except (OSError, ValueError, zipfile.BadZipFile) as exc:  # not a zip; a pickled (object) array
            raise ViperError(f"{source}: not a readable .npz of uint8 frames ({exc})") from exc
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[1:] != (64, 64, 3) or not len(frames):
            raise ViperError(
                f"{source}: {key!r} is {frames.dtype} {frames.shape}; expected uint8 (T, 64, 64, 3) RGB frames, "
                "T >= 1 (channels last, already resized to 64x64)"
            )
        return frames, source.stem
    if episode is None:
        raise ViperError(f"{source}: pass an episode .npz file, or a video store path with --episode I")
    from viper.data.store import open_store

    group = open_store(source).task(task)
    if not 0 <= episode < group.num_episodes:
        raise ViperError(f"{source}: {task} has episodes 0..{group.num_episodes - 1}, got --episode {episode}")
    return group.read_episode(episode)["frames"], f"{paths.slug(task)}-ep{episode}"


def summarize(rewards: np.ndarray) -> dict[str, float]:
    """Summary of one episode's rewards float (T,) with NaN before the first full window."""
    scored = rewards[np.isfinite(rewards)]
    stats = {"score/steps": float(rewards.size), "score/scored_steps": float(scored.size)}
    if scored.size:
        stats.update(
            {
                "score/mean": float(scored.mean()),
                "score/std": float(scored.std()),
                "score/min": float(scored.min()),
                "score/max": float(scored.max()),
            }
        )
    return stats


def plot(frames: np.ndarray, rewards: np.ndarray, path: Path, title: str, shown: int = 8) -> Path:
    """PNG: ``shown`` evenly spaced frames on top, the reward curve (nats per step) below (atomic write)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    shown = max(1, min(shown, len(frames)))
    picks = np.linspace(0, len(frames) - 1, shown).round().astype(int)
    fig = Figure(figsize=(max(6.0, 1.1 * shown), 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(2, shown, height_ratios=[1, 2.2])
    for i, t in enumerate(picks):
        ax = fig.add_subplot(grid[0, i])
        ax.imshow(frames[t])
        ax.set_title(f"t={t}", fontsize=8)
        ax.axis("off")
    ax = fig.add_subplot(grid[1, :])
    ax.plot(np.arange(len(rewards)), rewards, lw=1.2)
    for t in picks:
        ax.axvline(t, color="0.85", lw=0.8, zorder=0)
    ax.set_xlabel("agent step")
    ax.set_ylabel("reward (nats)")
    ax.set_xlim(0, max(1, len(rewards) - 1))
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def scores_dir(data_dir: str | Path, suite: str) -> Path:
    """Where ``viper score`` writes by default: not beside the episode (it may lie in a stage's output, an
    agent's ``videos/``) and outside every DVC stage output (so not in ``viper.paths``, whose folders all are),
    so scoring an episode leaves every stage up to date."""
    return Path(data_dir) / "scores" / suite


def run(
    cfg: Config, source: str | Path, task: str, episode: int | None = None, output: Path | None = None
) -> tuple[dict[str, float], np.ndarray, Path]:
    """Score one episode with the suite's reward model: (summary, rewards float32 (T,), PNG path)."""
    from viper.envs.suites import check_task

    check_task(task)  # a short name would send the user after a reward model of a "suite" named like the task
    if output is not None and Path(output).is_dir():
        raise ViperError(f"--output {output}: is a directory; expected the PNG file to write")
    suite = task.split("/", 1)[0]
    frames, label = load_episode(source, task, episode)
    reward = VideoReward.load(
        paths.tokenizer_dir(cfg.data_dir, suite), paths.prior_dir(cfg.data_dir, suite), cfg.reward
    )
    rewards = reward.score(frames[None], task)[0]
    if output is None:
        output = scores_dir(cfg.data_dir, suite) / f"{label}.reward.png"
    title = f"{task} {label}: {reward.mode} reward, window {reward.window_frames} steps (NaN before)"
    summary = {**summarize(rewards), "score/window_steps": float(reward.window_frames)}
    return summary, rewards, plot(frames, rewards, Path(output), title)


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("source", help="episode .npz (uint8 frames under 'frames' or 'arr_0') or a video store")
    parser.add_argument("--task", required=True, help="full task name, e.g. dmc/cartpole_balance")
    parser.add_argument("--episode", type=int, default=None, help="episode index (with a video store)")
    parser.add_argument("--output", type=Path, default=None, help="PNG to write (default: <data_dir>/scores/<suite>/"
                        "<episode>.reward.png, outside every DVC stage's outputs)")  # fmt: skip


def cli(cfg: Config, args: argparse.Namespace, command: str) -> dict[str, float]:
    summary, rewards, png = run(cfg, args.source, args.task, args.episode, args.output)
    scored = int(summary["score/scored_steps"])
    print(f"{args.task}: {int(summary['score/steps'])} steps, {scored} scored ({cfg.reward.mode} reward, nats)")
    if not scored:
        window = int(summary["score/window_steps"])
        print(f"  no step has a full window of history: the reward model's window spans {window} steps")
    if scored:
        print(
            "  mean {score/mean:.2f}  std {score/std:.2f}  min {score/min:.2f}  max {score/max:.2f}".format(**summary)
        )
        finite = np.flatnonzero(np.isfinite(rewards))
        head = ", ".join(f"{rewards[t]:.1f}" for t in finite[:5])
        print(f"  first scored steps (from t={finite[0]}): {head}")
    print(f"  plot: {png}")
    return summary
