"""Prefect flows over the same stages ``dvc repro`` runs. Orchestration only: nothing numerical lives here.

- ``reproduce``: the whole pipeline for a preset, one Prefect task per DVC stage, each running
  ``dvc repro --single-item <stage>``. DVC's lock file stays the single record of staleness: after a Prefect
  run, ``dvc status`` reports nothing to do, and a stage that is already current costs a second.
- ``train_agents`` / ``collect_videos``: ad-hoc fan-out of one stage command over a (task, seed) selection
  through the flow's task runner (local threads driving one process each by default; Dask or Ray with the
  ``[dask]`` / ``[ray]`` extras). Their outputs land where the DVC stages expect them; the next ``dvc repro``
  records them. ``collect_videos`` trains a task's expert first where collect needs one.

Retries are safe because stages resume from their checkpoints; a failure that a second try cannot change (a config
or input error, a diverged agent, an operator's Ctrl-C or SIGTERM) is not retried. Long stages report progress to
Prefect (a progress artifact fed by the stage's progress bar) and finish with a table artifact of their metrics.
"""

from __future__ import annotations

import codecs
import contextlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.task_runners import ThreadPoolTaskRunner

from viper import dvc_yaml, paths
from viper.metrics import write_text
from viper.stages import StageSpec, by_name

_PERCENT = re.compile(r"(\d{1,3})%\|(?:[^|]*\|[^\[]*(?:\[[^\]]*\])?)?")
"""A tqdm bar (``desc: 50%|#####     | 5/10 [00:01<00:01, 4.5it/s, ret=1.0]``): its percentage, and where it ends
(a message printed while the bar was drawn follows it on the same line)."""
# DVC exits 255 whatever the stage's command exited with; its error line carries the command's own status.
_DVC_STAGE_STATUS = re.compile(r"failed to run: .*, exited with (-?\d+)")

FINAL_STATUSES = {
    2: "a config, usage or input error (a diverged agent's too)",
    3: "a command that is not implemented",
    130: "stopped by the operator (SIGINT)",
    143: "stopped by the operator (SIGTERM)",
    -2: "stopped by the operator (SIGINT)",  # Popen's status for a child the signal killed
    -15: "stopped by the operator (SIGTERM)",
    251: "a DVC configuration error",
    252: "DVC interrupted by the operator",
    253: "not a DVC repository",
    254: "a DVC usage error",
}
"""Exit statuses a retry cannot change: a second try fails the same way or undoes the operator's stop. Any other
status (a crash, SIGKILL / 137, out of memory) is retried: the stage resumes from its checkpoints."""


class StageFailed(RuntimeError):
    """A stage command exited non-zero; ``status`` is the command's own exit status (the stage's, under DVC)."""

    def __init__(self, cmd: list[str], status: int) -> None:
        why = FINAL_STATUSES.get(status)
        super().__init__(f"{' '.join(cmd)} failed with exit status {status}" + (f": {why}, not retried" if why else ""))
        self.cmd, self.status = cmd, status

    def __reduce__(self):
        # Dask and Ray hand a failed task's exception back pickled; the default would call StageFailed(message).
        return type(self), (self.cmd, self.status)


def retry_may_help(task, task_run, state) -> bool:
    """Prefect's ``retry_condition_fn``: retry unless the stage exited with one of ``FINAL_STATUSES``."""
    return getattr(state.data, "status", None) not in FINAL_STATUSES


def _venv_bin() -> str:
    """The folder of the running interpreter, so `dvc` and `viper` come from the same environment."""
    return str(Path(sys.executable).parent)


