"""Fast unit tests of the orchestration layer: the generated dvc.yaml, the Prefect tasks' retries and output
streaming, the flows' checks and the deployments' options. End-to-end runs live in test_pipeline.py."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import pytest
from prefect import flow, task

from viper import dvc_yaml
from viper.cli import main as viper_main


def test_every_generated_stage_command_pins_the_data_dir_its_outs_are_under():
    stages = dvc_yaml.render()["stages"]
    assert stages
    for name, stage in stages.items():
        assert f" -S data_dir={dvc_yaml.DATA} " in f"{stage['cmd']} ", (name, stage["cmd"])
        assert all(next(iter(out)).startswith(f"{dvc_yaml.DATA}/") for out in stage["outs"]), name


def test_a_pinned_data_dir_that_params_yaml_contradicts_is_said_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("preset: tiny\ndata_dir: scratch\n")
    assert viper_main(["config", "-S", "data_dir=data"]) == 0
    notes = capsys.readouterr().err.splitlines()
    assert len(notes) == 1 and "params.yaml's data_dir 'scratch'" in notes[0] and "under data/" in notes[0], notes
    assert viper_main(["config"]) == 0  # no override: nothing to say
    assert capsys.readouterr().err == ""


def test_the_local_dask_cluster_serves_its_dashboard_on_loopback_only():
    pytest.importorskip("prefect_dask", reason="the [dask] extra (in requirements.lock) is not installed")
    from pipeline.runners import make_runner

    address = make_runner("dask", workers=1).cluster_kwargs.get("dashboard_address", ":8787")
    assert address.startswith("127.0.0.1:"), address


@flow
def in_a_flow(task, *args):
    """Run one task inside a flow run, as the pipeline's flows do (its logs then reach the API too)."""
    return task(*args)


def _fake_dvc(bin_dir: Path, runs: Path, body: str) -> None:
    """A `dvc` that records each start in ``runs`` and then does ``body`` (shell)."""
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / "dvc"
    script.write_text(f'#!/bin/sh\necho run >> "{runs}"\n{body}\n')
    script.chmod(0o755)


@pytest.mark.parametrize(
    ("body", "runs_expected"),
    [
        # What DVC prints and exits with when the stage's command fails: the command's status decides.
        ("echo \"ERROR: failed to reproduce 'collect': failed to run: viper collect, exited with 2\"; exit 255", 1),
        ("echo \"ERROR: failed to reproduce 'collect': failed to run: viper collect, exited with 143\"; exit 255", 1),
        ("echo \"ERROR: failed to reproduce 'collect': failed to run: viper collect, exited with -9\"; exit 255", 3),
        ("exit 130", 1),  # a Ctrl-C that reached the command itself
        ("kill -9 $$", 3),  # a crash: the stage resumes, so a retry helps
    ],
    ids=["config-error", "sigterm-stop", "stage-killed", "ctrl-c", "crash"],
)
def test_a_stage_is_retried_only_when_a_retry_can_help(tmp_path, monkeypatch, prefect_api, body, runs_expected):
    from pipeline import flows

    runs = tmp_path / "runs"
    _fake_dvc(tmp_path / "bin", runs, body)
    monkeypatch.setattr(flows, "_venv_bin", lambda: str(tmp_path / "bin"))
    with pytest.raises(flows.StageFailed, match="failed with exit status") as failed:
        in_a_flow(flows.run_stage.with_options(retries=2, retry_delay_seconds=0), "collect", str(tmp_path))
    assert len(runs.read_text().splitlines()) == runs_expected, failed.value
    assert (runs_expected == 1) == ("not retried" in str(failed.value)), failed.value
    # The fan-out task follows the same rule.
    assert flows.run_command.retry_condition_fn is flows.run_stage.retry_condition_fn is flows.retry_may_help


def test_a_stage_failure_survives_the_pickling_dask_and_ray_use():
    import pickle

    from pipeline import flows

    failed = pickle.loads(pickle.dumps(flows.StageFailed(["viper", "collect"], 2)))
    assert failed.status == 2 and str(failed) == str(flows.StageFailed(["viper", "collect"], 2))


