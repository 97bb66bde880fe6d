"""The `viper` command: help for every stage, `viper config`, error exits (run as a real subprocess)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from viper.cli import STAGES

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
def test_stage_help_lists_options_with_defaults(stage):
    out = viper(stage, "--help")
    assert out.returncode == 0, out.stderr
    assert "--preset" in out.stdout and "-S" in out.stdout
    for section in STAGES[stage].sections:
        assert f"{section}." in out.stdout


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
