"""Fast unit tests of the orchestration layer: the generated dvc.yaml, the Prefect tasks' retries and output
streaming, the flows' checks and the deployments' options. End-to-end runs live in test_pipeline.py."""

from __future__ import annotations

import pytest

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
