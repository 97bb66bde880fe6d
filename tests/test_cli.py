"""The `viper` command: help for every stage, `viper config`, error exits (run as a real subprocess)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from viper.cli import STAGES, main
from viper.config import describe_section

REQUIRED = [
    "collect",
    "import",
    "train-tokenizer",
    "tokenize",
    "train-videogpt",
    "score",
    "reward-eval",
    "train-agent",
    "evaluate",
    "report",
]


def viper(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "viper.cli", *args], capture_output=True, text=True, cwd=cwd)


def test_help_lists_every_stage():
    out = viper("--help")
    assert out.returncode == 0, out.stderr
    for name in REQUIRED:
        assert name in STAGES and name in out.stdout


@pytest.mark.parametrize("stage", REQUIRED)
def test_stage_help_lists_options_with_defaults(stage, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([stage, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "--preset" in out and "-S" in out and "--metrics-out" in out
    flat = " ".join(out.split())
    for section in STAGES[stage].sections:
        for key, default, doc in describe_section(section):
            assert f"{key} = {default}" in out and doc in flat, key


def test_unimplemented_or_failing_stage_never_pretends(tmp_path, capsys):
    code = main(["collect", "--preset", "tiny", "-S", "collect.tasks=[dmc/no_such_task]", "-S", f"data_dir={tmp_path}"])
    assert code == 2 and "no_such_task" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["train-agent", "expert"])
def test_a_short_task_name_is_refused_before_anything_runs(tmp_path, capsys, command):
    # Read as a suite, "cartpole_balance" used to send users after a reward model under data/tokenizer/cartpole_balance.
    code = main([command, "--preset", "tiny", "--task", "cartpole_balance", "-S", f"data_dir={tmp_path}"])
    err = capsys.readouterr().err
    assert (
        code == 2
        and "unknown task 'cartpole_balance': expected '<suite>/<task>'" in err
        and "dmc/cartpole_balance" in err
    )
    assert not (tmp_path / "agents").exists()


def test_config_prints_resolved_yaml(tmp_path):
    out = viper("config", "--preset", "tiny", "-S", "prior.layers=3", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    resolved = yaml.safe_load(out.stdout)
    assert resolved["prior"]["layers"] == 3 and resolved["preset"] == "tiny"
    assert set(resolved) >= {"collect", "tokenizer", "prior", "reward", "agent", "evaluate"}


def test_config_unknown_key_fails_naming_it(tmp_path):
    out = viper("config", "-S", "no_such.key=1", cwd=tmp_path)
    assert out.returncode != 0
    assert "no_such.key" in out.stderr or "no_such" in out.stderr
    assert "Traceback" not in out.stderr


def test_config_wrong_type_fails(tmp_path):
    out = viper("config", "-S", "prior.layers=deep", cwd=tmp_path)
    assert out.returncode == 2 and "prior.layers='deep': expected int" in out.stderr


def test_params_file_errors_name_the_file(tmp_path, capsys):
    """A named --params that is missing (a typo used to run the demo defaults), a directory, or broken YAML:
    one line naming it, no traceback; without --params a missing ./params.yaml still means defaults."""
    assert main(["config", "--params", str(tmp_path / "myexp.yaml")]) == 2
    assert "myexp.yaml: no such file" in capsys.readouterr().err
    assert main(["config", "--params", str(tmp_path)]) == 2
    assert "found a directory" in capsys.readouterr().err
    (tmp_path / "bad.yaml").write_text("prior:\n  layers: [1,\n")
    assert main(["config", "--params", str(tmp_path / "bad.yaml")]) == 2
    assert "bad.yaml: not valid YAML" in capsys.readouterr().err
    out = viper("config", cwd=tmp_path)
    assert out.returncode == 0 and yaml.safe_load(out.stdout)["preset"] == "demo"


def test_metrics_out_directory_is_refused_before_the_stage_runs(tmp_path, capsys):
    code = main(["collect", "--preset", "tiny", "-S", f"data_dir={tmp_path}", "--metrics-out", str(tmp_path)])
    assert code == 2 and "--metrics-out" in capsys.readouterr().err
    assert not (tmp_path / "videos").exists()


def test_a_negative_seed_flag_is_refused_naming_it(tmp_path, capsys):
    code = main(["train-agent", "--preset", "tiny", "--seed", "-1", "-S", f"data_dir={tmp_path}"])
    assert code == 2 and "--seed -1: expected an int >= 0" in capsys.readouterr().err


def test_a_data_dir_that_is_a_file_is_refused_on_load(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("")
    assert main(["config", "-S", f"data_dir={tmp_path / 'notes.txt'}"]) == 2
    assert "notes.txt': is a file; expected the folder the stages write under" in capsys.readouterr().err
