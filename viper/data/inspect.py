"""``viper inspect <store> [--preview out.png]``: what a video store holds, and a montage of its frames."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from viper import paths
from viper.config import Config
from viper.data.store import VideoStore, open_store
from viper.errors import ViperError


def describe(store: VideoStore) -> list[dict[str, Any]]:
    """One row per task: episodes (train/test), frames, episode length and return statistics, source."""
    rows = []
    for task in store.tasks:
        group = store.task(task)
        returns = group.returns[np.isfinite(group.returns)]
        source = group.attrs.get("source", {})
        rows.append(
            {
                "task": task,
                "episodes": group.num_episodes,
                "train": int(group.episodes("train").size),
                "test": int(group.episodes("test").size),
                "frames": group.num_frames,
                "length_min": int(group.lengths.min()) if group.num_episodes else 0,
                "length_max": int(group.lengths.max()) if group.num_episodes else 0,
                "return_mean": float(returns.mean()) if returns.size else float("nan"),
                "return_min": float(returns.min()) if returns.size else float("nan"),
                "return_max": float(returns.max()) if returns.size else float("nan"),
                "action_repeat": group.attrs.get("action_repeat"),
                "source": source.get("policy", source.get("format", "?")),
                "actions": group.has_actions,
            }
        )
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """Fixed-width text table of ``describe`` rows."""
    header = f"{'task':<28} {'episodes':>8} {'train':>6} {'test':>5} {'frames':>9} {'length':>11} "
    header += f"{'return mean [min, max]':>30} {'repeat':>6}  source"
    lines = [header]
    for r in rows:
        ret = f"{r['return_mean']:.1f} [{r['return_min']:.1f}, {r['return_max']:.1f}]"
        length = f"{r['length_min']}-{r['length_max']}"
        lines.append(
            f"{r['task']:<28} {r['episodes']:>8} {r['train']:>6} {r['test']:>5} {r['frames']:>9} {length:>11} "
            f"{ret:>30} {str(r['action_repeat']):>6}  {r['source']}"
        )
    return "\n".join(lines)


def montage(store: VideoStore, frames_per_task: int = 8) -> np.ndarray:
    """uint8 (tasks*64, frames_per_task*64, 3): one row per task, frames evenly spaced through episode 0."""
    if frames_per_task < 1:
        raise ViperError(f"--frames {frames_per_task}: expected at least 1 frame per task in the preview")
    rows = []
    for task in store.tasks:
        group = store.task(task)
        row = np.zeros((frames_per_task, 64, 64, 3), np.uint8)
        if group.num_episodes:
            start, stop = group.episode_range(0)
            picks = np.linspace(start, stop - 1, frames_per_task).round().astype(int)
            block = group.read_frames(int(picks[0]), int(picks[-1]) + 1)
            row = block[picks - picks[0]]
        rows.append(np.concatenate(list(row), axis=1))
    if not rows:
        raise ViperError(f"{store.url}: no tasks to preview")
    return np.concatenate(rows, axis=0)


def run(url: str | Path, preview: str | Path | None = None, frames_per_task: int = 8) -> list[dict[str, Any]]:
    """Print the store's table (and write the preview PNG); returns the rows."""
    if preview is not None and Path(preview).is_dir():
        raise ViperError(f"--preview {preview}: is a directory; expected the PNG file to write")
    store = open_store(url)
    rows = describe(store)
    print(f"{store.url}: {len(rows)} task(s)")
    print(format_table(rows))
    if preview is not None:
        import imageio.v3 as iio

        image = montage(store, frames_per_task)
        Path(preview).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(preview).with_suffix(".tmp.png")
        iio.imwrite(tmp, image)
        tmp.replace(preview)
        print(f"preview: {preview} ({image.shape[1]}x{image.shape[0]})")
    return rows


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument("store", nargs="?", help="store path or URL (default: <data_dir>/videos/<collect.suite>.zarr)")
    parser.add_argument("--preview", help="write a PNG montage (one row per task) here")
    parser.add_argument("--frames", type=int, default=8, help="frames per task in the preview (default %(default)s)")


def cli(cfg: Config, args: argparse.Namespace, command: str) -> dict[str, Any]:
    url = args.store or str(paths.store(cfg.data_dir, cfg.collect.suite))
    rows = run(url, args.preview, args.frames)
    return {f"{r['task']}/{k}": r[k] for r in rows for k in ("episodes", "frames")}