def _stream(cmd: list[str], cwd: Path, progress_key: str | None) -> None:
    """Run ``cmd``; forward its output to the Prefect log and its progress-bar percentage to an artifact.

    Output is forwarded as it arrives (a line reaches the log while the command still runs, a last line without a
    newline too). A logging or artifact call that fails (the API gone, say) is warned about once and never stops
    the stage: its pipe must keep draining, or the command would block on a full pipe or die of a broken one.
    """
    logger = get_run_logger()
    # PYTHONUNBUFFERED: a Python stage's prints would otherwise wait in its pipe buffer until it exits.
    env = dict(os.environ, PATH=_venv_bin() + os.pathsep + os.environ.get("PATH", ""), PYTHONUNBUFFERED="1")
    failed: set[str] = set()

    def guarded(what: str, call, *args, **kwargs):
        try:
            return call(*args, **kwargs)
        except Exception as exc:  # whatever the API raises, the stage goes on
            if what not in failed:
                failed.add(what)
                with contextlib.suppress(Exception):
                    logger.warning(f"{what} failed ({exc!r}); the stage keeps running, its output keeps being read")
            return None

    artifact = (
        guarded("creating the progress artifact", create_progress_artifact, 0.0, key=progress_key)
        if progress_key
        else None
    )
    last = 0.0
    stage_status = None

    def forward(line: str) -> None:
        nonlocal last, stage_status
        if status := _DVC_STAGE_STATUS.search(line):
            stage_status = int(status.group(1))
        match = _PERCENT.search(line)
        if match is None:
            guarded("logging the stage's output", logger.info, line)
            return
        if after := line[match.end() :].strip():  # a notice printed over the bar (tqdm draws it without newline)
            guarded("logging the stage's output", logger.info, after)
        if artifact is not None:
            percent = float(match.group(1))
            # A stage draws one bar per task or run: a percentage below the last is the next bar starting.
            if percent >= last + 1 or percent == 100 or percent < last:
                guarded("updating the progress artifact", update_progress_artifact, artifact, percent)
                last = percent

    with subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as proc:
        assert proc.stdout is not None
        # Bytes as they come (read1 returns what the pipe holds), decoded across chunk boundaries.
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        buffer = ""
        while chunk := proc.stdout.read1(4096):
            buffer += decoder.decode(chunk)
            # tqdm redraws with carriage returns: treat them as line ends.
            *lines, buffer = re.split(r"[\r\n]", buffer)
            for line in filter(None, (s.strip() for s in lines)):
                forward(line)
        if rest := (buffer + decoder.decode(b"", final=True)).strip():
            forward(rest)
        if proc.wait() != 0:
            raise StageFailed(cmd, proc.returncode if stage_status is None else stage_status)


def _publish_metrics(stage: StageSpec, project: Path) -> dict:
    """The stage's metrics, also published as a table artifact (and its pictures as a listing). The stage has
    succeeded by now: an artifact call that fails is warned about, not raised (a retry would only repeat it)."""
    path = project / stage.metrics
    if not path.exists():
        return {}
    metrics = json.loads(path.read_text())
    rows = [{"metric": k, "value": v} for k, v in sorted(metrics.items()) if not isinstance(v, (dict, list))]
    pictures = sorted(p for out in stage.outs for p in (project / out).rglob("*") if p.suffix in (".png", ".gif"))
    listing = "\n".join(f"- [{p.relative_to(project)}](file://{p})" for p in pictures[:50])
    try:
        if rows:
            create_table_artifact(rows, key=f"{stage.name}-metrics", description=f"{stage.name}: final metrics")
        if pictures:
            create_markdown_artifact(f"## {stage.name}: pictures\n\n{listing}", key=f"{stage.name}-pictures")
    except Exception as exc:  # whatever the API raises: the stage's outputs are written and recorded
        get_run_logger().warning(f"{stage.name}: publishing its artifacts failed ({exc!r}); the stage succeeded")
    return metrics


@task(retries=1, retry_delay_seconds=5, retry_condition_fn=retry_may_help, task_run_name="dvc-{stage_name}")
def run_stage(stage_name: str, project_dir: str) -> dict:
    """Bring one DVC stage up to date (resumes a killed run); return its summary metrics."""
    project = Path(project_dir).resolve()
    stage = by_name(stage_name)
    _stream(["dvc", "repro", "--single-item", stage.name], project, progress_key=f"{stage.name}-progress")
    return _publish_metrics(stage, project)


def _project_config(project_dir: str | Path, preset: str | None):
    """The configuration the stages load in ``project_dir``: ``preset`` (None: params.yaml's) with its params.yaml."""
    from viper import config

    path = Path(project_dir) / "params.yaml"
    return config.load(preset, params_path=path if path.exists() else None), path


def check_preset(project_dir: str | Path, preset: str) -> None:
    """``ConfigError`` unless the stages would accept ``preset`` with the project's params.yaml: a known preset
    whose settings, with the file's own (its ``collect.tasks`` from another suite, say), load and fit together."""
    from viper import config
    from viper.cli import check_policy

    # The ConfigError names the known presets, or the params.yaml setting the preset contradicts.
    cfg, path = _project_config(project_dir, preset)
    check_policy(cfg.collect.policy)
    for problem in (config.stray_collect_tasks(cfg), config.uncollected_agent_tasks(cfg, cfg.agent.reward)):
        if problem:  # what collect or train-agent would refuse, after the preset had been written
            raise config.ConfigError(f"preset {preset!r} with {path}: {problem}")


