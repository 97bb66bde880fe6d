"""Collection throughput: 64x64 frames per second of ``viper.experts.rollout`` with 1 vs N worker processes.

Episodes are spread over a process pool (spawned, as the collector does: EGL contexts are per process) and
each worker runs whole episodes in-process. The clock starts after every worker has imported the stack and
rolled out one short warm-up episode, so the numbers are steady-state collection speed, not start-up.
Also measures DMC rendering with and without ``fast_render`` (one worker).

    .venv/bin/python benchmarks/bench_envs.py              # writes benchmarks/results/envs.md
    .venv/bin/python benchmarks/bench_envs.py --quick      # fewer episodes, no file
"""

from __future__ import annotations

import argparse
import datetime
import multiprocessing as mp
import os
import platform
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "envs.md"


def _warm(task: str) -> None:
    from viper.experts import rollout

    rollout(task, "random", seed=0, episode_env_steps=5)


def _episode(job: tuple[str, str, int, int, bool]) -> int:
    from viper.experts import rollout

    task, policy, seed, steps, fast = job
    return rollout(task, policy, seed, episode_env_steps=steps, fast_render=fast).length


def measure(task: str, policy: str, workers: int, episodes: int, steps: int, fast: bool = True) -> dict:
    """Frames/s over ``episodes`` episodes of ``steps`` agent steps on ``workers`` spawned processes."""
    jobs = [(task, policy, 1000 + i, steps, fast) for i in range(episodes)]
    with mp.get_context("spawn").Pool(workers) as pool:
        pool.map(_warm, [task] * workers, chunksize=1)
        start = time.perf_counter()
        frames = sum(pool.map(_episode, jobs, chunksize=1))
        seconds = time.perf_counter() - start
    return {"task": task, "policy": policy, "workers": workers, "fast": fast, "frames": frames, "s": seconds}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=4, help="episodes per measurement")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--dmc-steps", type=int, default=500, help="agent steps per DMC episode (full: 500)")
    parser.add_argument("--atari-steps", type=int, default=1000, help="agent steps per Atari episode")
    parser.add_argument("--quick", action="store_true", help="2 episodes of 100 steps; print only")
    args = parser.parse_args()
    if args.quick:
        args.episodes, args.dmc_steps, args.atari_steps = 2, 100, 200

    cases = [
        ("dmc/cartpole_swingup", "expert", args.dmc_steps),
        ("atari/pong", "expert", args.atari_steps),
        ("atari/pong", "random", args.atari_steps),
    ]
    load_before = os.getloadavg()
    rows = []
    for task, policy, steps in cases:
        for workers in args.workers:
            row = measure(task, policy, workers, args.episodes, steps)
            rows.append(row)
            print(f"{task:22s} {policy:7s} workers={workers}: {row['frames'] / row['s']:8.1f} frames/s", flush=True)
    render = [
        measure("dmc/cartpole_swingup", "expert", 1, max(1, args.episodes // 2), args.dmc_steps, fast)
        for fast in (False, True)
    ]
    for row in render:
        print(f"cartpole_swingup fast_render={row['fast']}: {row['frames'] / row['s']:8.1f} frames/s", flush=True)
    if not args.quick:
        write(rows, render, args, (load_before, os.getloadavg()))


def write(rows: list[dict], render: list[dict], args: argparse.Namespace, loads: tuple) -> None:
    base = {(r["task"], r["policy"]): r["frames"] / r["s"] for r in rows if r["workers"] == args.workers[0]}
    lines = [
        "# Collection throughput (viper.experts.rollout, 64x64 RGB)",
        "",
        f"- Command: `.venv/bin/python benchmarks/bench_envs.py` (episodes={args.episodes}, DMC "
        f"{args.dmc_steps} agent steps, Atari {args.atari_steps} agent steps per episode)",
        f"- Machine: {cpu_name()}, {os.cpu_count()} logical cores visible; Python {platform.python_version()}",
        f"- Date: {datetime.date.today().isoformat()}; 1-minute load average {loads[0][0]:.1f} before, "
        f"{loads[1][0]:.1f} after (other processes share these cores: ratios are only indicative when high)",
        "- Frames/s counts stored frames (agent steps + 1 per episode); warm-up excluded; spawned workers.",
        "",
        "| task | policy | workers | frames | seconds | frames/s | speed-up |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        fps = r["frames"] / r["s"]
        lines.append(
            f"| {r['task']} | {r['policy']} | {r['workers']} | {r['frames']} | {r['s']:.1f} | {fps:.1f} "
            f"| {fps / base[(r['task'], r['policy'])]:.2f}x |"
        )
    lines += [
        "",
        "DMC rendering settings (1 worker, cartpole_swingup expert):",
        "",
        "| fast_render | frames/s |",
        "|---|---|",
    ]
    lines += [f"| {r['fast']} | {r['frames'] / r['s']:.1f} |" for r in render]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS.with_suffix(".md.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(RESULTS)
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
