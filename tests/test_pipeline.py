"""End-to-end: the tiny pipeline through a real `dvc repro` in a real git repo, the Prefect flows, a served
deployment on a local Prefect server, and a kill in the middle of a stage.

One project copy is shared by the tests of this module (they run in file order and build on each other), so the
expensive full run happens once.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from viper import dvc_yaml
from viper.stages import metrics_path

ROOT = Path(__file__).resolve().parents[1]
BIN = str(Path(sys.executable).parent)

pytestmark = pytest.mark.slow


def _env(project: Path) -> dict[str, str]:
    env = dict(os.environ, PATH=BIN + os.pathsep + os.environ["PATH"], PREFECT_HOME=str(project / ".prefect"))
    env["DVC_NO_ANALYTICS"] = "1"
    return env


def sh(project: Path, *cmd: str, check: bool = True, timeout: float = 2400) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, cwd=project, env=_env(project), capture_output=True, text=True, timeout=timeout)
    if check and out.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}")
    return out


def make_project(dst: Path) -> Path:
    """A fresh git repo holding this working tree's files (tracked and new, not ignored), preset tiny."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.decode()
    for rel in filter(None, listed.split("\0")):
        source = ROOT / rel
        if source.is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dst / rel)
    params = yaml.safe_load((dst / "params.yaml").read_text())
    params["preset"] = "tiny"
    (dst / "params.yaml").write_text(yaml.safe_dump(params))
    sh(dst, "git", "init", "-q")
    sh(dst, "git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "init", "--allow-empty")
    sh(dst, "git", "add", "-A")
    sh(dst, "git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "project")
    sh(dst, "dvc", "config", "--local", "core.site_cache_dir", str(dst / ".dvc-site"))
    return dst


def ran(output: str) -> set[str]:
    """Stage names `dvc repro` printed as running."""
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    return make_project(tmp_path_factory.mktemp("project"))


def test_committed_dvc_yaml_is_generated_from_the_stage_table():
    assert (ROOT / "dvc.yaml").read_text() == dvc_yaml.text(), "run `viper dvc-yaml` and commit dvc.yaml"


def test_the_flow_refuses_an_unknown_preset_before_touching_params(tmp_path):
    from pipeline.flows import set_preset
    from viper.config import ConfigError

    params = tmp_path / "params.yaml"
    params.write_text("# comment\npreset: demo\ncollect: {}\n")
    with pytest.raises(ConfigError, match="unknown preset 'tinny'"):
        set_preset(tmp_path, "tinny")
    assert params.read_text() == "# comment\npreset: demo\ncollect: {}\n"
    set_preset(tmp_path, "tiny,size_xs")
    assert params.read_text() == "# comment\npreset: tiny,size_xs\ncollect: {}\n"


def test_dvc_repro_runs_the_whole_tiny_pipeline(project):
    out = sh(project, "dvc", "repro")
    stages = [s.name for s in dvc_yaml.active_stages()]
    assert ran(out.stdout) == set(stages), out.stdout
    for stage in stages:
        assert (project / metrics_path(stage)).exists(), f"{stage} wrote no metrics"
    if "report" in stages:
        report = (project / "data" / "report" / "report.md").read_text()
        for task in yaml.safe_load(sh(project, "viper", "config").stdout)["agent"]["tasks"]:
            assert f"| {task} |" in report
        # The reward diagnostics written by reward-eval reach the report (not "not run").
        diagnostics = report.split("## Reward model diagnostics", 1)[1].split("\n## ", 1)[0]
        assert "auroc_expert_vs_random" in diagnostics and "not run" not in diagnostics, diagnostics
        # dvc.yaml's top-level plots: the agents' return curves, the prior's bits per token, the pictures.
        shown = sh(project, "dvc", "plots", "show", "--json")
        plotted = json.loads(shown.stdout)["data"]
        assert any(p.startswith("data/report/plots/agent_") for p in plotted), sorted(plotted)
        assert any(p.startswith("data/report/plots/prior_") for p in plotted), sorted(plotted)
        assert any(p.endswith(".png") for p in plotted) and "WARNING" not in shown.stderr, shown.stderr


def test_second_repro_is_a_no_op(project):
    out = sh(project, "dvc", "repro")
    assert ran(out.stdout) == set(), out.stdout
    assert "up to date" in sh(project, "dvc", "status").stdout


def test_evaluate_reuses_what_is_current_and_drops_runs_no_longer_configured(project):
    """A re-run (after a kill, or of another stage's change) evaluates nothing current again; the folder of a run
    that is no longer configured goes, so report never shows it."""
    out = project / "data" / "evaluate"
    before = json.loads((out / "results.json").read_text())
    stale = out / "viper" / "dmc-cartpole_swingup" / "seed7"
    stale.mkdir(parents=True)
    (stale / "episode0.gif").write_bytes(b"GIF89a")
    again = sh(project, "viper", "evaluate").stdout
    lines = [line for line in again.splitlines() if line.startswith("evaluate: ")]
    assert lines and all("evaluated before" in line for line in lines), again
    assert json.loads((out / "results.json").read_text()) == before and not stale.exists()
    assert all(r["checkpoint"].startswith("step_") for r in before), before


def test_dvc_exp_run_sets_a_param_reruns_downstream_and_is_listed(project):
    # `++`: params.yaml's sections are empty (the preset decides), and DVC's Hydra overrides only add keys so.
    out = sh(project, "dvc", "exp", "run", "-S", "++evaluate.agent_episodes=2", "--name", "two-episodes")
    assert ran(out.stdout) == {"reward-eval", "evaluate", "report"}, out.stdout  # the stages reading evaluate.*
    assert yaml.safe_load((project / "params.yaml").read_text())["evaluate"]["agent_episodes"] == 2
    results = json.loads((project / "data" / "evaluate" / "results.json").read_text())
    assert results and all(r["episodes"] == 2 for r in results), results
    # Each evaluated task's random-action baseline, on the same episode seeds.
    baselines = json.loads((project / "data" / "evaluate" / "baselines.json").read_text())
    assert sorted(b["task"] for b in baselines) == sorted({r["task"] for r in results}), baselines
    assert all(b["policy"] == "random" and b["episodes"] == 2 for b in baselines), baselines
    assert "two-episodes" in sh(project, "dvc", "exp", "ls").stdout
    assert "up to date" in sh(project, "dvc", "status").stdout


def _set_params(project: Path, **sections) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    params.update(sections)
    (project / "params.yaml").write_text(yaml.safe_dump(params))


def test_prior_change_killed_mid_stage_resumes_and_reruns_only_downstream(project):
    stages = [s.name for s in dvc_yaml.active_stages()]
    _set_params(project, prior={"mlp_dim": 48})
    status = json.loads(sh(project, "dvc", "status", "--json").stdout)
    assert set(status) == {"train-videogpt"}, status
    # Kill the whole `dvc repro` process group once the prior has written a checkpoint under the new params.
    proc = subprocess.Popen(
        ["dvc", "repro"],
        cwd=project,
        env=_env(project),
        stdout=subprocess.DEVNULL,  # a pipe nobody reads would fill up and stall dvc
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    checkpoints = project / "data" / "prior"

    def new_prior_checkpoint() -> bool:
        done = [p.parent / "fingerprint.json" for p in checkpoints.rglob("step_*/done")]
        return any(f.exists() and '"mlp_dim": 48' in f.read_text() for f in done)

    deadline = time.time() + 1200
    while time.time() < deadline and proc.poll() is None and not new_prior_checkpoint():
        time.sleep(0.2)
    assert proc.poll() is None, "dvc repro finished before it could be killed mid-stage"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    out = sh(project, "dvc", "repro")
    upstream = set(stages[: stages.index("train-videogpt")])
    assert {"train-videogpt", "train-agent"} <= ran(out.stdout) and not ran(out.stdout) & upstream, out.stdout
    assert "up to date" in sh(project, "dvc", "status").stdout
    # The agents were retrained on the new prior: their checkpoints carry its latest weights' content hash.
    latest = checkpoints / "dmc" / "checkpoints" / (checkpoints / "dmc" / "checkpoints" / "latest").read_text().strip()
    prior_hash = hashlib.sha256((latest / "state.pt").read_bytes()).hexdigest()[:16]
    agents = [f.read_text() for f in (project / "data" / "agents").rglob("checkpoints/step_*/fingerprint.json")]
    assert agents and all(prior_hash in text for text in agents)
    # The runs on the old prior are not deleted: each agent's checkpoints moved to checkpoints/superseded/.
    old = [f.read_text() for f in (project / "data" / "agents").rglob("superseded/step_*/fingerprint.json")]
    assert len(old) >= len(agents) and not any(prior_hash in text for text in old)


def test_prefect_flow_runs_stale_stages_and_dvc_agrees(project, prefect_api, venv_on_path):
    from pipeline.flows import reproduce

    _set_params(project, evaluate={"video_episodes": 0})
    results = reproduce(preset="tiny", project_dir=str(project))
    assert set(results) == {s.name for s in dvc_yaml.active_stages()}
    assert results["report"]["tasks"] >= 1
    # The flow ran the stages through DVC, so DVC's record of what is stale agrees with it.
    assert "up to date" in sh(project, "dvc", "status").stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_served_deployment_runs_when_triggered_through_the_api(project, tmp_path):
    port = _free_port()
    env = _env(project) | {"PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_API_URL": f"http://127.0.0.1:{port}/api"}
    server = subprocess.Popen(
        ["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    served = None
    serve_log = tmp_path / "serve.log"
    try:
        import urllib.request

        deadline = time.time() + 300
        healthy = False
        while not healthy and time.time() < deadline:
            try:
                healthy = urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2).status == 200
            except OSError:
                time.sleep(0.5)
        assert healthy, "the Prefect server did not become healthy"
        served = subprocess.Popen(
            [sys.executable, "-m", "pipeline.serve", "--project-dir", str(project), "--preset", "tiny"],
            cwd=project,
            env=env,
            stdout=serve_log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        trigger = (
            "import time\n"
            "from prefect.deployments import run_deployment\n"
            "from prefect.exceptions import ObjectNotFound\n"
            "for _ in range(300):  # the served process registers its deployments shortly after it starts\n"
            "    try:\n"
            "        run = run_deployment(\n"
            "            'viper-reproduce/reproduce', parameters={'stages': ['collect']}, timeout=600\n"
            "        )\n"
            "        break\n"
            "    except ObjectNotFound:\n"
            "        time.sleep(1)\n"
            "print(run.state.type.value)\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", trigger], cwd=project, env=env, capture_output=True, text=True, timeout=900
        )
        assert out.stdout.strip().endswith("COMPLETED"), out.stdout + out.stderr + serve_log.read_text()
    finally:
        for proc in (served, server):
            if proc is not None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=30)


def test_serve_refuses_an_unknown_preset_or_cron_before_registering(capsys):
    """`python -m pipeline.serve` used to register an unknown preset, and a bad --cron was a pydantic traceback."""
    from pipeline import serve

    with pytest.raises(SystemExit) as exit_:
        serve.main(["--preset", "nosuch"])
    assert exit_.value.code == 2 and "unknown preset 'nosuch'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        serve.main(["--preset", "tiny", "--cron", "bad cron"])
    assert exit_.value.code == 2 and "--cron 'bad cron': not a cron expression" in capsys.readouterr().err
