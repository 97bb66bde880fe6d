"""Random training-window reads: the Zarr video store vs the published npz-per-episode layout; chunk size.

Frames are real: cartpole_swingup rendered by dm_control at 64x64 (camera 0, random actions), a few episodes
rendered and reused with shifted starts to fill the dataset (compression and decode cost match real data).
The same dataset is written as one ``np.savez_compressed`` file per episode (the published layout; reading a
window there means loading the whole episode) and as video stores with several ``chunk_frames`` (shards of
4096 frames). Every method reads the same random (episode, start) windows of ``seq_len`` frames. Reported:
windows/s without a cache (one zarr call per window), with ``ChunkCache`` (the training loader's path), and
through ``FrameWindowDataset``; append throughput, files and bytes on disk per layout.

    .venv/bin/python benchmarks/bench_store.py                      # writes benchmarks/results/store.md
    .venv/bin/python benchmarks/bench_store.py --episodes 20 --windows 500 --no-write
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

import viper  # noqa: F401  (MUJOCO_GL before dm_control loads)
from viper.data.store import open_store
from viper.data.windows import ChunkCache, FrameWindowDataset, read_window

RESULTS = Path(__file__).parent / "results" / "store.md"


def render_episodes(count: int, steps: int, seed: int = 0) -> list[np.ndarray]:
    """``count`` real cartpole_swingup episodes, uint8 (steps + 1, 64, 64, 3), random actions."""
    from dm_control import suite

    out = []
    for i in range(count):
        env = suite.load("cartpole", "swingup", task_kwargs={"random": seed + i})
        # Small offscreen buffer without multisampling: same pixels at 64x64, several times faster.
        env.physics.model.vis.global_.offwidth = 64
        env.physics.model.vis.global_.offheight = 64
        env.physics.model.vis.quality.offsamples = 0
        rng = np.random.default_rng(seed + i)
        spec = env.action_spec()
        env.reset()
        frames = [env.physics.render(64, 64, camera_id=0)]
        for _ in range(steps):
            action = rng.uniform(spec.minimum, spec.maximum, spec.shape)
            env.step(action)
            env.step(action)  # action repeat 2
            frames.append(env.physics.render(64, 64, camera_id=0))
        out.append(np.stack(frames).astype(np.uint8))
    return out


def disk_usage(path: Path) -> tuple[int, int]:
    files = [p for p in path.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def rate(count: int, seconds: float) -> float:
    return count / max(seconds, 1e-9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--episodes", type=int, default=40, help="episodes in the dataset")
    parser.add_argument("--steps", type=int, default=500, help="agent steps per episode (frames = steps + 1)")
    parser.add_argument("--rendered", type=int, default=4, help="distinct rendered episodes (reused, shifted)")
    parser.add_argument("--seq-len", type=int, default=16)
    parser.add_argument("--windows", type=int, default=2000, help="random windows read per store layout")
    parser.add_argument("--npz-windows", type=int, default=200, help="random windows read from the npz layout")
    parser.add_argument("--chunks", default="8,16,32,64", help="chunk_frames values to compare")
    parser.add_argument("--cache-chunks", type=int, default=16, help="ChunkCache capacity (chunks)")
    parser.add_argument("--no-write", action="store_true", help=f"print only; do not write {RESULTS}")
    args = parser.parse_args()

    t0 = time.perf_counter()
    real = render_episodes(args.rendered, args.steps)
    render_s = time.perf_counter() - t0
    episodes = [np.roll(real[i % len(real)], 37 * i, axis=0) for i in range(args.episodes)]
    frames_total = sum(len(e) for e in episodes)
    rng = np.random.default_rng(0)
    picks = [
        (int(e), int(rng.integers(0, len(episodes[e]) - args.seq_len + 1)))
        for e in rng.integers(0, len(episodes), args.windows)
    ]
    rows = []
    work = Path(tempfile.mkdtemp(prefix="bench_store_"))
    try:
        # The published layout: one compressed npz per episode.
        npz_dir = work / "npz" / "cartpole_swingup" / "train"
        npz_dir.mkdir(parents=True)
        t0 = time.perf_counter()
        for i, ep in enumerate(episodes):
            np.savez_compressed(npz_dir / f"{i:04d}.npz", ep)
        write_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        for e, start in picks[: args.npz_windows]:
            with np.load(npz_dir / f"{e:04d}.npz") as data:
                window = data["arr_0"][start : start + args.seq_len]
            assert window.shape[0] == args.seq_len
        npz_rate = rate(args.npz_windows, time.perf_counter() - t0)
        files, size = disk_usage(work / "npz")
        rows.append(
            ("npz per episode (published)", "-", rate(frames_total, write_s), npz_rate, None, None, files, size)
        )

        for chunk in [int(c) for c in args.chunks.split(",")]:
            url = work / f"store_c{chunk}.zarr"
            store = open_store(url, "a", chunk_frames=chunk, shard_frames=4096)
            t0 = time.perf_counter()
            for ep in episodes:
                store.append_episode("dmc/cartpole_swingup", ep)
            append_fps = rate(frames_total, time.perf_counter() - t0)
            group = open_store(url).task("dmc/cartpole_swingup")
            begins = group.episode_ends - group.lengths
            for e, start in picks[:50]:  # warm-up and a correctness check against the source frames
                np.testing.assert_array_equal(
                    group.read_frames(int(begins[e]) + start, int(begins[e]) + start + args.seq_len),
                    episodes[e][start : start + args.seq_len],
                )
            t0 = time.perf_counter()
            for e, start in picks:
                group.read_frames(int(begins[e]) + start, int(begins[e]) + start + args.seq_len)
            direct = rate(len(picks), time.perf_counter() - t0)
            cache = ChunkCache(args.cache_chunks)
            t0 = time.perf_counter()
            for e, start in picks:
                read_window(group, e, int(begins[e]) + start, args.seq_len, 1, cache)
            cached = rate(len(picks), time.perf_counter() - t0)
            hit_rate = cache.hits / max(cache.hits + cache.misses, 1)
            stream = iter(
                FrameWindowDataset(url, args.seq_len, 1, batch_size=16, seed=0, cache_chunks=args.cache_chunks)
            )
            next(stream)
            t0 = time.perf_counter()
            for _ in range(len(picks)):
                next(stream)
            dataset = rate(len(picks), time.perf_counter() - t0)
            files, size = disk_usage(url)
            name = f"zarr store, chunk {chunk} (cache hits {hit_rate:.0%})"
            rows.append((name, chunk, append_fps, direct, cached, dataset, files, size))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    header = (
        "| layout | chunk frames | write frames/s | windows/s (no cache) | windows/s (ChunkCache) "
        "| windows/s (FrameWindowDataset, same cache) | files | MB on disk | speed-up vs npz (no cache / cache) |"
    )
    lines = [header, "|" + "---|" * 9]
    for name, chunk, wfps, direct, cached, dataset, files, size in rows:
        fmt = lambda v: "-" if v is None else f"{v:,.0f}"  # noqa: E731
        speed = "1.0x" if cached is None else f"{direct / npz_rate:.1f}x / {cached / npz_rate:.1f}x"
        lines.append(
            f"| {name} | {chunk} | {wfps:,.0f} | {fmt(direct)} | {fmt(cached)} | {fmt(dataset)} | {files} "
            f"| {size / 1e6:.1f} | {speed} |"
        )
    table = "\n".join(lines)
    cpu = platform.processor() or platform.machine()
    setup = (
        f"{args.episodes} episodes x {args.steps + 1} frames = {frames_total} frames "
        f"({frames_total * 64 * 64 * 3 / 1e6:.0f} MB raw) of dm_control cartpole_swingup at 64x64 "
        f"({args.rendered} rendered episodes reused with shifted starts; rendering took {render_s:.0f} s); "
        f"random windows of seq_len {args.seq_len}, frame_skip 1; shards of 4096 frames; "
        f"{args.windows} windows per store layout, {args.npz_windows} from npz; ChunkCache of "
        f"{args.cache_chunks} chunks (small against the data, so hits come from windows sharing chunks, "
        "as in training on a large store)."
    )
    print(setup)
    print(table)
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(
            "# Video store: random training-window reads vs the published npz layout\n\n"
            f"Command: `.venv/bin/python benchmarks/bench_store.py`\n\n"
            f"Machine: {platform.node()}, {cpu}, {os.cpu_count()} cores (shared with other jobs), "
            f"Python {platform.python_version()}; date {datetime.date.today().isoformat()}.\n\n"
            f"Setup: {setup}\n\n{table}\n"
        )
        print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
