"""One results-table row per agent run, from its ``metrics.jsonl``: what the GPU sessions' tables in results/ report.

    .venv/bin/python benchmarks/run_table.py data/agents/viper/dmc-cartpole_balance/seed0 runs/gpu4/task_seed1.jsonl
    .venv/bin/python benchmarks/run_table.py RUN ... --frames 20000 40000 60000 80000 100000 --last 8

A run is a run folder (``.../seed<N>``, read from ``logs/metrics.jsonl``) or a ``metrics.jsonl`` copy; a run
without a log gets a row saying so. Columns:
- env frames reached (env steps x the run's action repeat, read from its ``metrics.json`` when it finished, else
  ``--action-repeat``) and updates;
- the evaluation task return at each of ``--frames``: the first evaluation within 1% past each count, as
  evaluations land on the first loop step past their cadence (``-`` where none);
- the mean of the last ``--last`` training episodes' task returns;
- for VIPER runs, the per-step VIPER reward (episode VIPER return / scored steps) of the first ``--first``
  training episodes (default 4: one per env, mostly before any update) and of the last ``--last``;
- where the wall time went: the log rows' ``agent/time/<phase>`` fractions, each row weighted by its stretch's
  seconds (``agent/stretch_s``; in logs before it, the env steps since the previous row over the row's rate,
  which misweighs the first row after a resume), in percent: act / insert / env / update / eval + checkpoint
  (runs logged before the twentieth session have none).

Frames, not agent steps, so that rows of runs with other action repeats line up: that mapping is where hand-made
tables went wrong before.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from viper.agent.log_rows import PHASES
from viper.eval.report import read_series

EVAL, TRAIN = "episode/task_return", "train/episode_task_return"
VIPER_RETURN, VIPER_STEPS = "train/episode_viper_return", "train/episode_viper_steps"
RATE, STRETCH = "agent/env_steps_per_s", "agent/stretch_s"


def _action_repeat(run: Path, default: int) -> int:
    """A finished run's action repeat from its ``metrics.json`` (env frames / env steps), else ``default``."""
    try:
        done = json.loads((run / "metrics.json").read_text())
        return max(1, round(done["env_frames"] / done["env_steps"]))
    except (OSError, ValueError, KeyError, TypeError, ZeroDivisionError):
        return default


def _per_step(series: dict, picks: slice) -> str:
    returns, steps = series.get(VIPER_RETURN, [])[picks], series.get(VIPER_STEPS, [])[picks]
    if not returns or len(returns) != len(steps):
        return "-"
    rates = [r / max(n, 1.0) for (_, r), (_, n) in zip(returns, steps, strict=True)]
    return f"{min(rates):.0f} to {max(rates):.0f}"


def _shares(series: dict) -> list[float] | None:
    """Each phase's share of the logged wall time: row fractions weighted by the row's stretch in seconds
    (``agent/stretch_s``, else its env steps since the previous timed row over its rate)."""
    rates = series.get(RATE, [])
    fractions = [dict(series.get(f"agent/time/{p}", [])) for p in PHASES]
    if not rates or any(len(f) != len(rates) for f in fractions):
        return None
    stretches = series.get(STRETCH, [])
    if len(stretches) == len(rates):
        seconds = [s for _, s in stretches]
    else:
        seconds, previous = [], 0
        for step, rate in rates:
            seconds.append((step - previous) / rate if rate > 0 else 0.0)
            previous = step
    total = sum(seconds) or 1.0
    return [sum(f[step] * s for (step, _), s in zip(rates, seconds, strict=True)) / total for f in fractions]


def _eval_at(evals: list[tuple[int, float]], frames: int) -> str:
    for at, value in evals:
        if frames <= at <= frames * 1.01:
            return f"{value:.0f}"
    return "-"


def row(run: Path, frames: list[int], first: int, last: int, action_repeat: int) -> str:
    log = run if run.suffix == ".jsonl" else run / "logs" / "metrics.jsonl"
    if not log.exists():
        return f"| {run} | no metrics log (expected a run folder with logs/metrics.jsonl, or a .jsonl file) |"
    wanted = {
        EVAL,
        TRAIN,
        VIPER_RETURN,
        VIPER_STEPS,
        RATE,
        STRETCH,
        "agent/updates",
        *(f"agent/time/{p}" for p in PHASES),
    }
    series = read_series(log, lambda key: key in wanted)
    repeat = action_repeat if run.suffix == ".jsonl" else _action_repeat(run, action_repeat)
    evals = [(step * repeat, value) for step, value in series.get(EVAL, [])]
    steps = [step for points in series.values() for step, _ in points]
    reached = max(steps, default=0) * repeat
    updates = series.get("agent/updates", [(0, 0.0)])[-1][1]
    at = " / ".join(_eval_at(evals, f) for f in frames)
    train = [value for _, value in series.get(TRAIN, [])[-last:]]
    mean = f"{sum(train) / len(train):.0f}" if train else "-"
    viper = f"{_per_step(series, slice(0, first))} -> {_per_step(series, slice(-last, None))}"
    shares = _shares(series)
    time = "-" if shares is None else " / ".join(f"{100 * s:.0f}" for s in [*shares[:4], shares[4] + shares[5]])
    viper = viper if VIPER_RETURN in series else "-"
    return f"| {run} | {reached:,} | {updates:,.0f} | {at} | {mean} | {viper} | {time} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (.../seed<N>) or metrics.jsonl files")
    parser.add_argument("--frames", nargs="+", type=int, default=[20000, 40000, 60000, 80000, 100000])
    parser.add_argument("--first", type=int, default=4, help="first training episodes whose VIPER reward is shown")
    parser.add_argument("--last", type=int, default=8, help="last training episodes averaged / shown")
    parser.add_argument("--action-repeat", type=int, default=2, help="for runs without a metrics.json (unfinished)")
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