def test_fan_out_commands_pin_the_data_dir_as_the_dvc_stages_do(tmp_path, monkeypatch, prefect_api):
    """The flows' own commands write (and lock) where `dvc repro`'s stages do, whatever params.yaml says."""
    from pipeline import flows

    seen = []
    monkeypatch.setattr(flows, "_stream", lambda cmd, cwd, progress_key: seen.append(cmd))
    in_a_flow(flows.run_command, "collect", ["--task", "dmc/cartpole_balance"], "label", str(tmp_path))
    assert seen[0][3:] == ["collect", "-S", dvc_yaml.PINNED_DATA_DIR, "--task", "dmc/cartpole_balance"]


def test_reproduce_refuses_an_unknown_stage_before_touching_params(tmp_path, prefect_api):
    from pipeline.flows import reproduce

    params = tmp_path / "params.yaml"
    params.write_bytes(b"# keep me\npreset: demo\ncollect: {}\n")
    with pytest.raises(ValueError, match=r"stages: unknown or not yet implemented \['colect'\]"):
        reproduce(preset="tiny", stages=["colect"], project_dir=str(tmp_path))
    with pytest.raises(ValueError, match=r"stages: an empty list selects nothing; leave it out for all of \["):
        reproduce(preset="tiny", stages=[], project_dir=str(tmp_path))
    assert params.read_bytes() == b"# keep me\npreset: demo\ncollect: {}\n"


@pytest.mark.parametrize(
    ("missing", "not_implemented"),
    [("viper.data.collect", True), ("viper.data", True), ("zarr", False), ("viper.data.col", False)],
)
def test_only_a_missing_stage_module_means_not_implemented(monkeypatch, missing, not_implemented):
    import importlib

    from viper import cli
    from viper.stages import by_name

    stage = by_name("collect")
    real = importlib.import_module

    def import_module(name, *args, **kwargs):
        if name == cli.STAGES[stage.command].module:
            raise ModuleNotFoundError(f"No module named {missing!r}", name=missing)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", import_module)
    if not_implemented:
        assert not dvc_yaml.implemented(stage)
    else:  # a dependency the stage needs is missing: dvc-yaml must fail, not drop the stage
        with pytest.raises(ModuleNotFoundError, match=missing):
            dvc_yaml.active_stages()


