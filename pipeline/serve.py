"""Register the VIPER deployments with a schedule and serve them: ``python -m pipeline.serve``.

Start a Prefect server first (``prefect server start --host 127.0.0.1``, UI at http://127.0.0.1:4200) and
point this process at it (``PREFECT_API_URL=http://127.0.0.1:4200/api``); without a server the deployments
are registered in the embedded local Prefect (SQLite under ``PREFECT_HOME``). Runs can then be started or
rescheduled from the UI with typed parameters (preset, tasks, seeds). Stop with SIGTERM or Ctrl-C.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from prefect import serve

from pipeline.flows import check_preset, collect_videos, reproduce, train_agents
from pipeline.runners import RUNNERS, make_runner
from viper.errors import ViperError


def deployments(
    project_dir: str, cron: str, preset: str, runner: str = "local", workers: int = 2, address: str | None = None
) -> list:
    """The deployments this project serves (the reproduce flow on ``cron`` with ``preset``; fan-out flows on
    demand with params.yaml's preset); the preset and the cron expression are checked first (a ViperError names
    them)."""
    from prefect.client.schemas.schedules import CronSchedule

    check_preset(project_dir, preset)  # a ConfigError naming the known presets, or what params.yaml contradicts
    try:
        CronSchedule(cron=cron)
    except ValueError:  # pydantic's validation error
        raise ViperError(
            f"--cron {cron!r}: not a cron expression (five fields, e.g. '0 3 * * *': daily at 03:00)"
        ) from None
    project_dir = str(Path(project_dir).resolve())
    fan_out = make_runner(runner, workers, address)
    return [
        reproduce.to_deployment(
            name="reproduce",
            cron=cron,
            parameters={"preset": preset, "project_dir": project_dir},
            # One at a time: a run started from the UI while the nightly one runs would switch params.yaml's preset
            # under it (and meet DVC's lock); Prefect queues it instead.
            concurrency_limit=1,
            description="dvc repro of the whole pipeline for a preset, stage by stage",
        ),
        train_agents.with_options(task_runner=fan_out).to_deployment(
            name="train-agents",
            # preset "": params.yaml's (which the reproduce flow writes), so these runs are the ones `dvc repro`
            # records; a preset typed in the UI is that run's alone.
            parameters={"tasks": ["dmc/cartpole_balance"], "seeds": [0], "preset": "", "project_dir": project_dir},
            description="train one agent per (task, seed) in parallel (preset empty: params.yaml's)",
        ),
        collect_videos.with_options(task_runner=make_runner(runner, workers, address)).to_deployment(
            name="collect-videos",
            parameters={"tasks": ["dmc/cartpole_balance"], "preset": "", "project_dir": project_dir},
            description="collect expert videos for a task selection in parallel (preset empty: params.yaml's)",
        ),
    ]


def _positive(text: str) -> int:
    """An argparse type: a whole number of at least 1 (0 workers would register deployments that never run)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number of at least 1") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: expected at least 1")
    return value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline.serve", description=__doc__.splitlines()[0])
    parser.add_argument("--project-dir", default=".", help="the repository to run in (default: %(default)s)")
    parser.add_argument(
        "--cron", default="0 3 * * *", help="schedule of the reproduce deployment (default: %(default)s)"
    )
    parser.add_argument(
        "--preset",
        default="demo",
        help="the reproduce deployment's default preset, which it writes into params.yaml; the fan-out deployments "
        "default to params.yaml's, so their runs are the ones `dvc repro` records (default: %(default)s)",
    )
    parser.add_argument("--runner", default="local", choices=RUNNERS, help="task runner for fan-out flows")
    parser.add_argument(
        "--workers", type=_positive, default=2, help="parallel stage processes, at least 1 (default: %(default)s)"
    )
    parser.add_argument(
        "--address", help="with --runner dask or ray: the cluster's scheduler address (default: start a local cluster)"
    )
    args = parser.parse_args(argv)
    if args.address and args.runner == "local":
        parser.error("--address: only with --runner dask or ray (the local runner starts its own threads)")
    try:
        served = deployments(args.project_dir, args.cron, args.preset, args.runner, args.workers, args.address)
    except ViperError as exc:
        parser.error(str(exc))
    serve(*served)


if __name__ == "__main__":
    main()