def set_preset(project_dir: str | Path, preset: str) -> None:
    """Point params.yaml's ``preset:`` at ``preset`` (what ``dvc exp run -S preset=...`` does), keeping comments;
    a preset ``check_preset`` refuses is refused before the file is touched."""
    check_preset(project_dir, preset)
    path = Path(project_dir) / "params.yaml"
    text = path.read_text()
    new, count = re.subn(r"(?m)^preset:.*$", f"preset: {preset}", text)
    if count == 0:
        new = f"preset: {preset}\n" + text
    if new != text:
        write_text(path, new)


@flow(name="viper-reproduce", log_prints=True)
def reproduce(preset: str = "demo", stages: list[str] | None = None, project_dir: str = ".") -> dict:
    """Run the pipeline for ``preset`` stage by stage through DVC; ``stages`` limits it (default: all)."""
    # Every check before params.yaml changes: a refused run leaves the checkout's preset as it was.
    names = [s.name for s in dvc_yaml.active_stages()]
    if stages is not None and not stages:  # an empty selection ran nothing and reported success
        raise ValueError(f"stages: an empty list selects nothing; leave it out for all of {names}, or name some")
    unknown = sorted(set(stages or ()) - set(names))
    if unknown:
        raise ValueError(f"stages: unknown or not yet implemented {unknown}; available: {names}")
    set_preset(project_dir, preset)
    results = {}
    for name in names:
        if stages is None or name in stages:
            results[name] = run_stage(name, project_dir)
    return results


@task(retries=1, retry_delay_seconds=5, retry_condition_fn=retry_may_help, task_run_name="{command}-{label}")
def run_command(command: str, args: list[str], label: str, project_dir: str) -> int:
    """Run one ``viper`` stage command with extra arguments (one process per call).

    Returns the id of the process that drove it: a Dask or Ray worker's with those runners, this one's locally.
    """
    # Pinned as dvc.yaml pins its stages: the outputs (and the writers' locks) are where `dvc repro` expects them.
    cmd = [sys.executable, "-m", "viper.cli", command, "-S", dvc_yaml.PINNED_DATA_DIR, *args]
    _stream(cmd, Path(project_dir).resolve(), progress_key=None)
    return os.getpid()


def _preset_args(preset: str) -> list[str]:
    return ["--preset", preset] if preset else []


@flow(name="viper-train-agents", task_runner=ThreadPoolTaskRunner(max_workers=2))
def train_agents(
    tasks: list[str], seeds: list[int], preset: str = "", reward: str = "viper", project_dir: str = "."
) -> dict[str, int]:
    """Train one agent per (task, seed), in parallel through the flow's task runner; run label -> driver pid."""
    futures = {
        f"{t}/seed{s}": run_command.submit(
            "train-agent",
            [*_preset_args(preset), "--task", t, "--seed", str(s), "-S", f"agent.reward={reward}"],
            f"{t.replace('/', '-')}-seed{s}",
            project_dir,
        )
        for t in dict.fromkeys(tasks)  # a task or seed given twice would start two writers on one run folder
        for s in dict.fromkeys(seeds)
    }
    return {label: future.result() for label, future in futures.items()}


def tasks_needing_an_expert(tasks: list[str], preset: str, project_dir: str | Path) -> list[str]:
    """The ``tasks`` whose collection needs the ``expert`` stage first (``collect.policy: expert`` on a task
    without a scripted expert), under ``preset`` (empty: params.yaml's) with the project's params.yaml."""
    from viper.experts.policies import needs_trained_expert

    cfg, _ = _project_config(project_dir, preset or None)
    return [t for t in tasks if needs_trained_expert(cfg.collect.policy, t)]


@flow(name="viper-collect-videos", task_runner=ThreadPoolTaskRunner(max_workers=2))
def collect_videos(tasks: list[str], preset: str = "", project_dir: str = ".") -> dict[str, int]:
    """Collect expert videos for each task in parallel (each task is its own group in the suite's store);
    returns task -> the pid of the process that drove it. A task without a scripted expert first trains (or
    resumes) its expert (``viper expert --task``), as the DVC stage ``expert`` runs before ``collect``."""
    tasks = list(dict.fromkeys(tasks))
    experts = {
        t: run_command.submit("expert", [*_preset_args(preset), "--task", t], f"{paths.slug(t)}-expert", project_dir)
        for t in tasks_needing_an_expert(tasks, preset, project_dir)
    }
    futures = {
        t: run_command.submit(
            "collect",
            [*_preset_args(preset), "--task", t],
            t.replace("/", "-"),
            project_dir,
            wait_for=[experts[t]] if t in experts else None,
        )
        for t in tasks
    }
    return {t: future.result() for t, future in futures.items()}