class _Records(logging.Handler):
    """(arrival time, message) of every record, to see when a line reached the log."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.seen: list[tuple[float, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.append((time.monotonic(), record.getMessage()))


@pytest.fixture
def task_log():
    handler = _Records()
    logger = logging.getLogger("prefect.task_runs")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


@task
def stream(code: str, cwd: str, progress_key: str | None = None) -> None:
    from pipeline import flows

    flows._stream([sys.executable, "-c", code], Path(cwd), progress_key)


def test_stage_output_reaches_the_log_as_it_comes_and_a_last_line_without_newline_too(
    tmp_path, prefect_api, task_log, monkeypatch
):
    """A handshake, not a clock: the child prints "b" (without a newline) only once the log has seen its "a",
    so "a" must reach the log while the child still runs, not when its pipe closes."""
    seen_a = tmp_path / "seen_a"
    real_emit = task_log.emit

    def emit(record):
        if record.getMessage() == "a":
            seen_a.touch()
        real_emit(record)

    monkeypatch.setattr(task_log, "emit", emit)
    code = (
        f"import pathlib, time; print('a', flush=True); p = pathlib.Path({str(seen_a)!r}); t = time.time()\n"
        "while not p.exists() and time.time() - t < 60: time.sleep(0.05)\n"
        "print('b' if p.exists() else 'a never reached the log', end='', flush=True)"
    )
    in_a_flow(stream, code, str(tmp_path))
    messages = [message for _, message in task_log.seen]
    assert "a" in messages and "b" in messages, messages


def test_a_failing_artifact_update_is_warned_about_once_and_the_stage_goes_on(
    tmp_path, prefect_api, task_log, monkeypatch
):
    from pipeline import flows

    def unreachable(*args, **kwargs):
        raise ConnectionError("the Prefect API is gone")

    monkeypatch.setattr(flows, "update_progress_artifact", unreachable)
    code = "import sys; [print(f'{p}%|###', file=sys.stderr) for p in (10, 50, 100)]; print('done')"
    in_a_flow(stream, code, str(tmp_path), "test-progress")
    messages = [message for _, message in task_log.seen]
    assert "done" in messages, messages
    assert sum("updating the progress artifact failed" in m for m in messages) == 1, messages


@pytest.mark.parametrize("workers", ["0", "-3", "two"])
def test_serve_refuses_workers_below_one_before_registering(monkeypatch, capsys, workers):
    from pipeline import serve

    def must_not_register(*args, **kwargs):
        raise AssertionError("deployments were built for a refused --workers")

    monkeypatch.setattr(serve, "deployments", must_not_register)
    monkeypatch.setattr(serve, "serve", must_not_register)
    with pytest.raises(SystemExit) as exit_:
        serve.main(["--preset", "tiny", "--workers", workers])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "argument --workers" in err and "at least 1" in err, err


def test_every_folder_viper_paths_names_is_a_stage_output_or_an_external_input():
    """viper/paths.py is where stages find their folders and dvc.yaml's outs come from: nothing it names may lie
    outside what DVC tracks (a stage writing there would be invisible to `dvc status`)."""
    import inspect

    from viper import paths
    from viper.stages import DATA, EXTERNAL_INPUTS, STAGES

    sample = {"suite": "dmc", "task": "dmc/cartpole_balance", "reward": "viper", "seed": 0}
    tracked = [Path(out) for stage in STAGES for out in stage.outs] + [Path(i) for i in EXTERNAL_INPUTS]
    named = {
        name: fn(DATA, **{arg: sample[arg] for arg in list(inspect.signature(fn).parameters)[1:]})
        for name, fn in inspect.getmembers(paths, inspect.isfunction)
        if fn.__module__ == paths.__name__ and list(inspect.signature(fn).parameters)[:1] == ["data_dir"]
    }
    assert len(named) >= 10, sorted(named)
    for name, path in named.items():
        assert any(path == root or root in path.parents for root in tracked), (name, path)
    # and the other way round: every stage output is a folder paths.py names
    assert {str(root) for root in tracked} <= {str(path) for path in named.values()}


def test_served_fan_out_deployments_follow_params_yaml_not_the_reproduce_preset(tmp_path):
    """They passed serve's --preset: with params.yaml naming another preset, their runs were made under settings
    the next `dvc repro` does not record, and it started them again from nothing."""
    from pipeline import serve

    served = {d.name: d for d in serve.deployments(str(tmp_path), "0 3 * * *", "tiny")}
    assert served["reproduce"].parameters["preset"] == "tiny"
    assert served["train-agents"].parameters["preset"] == served["collect-videos"].parameters["preset"] == ""


def test_a_notice_printed_over_a_progress_bar_reaches_the_log(tmp_path, prefect_api, task_log):
    """tqdm draws its bar without a newline: a notice printed while it is drawn (a rollout worker retried, an
    evaluation cut short) shares the bar's line, which was taken for progress and never logged."""
    bar = "\\rdmc/cartpole_balance:  50%|#####     | 5/10 [00:01<00:01, 4.52ep/s, ret=812.3]"
    code = f"import sys; sys.stderr.write({bar!r}); sys.stderr.write('a rollout worker process died\\n'); print('done')"
    in_a_flow(stream, code, str(tmp_path), "test-progress")
    messages = [message for _, message in task_log.seen]
    assert "a rollout worker process died" in messages and "done" in messages, messages
    assert not any("50%|" in m for m in messages), messages  # the bar itself stays out of the log


def test_a_failing_artifact_after_a_successful_stage_is_a_warning(tmp_path, monkeypatch, prefect_api, task_log):
    """The stage's outputs are written and recorded: failing it (and retrying a no-op repro) helps nobody."""
    from pipeline import flows
    from viper.stages import by_name

    _fake_dvc(tmp_path / "bin", tmp_path / "runs", "exit 0")
    monkeypatch.setattr(flows, "_venv_bin", lambda: str(tmp_path / "bin"))
    metrics = tmp_path / by_name("collect").metrics
    metrics.parent.mkdir(parents=True)
    metrics.write_text('{"episodes": 4}')

    def unreachable(*args, **kwargs):
        raise ConnectionError("the Prefect API is gone")

    monkeypatch.setattr(flows, "create_table_artifact", unreachable)
    assert in_a_flow(flows.run_stage, "collect", str(tmp_path)) == {"episodes": 4}
    assert len((tmp_path / "runs").read_text().splitlines()) == 1
    assert any("publishing its artifacts failed" in m for _, m in task_log.seen), task_log.seen


