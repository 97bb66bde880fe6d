"""Agent checkpoints with a large replay: time and disk per save, linked blocks vs whole copies.

A replay of the agent's per-step keys (64 x 64 x 3 frame, action, rewards, flags: ~12.3 KB a step) is filled to
``--steps`` steps over ``--streams`` streams, then checkpointed ``--saves`` times through the real ``Checkpointer``
as ``viper train-agent`` does (``keep_checkpoints`` 3, CRC-32C of every file), with ``--between`` steps added
before each save (the published cadence: a checkpoint every 10,000 agent steps). ``linked`` passes the latest
checkpoint's replay as ``previous`` (what training does); ``copied`` passes none, so every save writes the whole
buffer (the layout before the blocks wrote the whole allocated arrays: the same bytes or more). Reported per mode:
seconds per save (until ``sync`` returns: the bytes are on disk), new bytes per save, bytes on disk for the kept
checkpoints (each inode counted once) and the seconds to resume (checksums + load) from a cold page cache (run as
root, the page cache is dropped first; otherwise the row says the cache was warm).

    .venv/bin/python benchmarks/bench_replay_checkpoint.py                    # writes results/replay_checkpoint.md
    .venv/bin/python benchmarks/bench_replay_checkpoint.py --steps 20000 --no-write
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from viper.agent.replay import Replay
from viper.agent.run_spec import replay_spec
from viper.checkpoint import Checkpointer

RESULTS = Path(__file__).parent / "results" / "replay_checkpoint.md"


def fill(replay: Replay, steps: int, rng: np.random.Generator) -> None:
    """Add ``steps`` steps in total, one per stream at a time; frames are random bytes (nothing compresses)."""
    frames = rng.integers(0, 256, (64, replay.streams, 64, 64, 3), dtype=np.uint8)
    for t in range(steps // replay.streams):
        step = {}
        for key, (shape, dtype) in replay.spec.items():
            step[key] = frames[t % 64] if key == "image" else np.zeros((replay.streams, *shape), dtype)
        replay.add(step)


def disk_bytes(folder: Path) -> int:
    """Bytes of the files under ``folder``, each inode once (hard links share their bytes)."""
    seen, total = set(), 0
    for path in folder.rglob("*"):
        stat = path.stat()
        if path.is_file() and (stat.st_dev, stat.st_ino) not in seen:
            seen.add((stat.st_dev, stat.st_ino))
            total += stat.st_size
    return total


def run(mode: str, args: argparse.Namespace, root: Path) -> dict[str, float]:
    spec = replay_spec((64, 64, 3), 6, "density")
    rng = np.random.default_rng(0)
    replay = Replay(args.capacity, args.streams, spec, seed=0)
    fill(replay, args.steps, rng)
    ckpt = Checkpointer(root / mode, keep=3)
    seconds, written = [], []
    for save in range(args.saves):
        fill(replay, args.between, rng)
        latest = ckpt.latest_path() if mode == "linked" else None
        previous = latest / "replay" if latest is not None else None
        os.sync()  # earlier writes (the fill, the previous mode) are not this save's cost
        start = time.perf_counter()
        ckpt.save(save + 1, {"step": save + 1}, extra=lambda f, previous=previous: replay.save(f / "replay", previous))
        os.sync()  # ... and this one's are: until they reach the disk the checkpoint is not safe
        seconds.append(time.perf_counter() - start)
        written.append(_own_bytes(ckpt.latest_path()))
    cold = _drop_caches()
    start = time.perf_counter()
    state, folder = ckpt.load_latest()
    Replay(args.capacity, args.streams, spec, seed=1).load(folder / "replay")
    resume = time.perf_counter() - start
    return {
        "save_s": float(np.median(seconds[1:] or seconds)),
        "first_save_s": seconds[0],
        "new_gb": float(np.median(written[1:] or written)) / 1e9,
        "disk_gb": disk_bytes(root / mode) / 1e9,
        "resume_s": resume,
        "cold": cold,
        "replay_gb": sum(v.nbytes for v in replay.data.values()) / 1e9,
    }


def _drop_caches() -> bool:
    """Empty the page cache (root only) so a resume reads the checkpoint from disk, as after a reboot or on
    another node; ``False`` where not allowed (the resume then reads what the cache still holds)."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True


def _own_bytes(latest: Path) -> int:
    """Bytes of a checkpoint's files that no other checkpoint links (what its save wrote)."""
    return sum(p.stat().st_size for p in latest.rglob("*") if p.is_file() and p.stat().st_nlink == 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=400_000, help="steps in replay before the first save")
    parser.add_argument("--capacity", type=int, default=1_000_000, help="replay capacity in steps (published 1M)")
    parser.add_argument("--streams", type=int, default=4, help="env streams (agent.envs)")
    parser.add_argument("--between", type=int, default=10_000, help="steps added before each save")
    parser.add_argument("--saves", type=int, default=4)
    parser.add_argument("--modes", nargs="+", default=["linked", "copied"], choices=["linked", "copied"])
    parser.add_argument("--dir", type=Path, default=None, help="where to write checkpoints (default: a temp dir)")
    parser.add_argument("--no-write", action="store_true", help=f"print only; do not update {RESULTS.name}")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench_replay_", dir=args.dir))
    rows = []
    try:
        for mode in args.modes:
            result = run(mode, args, root)
            shutil.rmtree(root / mode)
            rows.append(
                f"| {mode} | {args.steps + args.saves * args.between:,} | {result['replay_gb']:.2f} | "
                f"{result['first_save_s']:.1f} | {result['save_s']:.2f} | {result['new_gb']:.3f} | "
                f"{result['disk_gb']:.2f} | {result['resume_s']:.1f}{'' if result['cold'] else ' (cache warm)'} |"
            )
            print(rows[-1], flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if args.no_write:
        return
    command = "python benchmarks/bench_replay_checkpoint.py " + " ".join(
        f"--{k} {v}" for k, v in (("steps", args.steps), ("streams", args.streams), ("between", args.between))
    )
    table = "\n".join(
        [
            f"## {datetime.date.today()}: {platform.node() or 'this machine'}, {os.cpu_count()} CPUs",
            "",
            f"`{command}` (keep 3, {args.saves} saves)",
            "",
            "| mode | steps at the end | replay in RAM (GB) | first save (s) | later saves (s, median) | "
            "new bytes per save (GB) | disk, 3 kept (GB) | resume, cold cache (s) |",
            "|---|---|---|---|---|---|---|---|",
            *rows,
            "",
        ]
    )
    header = RESULTS.read_text() if RESULTS.exists() else "# Agent checkpoints with a large replay\n\n"
    RESULTS.write_text(header + table + "\n")


if __name__ == "__main__":
    main()
