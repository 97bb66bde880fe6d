"""One results-table row per agent run, from its ``metrics.jsonl``: what the GPU sessions' tables in results/ report.

    .venv/bin/python benchmarks/run_table.py data/agents/viper/dmc-cartpole_balance/seed0 runs/gpu4/task_seed1.jsonl
    .venv/bin/python benchmarks/run_table.py RUN ... --frames 20000 40000 60000 80000 100000 --last 8

A run is a run folder (``.../seed<N>``, read from ``logs/metrics.jsonl``) or a ``metrics.jsonl`` copy. Columns: env
frames reached, updates, the evaluation task return at each of ``--frames`` (env frames = agent steps x
``--action-repeat``; ``-`` where the run has no evaluation there), the mean of the last ``--last`` training
episodes' task returns, and for VIPER runs the per-step VIPER reward (episode VIPER return / scored steps) of the
first ``--first`` training episodes (default 4: one per env, mostly before any update) and of the last
``--last``, and where the wall time went (the mean of the log rows' ``agent/time/<phase>`` fractions, in percent:
act / insert / env / update / eval + checkpoint; runs logged before the twentieth session have none). Frames, not
agent steps, so that rows of runs with other action repeats line up; the mapping is where hand-made tables went
wrong before.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from viper.eval.report import read_series

EVAL, TRAIN = "episode/task_return", "train/episode_task_return"
VIPER_RETURN, VIPER_STEPS = "train/episode_viper_return", "train/episode_viper_steps"
PHASES = ("act", "insert", "env", "update", "eval", "checkpoint")


def _log(run: Path) -> Path:
    log = run if run.suffix == ".jsonl" else run / "logs" / "metrics.jsonl"
    if not log.exists():
        raise SystemExit(f"{run}: no metrics log (expected a run folder with logs/metrics.jsonl, or a .jsonl file)")
    return log


def _per_step(series: dict, picks: slice) -> str:
    returns, steps = series.get(VIPER_RETURN, [])[picks], series.get(VIPER_STEPS, [])[picks]
    if not returns or len(returns) != len(steps):
        return "-"
    rates = [r / max(n, 1.0) for (_, r), (_, n) in zip(returns, steps, strict=True)]
    return f"{min(rates):.0f} to {max(rates):.0f}"


def _mean(points: list[tuple[int, float]]) -> float | None:
    return sum(v for _, v in points) / len(points) if points else None


def row(run: Path, frames: list[int], first: int, last: int, action_repeat: int) -> str:
    wanted = {EVAL, TRAIN, VIPER_RETURN, VIPER_STEPS, "agent/updates", *(f"agent/time/{p}" for p in PHASES)}
    series = read_series(_log(run), lambda key: key in wanted)
    evals = {step * action_repeat: value for step, value in series.get(EVAL, [])}
    steps = [step for points in series.values() for step, _ in points]
    reached = max(steps, default=0) * action_repeat
    updates = series.get("agent/updates", [(0, 0.0)])[-1][1]
    at = " / ".join(f"{evals[f]:.0f}" if f in evals else "-" for f in frames)
    train = [value for _, value in series.get(TRAIN, [])[-last:]]
    mean = f"{sum(train) / len(train):.0f}" if train else "-"
    viper = f"{_per_step(series, slice(0, first))} -> {_per_step(series, slice(-last, None))}"
    shares = [_mean(series.get(f"agent/time/{p}", [])) for p in PHASES]
    time = "-" if None in shares else " / ".join(f"{100 * s:.0f}" for s in [*shares[:4], shares[4] + shares[5]])
    viper = viper if VIPER_RETURN in series else "-"
    return f"| {run} | {reached:,} | {updates:,.0f} | {at} | {mean} | {viper} | {time} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (.../seed<N>) or metrics.jsonl files")
    parser.add_argument("--frames", nargs="+", type=int, default=[20000, 40000, 60000, 80000, 100000])
    parser.add_argument("--first", type=int, default=4, help="first training episodes whose VIPER reward is shown")
    parser.add_argument("--last", type=int, default=8, help="last training episodes averaged / shown")
    parser.add_argument("--action-repeat", type=int, default=2)
    args = parser.parse_args()
    rows = [row(run, args.frames, args.first, args.last, args.action_repeat) for run in args.runs]
    frames = " / ".join(f"{f / 1000:g}k" for f in args.frames)
    print(
        f"| run | env frames (last log row) | updates | eval task return at {frames} frames | training episodes, "
        f"mean of the last {args.last} | VIPER reward per step, first {args.first} -> last {args.last} training "
        "episodes | wall time %: act / insert / env / update / eval+ckpt |"
    )
    print("|---|---|---|---|---|---|---|")
    print(*rows, sep="\n")


if __name__ == "__main__":
    main()