def test_reproduce_refuses_a_preset_that_params_yaml_contradicts_before_writing_it(tmp_path, prefect_api):
    """set_preset checked the preset alone: params.yaml's own collect.tasks (another suite) made every stage exit 2
    after the file already named the new preset."""
    from pipeline import serve
    from pipeline.flows import reproduce
    from viper.config import ConfigError

    params = tmp_path / "params.yaml"
    text = b"# keep me\npreset: tiny\ncollect:\n  tasks: [dmc/cartpole_balance]\n"
    params.write_bytes(text)
    with pytest.raises(ConfigError, match=r"preset 'paper_atari' with .*params.yaml: .*dmc/cartpole_balance is not in"):
        reproduce(preset="paper_atari", project_dir=str(tmp_path))
    assert params.read_bytes() == text
    with pytest.raises(ConfigError, match="dmc/cartpole_balance is not in that suite"):
        serve.deployments(str(tmp_path), "0 3 * * *", "paper_atari")


def test_serve_refuses_an_address_for_the_local_runner(capsys):
    from pipeline import serve

    with pytest.raises(SystemExit) as exit_:
        serve.main(["--preset", "tiny", "--address", "tcp://10.0.0.1:8786"])
    assert exit_.value.code == 2 and "--address: only with --runner dask or ray" in capsys.readouterr().err


def test_collect_videos_trains_the_expert_of_a_task_without_a_scripted_one_first(tmp_path, monkeypatch, prefect_api):
    """With collect.policy=expert, collecting dmc/walker_walk needs `viper expert` to have trained its expert (the
    DVC stage `expert` runs before `collect`); the flow started collect at once, which failed for want of it."""
    import threading

    from pipeline import flows

    (tmp_path / "params.yaml").write_text("preset: tiny\ncollect:\n  tasks: [dmc/cartpole_balance, dmc/walker_walk]\n")
    seen, lock = [], threading.Lock()

    def record(cmd, cwd, progress_key):
        time.sleep(0.2 if "expert" in cmd else 0.0)  # an expert that takes a while: collect must still wait
        with lock:
            seen.append(cmd[3:])

    monkeypatch.setattr(flows, "_stream", record)
    flows.collect_videos(["dmc/cartpole_balance", "dmc/walker_walk"], project_dir=str(tmp_path))
    order = [(cmd[0], cmd[cmd.index("--task") + 1]) for cmd in seen]
    assert sorted(order) == [
        ("collect", "dmc/cartpole_balance"),
        ("collect", "dmc/walker_walk"),
        ("expert", "dmc/walker_walk"),
    ], order  # the scripted cartpole expert needs no training
    assert order.index(("expert", "dmc/walker_walk")) < order.index(("collect", "dmc/walker_walk")), order
    assert flows.tasks_needing_an_expert(["dmc/walker_walk"], "tiny,published", tmp_path) == []  # imports


def test_the_retry_rule_reads_real_dvcs_error_line(tmp_path, prefect_api):
    """The stand-in `dvc` above prints the error line this test lets real DVC print: DVC exits 255 whatever its
    stage's command did, and only its wording carries the command's status (a DVC upgrade that changed it would
    retry config errors three times)."""
    import subprocess

    from pipeline import flows

    runs = tmp_path / "runs"
    (tmp_path / "dvc.yaml").write_text(f"stages:\n  collect:\n    cmd: sh -c 'echo run >> {runs}; exit 2'\n")
    for init in (["git", "init", "-q"], [str(Path(sys.executable).parent / "dvc"), "init", "-q"]):
        subprocess.run(init, cwd=tmp_path, check=True)
    with pytest.raises(flows.StageFailed, match="failed with exit status 2: a config") as failed:
        in_a_flow(flows.run_stage.with_options(retries=2, retry_delay_seconds=0), "collect", str(tmp_path))
    assert len(runs.read_text().splitlines()) == 1, failed.value
