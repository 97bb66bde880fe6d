"""Overlay the task-return curves of several agent runs (their ``logs/metrics.jsonl``) in one PNG.

    .venv/bin/python benchmarks/plot_returns.py out.png data/agents/task/dmc-cartpole_balance/seed0 ... \
        --title "cartpole_balance, size S" --random 340 --zero 735

Training episodes are thin lines, evaluation episodes dots; x is env frames (agent steps x action repeat).
A run known only from a results table (its folder gone) is drawn from its evaluation returns with
``--recorded "LABEL=STEP:RETURN,STEP:RETURN,..."`` (agent steps), e.g. ``--recorded "oracle=350:77,700:68"``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from viper.eval.report import read_series  # noqa: E402

TRAIN, EVAL = "train/episode_task_return", "episode/task_return"


def _recorded(text: str) -> tuple[str, list[tuple[int, float]]]:
    """``LABEL=STEP:RETURN,...`` -> (label, [(step, return), ...])."""
    label, sep, pairs = text.rpartition("=")
    try:
        points = [(int(step), float(value)) for step, value in (pair.split(":") for pair in pairs.split(","))]
    except ValueError:
        points = []
    if not sep or not label or not points:
        raise argparse.ArgumentTypeError(f"{text!r}: expected LABEL=STEP:RETURN,STEP:RETURN,... (e.g. oracle=350:77)")
    return label, points


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output")
    parser.add_argument("runs", nargs="+", type=Path, help="agent run folders (.../<reward>/<task>/seed<N>)")
    parser.add_argument("--title", default="")
    parser.add_argument("--action-repeat", type=int, default=2)
    parser.add_argument("--random", type=float, default=None, help="draw a line at this random-policy return")
    parser.add_argument(
        "--zero", type=float, default=None, help="draw a line at this zero-action return (an agent that keeps still)"
    )
    parser.add_argument(
        "--recorded",
        action="append",
        default=[],
        type=_recorded,
        metavar="LABEL=STEP:RETURN,...",
        help="evaluation returns of a run from a results table (agent steps), drawn as a dotted curve",
    )
    args = parser.parse_args()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for run in args.runs:
        label = f"{run.parent.parent.name} reward, {run.name}"
        style = "-" if run.parent.parent.name == "task" else "--"
        # One read of the run's log; a line cut short by a killed run is skipped.
        curves = read_series(run / "logs" / "metrics.jsonl", lambda key: key in (TRAIN, EVAL))
        train, evals = ([(step * args.action_repeat, v) for step, v in curves.get(k, [])] for k in (TRAIN, EVAL))
        (line,) = ax.plot(*zip(*train, strict=True), style, alpha=0.35, lw=1) if train else ax.plot([], [])
        if evals:
            ax.plot(*zip(*evals, strict=True), "o" + style, color=line.get_color(), label=f"{label} (eval)")
    for label, points in args.recorded:
        ax.plot([step * args.action_repeat for step, _ in points], [v for _, v in points], "o:", label=label)
    if args.random is not None:
        ax.axhline(args.random, color="grey", lw=0.8, ls=":", label=f"uniform random actions ({args.random:g})")
    if args.zero is not None:
        ax.axhline(args.zero, color="black", lw=0.8, ls="-.", label=f"zero action ({args.zero:g})")
    ax.set_xlabel("env frames")
    ax.set_ylabel("task return")
    ax.set_title(args.title, fontsize=9)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.output, dpi=90)


if __name__ == "__main__":
    main()
