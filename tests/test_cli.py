"""The `viper` command: help for every stage, `viper config`, error exits (run as a real subprocess)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from viper import stages as dvc_stages
from viper.cli import STAGES, main
from viper.config import describe_section, describe_top_level
from viper.errors import ViperError

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


@pytest.mark.parametrize("spec", dvc_stages.STAGES, ids=lambda spec: spec.name)
def test_stage_help_lists_the_sections_dvc_tracks_and_the_top_level_keys(spec, capsys):
    """A stage's --help lists what it reads: its params in viper/stages.py (dvc.yaml's), e.g. train-tokenizer's
    collect section, and data_dir / preset (the help used to list one or two sections of them)."""
    with pytest.raises(SystemExit):
        main([spec.command, "--help"])
    out = capsys.readouterr().out
    for section in spec.sections:
        for key, default, _ in describe_section(section):
            assert f"  {key} = {default}" in out, (spec.command, key)
    for key, default, _ in describe_top_level():
        assert f"  {key} = {default}" in out, (spec.command, key)
    assert STAGES[spec.command].sections == spec.sections


def test_config_help_lists_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["config", "--help"])
    out = capsys.readouterr().out
    assert "A `-S preset=...` (DVC's form) wins over --preset" in " ".join(out.split())
    for section in ("collect", "tokenizer", "prior", "reward", "agent", "evaluate"):
        assert all(f"  {key} = {default}" in out for key, default, _ in describe_section(section)), section
    assert all(f"  {key} = {default}" in out for key, default, _ in describe_top_level())


@pytest.mark.parametrize(
    ("policy", "reason"),
    [
        ("noisy:2", "epsilon must be in [0, 1], got 2.0"),
        ("noisy:often", "epsilon 'often' is not a number; expected 'expert', 'random'"),
        ("noisy:0.5:random", "only a checkpoint agent takes noise this way"),
        ("bogus", "unknown policy; expected 'expert', 'random', 'noisy:<epsilon in [0, 1]>[:checkpoint:<path>]'"),
    ],
)
def test_a_bad_collect_policy_is_refused_on_load_as_collect_would(capsys, policy, reason):
    """Policies were parsed only inside collect (after the expert stage); the reason is the one collect gives."""
    from viper.experts.policies import make_policy

    assert main(["config", "--preset", "tiny", "-S", f"collect.policy={policy}"]) == 2
    err = capsys.readouterr().err
    assert f"viper config: error: collect.policy={policy!r}: {reason}" in err
    with pytest.raises(ViperError) as collect_says:
        make_policy(policy, "dmc/cartpole_balance", env=None, seed=0)
    assert reason in str(collect_says.value)


def test_a_bad_collect_policy_flag_is_refused_before_anything_starts(tmp_path, capsys):
    """``viper collect --policy`` gets the same check as ``collect.policy`` on load, naming the flag."""
    assert main(["collect", "--preset", "tiny", "-S", f"data_dir={tmp_path}", "--policy", "noisy:2"]) == 2
    captured = capsys.readouterr()
    assert "viper collect: error: --policy 'noisy:2': epsilon must be in [0, 1], got 2.0" in captured.err
    assert "ep/s" not in captured.err  # no collection progress bar started
    assert not any(tmp_path.iterdir())  # no store, lock or log written


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--task", "dmc/nope"], "--task dmc/nope: collect.tasks[0]='dmc/nope': expected one of dmc/"),
        (["--episodes", "-3"], "--episodes -3: collect.episodes_per_task=-3: expected int >= 1"),
        (["--workers", "0"], "--workers 0: collect.workers=0: expected int >= 1"),
    ],
)
def test_a_bad_collect_flag_is_named_in_the_error(tmp_path, capsys, flags, message):
    """The value came from a flag, so the error names the flag (and the setting it maps onto)."""
    assert main(["collect", "--preset", "tiny", "-S", f"data_dir={tmp_path}", *flags]) == 2
    assert f"viper collect: error: {message}" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        ("dmc/cartpole_swingup:bogus=4.0", "the dmc/cartpole_swingup expert has no setting 'bogus'; settings:"),
        ("dmc/walker_walk:pump_gain=1", "no scripted expert for 'dmc/walker_walk'"),
        ("dmc/cartpole_swingup:pump_gain=abc", "'abc' is not a finite number"),
    ],
)
def test_a_bad_expert_setting_is_refused_before_the_expert_stage_trains(tmp_path, capsys, entry, reason):
    """``collect.expert_settings`` was parsed only when collect ran, after the ``expert`` stage had trained."""
    setting = f"collect.expert_settings=[{entry}]"
    assert main(["expert", "--preset", "tiny", "-S", f"data_dir={tmp_path}", "-S", setting]) == 2
    err = capsys.readouterr().err
    assert f"viper expert: error: collect.expert_settings: expert setting {entry!r}: {reason}" in err
    assert not any(tmp_path.iterdir())  # nothing trained or written
    assert main(["config", "--preset", "tiny", "-S", setting]) == 2
    ok = "collect.expert_settings=[dmc/cartpole_swingup:pump_gain=4.0]"
    assert main(["config", "--preset", "tiny", "-S", ok]) == 0, capsys.readouterr().err


@pytest.mark.parametrize("policy", ["expert", "random", "published", "noisy:0.25", "noisy:0.5:checkpoint:a/b"])
def test_collect_policies_in_every_form_load(capsys, policy):
    assert main(["config", "--preset", "tiny", "-S", f"collect.policy={policy}"]) == 0, capsys.readouterr().err


def test_mismatched_action_repeats_are_noted_when_the_config_loads(capsys):
    """Not an error (imported videos record their own repeat), but train-agent refuses collected ones."""
    assert main(["config", "--preset", "tiny", "-S", "agent.action_repeat=4"]) == 0
    err = capsys.readouterr().err
    assert "note: agent.action_repeat=4 but collect.action_repeat=2: with agent.reward=viper" in err
    assert main(["config", "--preset", "tiny", "-S", "agent.action_repeat=4", "-S", "agent.reward=task"]) == 0
    assert "action_repeat" not in capsys.readouterr().err


def test_agent_tasks_the_reward_model_lacks_stop_train_agent_at_once_and_are_noted_elsewhere(tmp_path, capsys):
    """train-agent with the VIPER reward on a task collect never gathered failed only after collect, the tokenizer
    and the prior had run; now it exits before anything starts. The other commands (the pipeline's first stage, a
    tokenizer for one's own videos with -S collect.tasks) run, with one line saying train-agent will refuse."""
    over = ["--preset", "demo", "-S", f"data_dir={tmp_path}", "-S", "agent.tasks=[dmc/walker_walk]"]
    assert main(["train-agent", *over]) == 2
    assert "error: agent.tasks=['dmc/walker_walk'] with agent.reward='viper': dmc/walker_walk not in" in (
        capsys.readouterr().err
    )
    assert main(["config", *over]) == 0
    assert "note: agent.tasks=['dmc/walker_walk'] with agent.reward='viper'" in capsys.readouterr().err
    assert not (tmp_path / "agents").exists()


def test_collect_tasks_outside_the_suite_stop_the_commands_that_read_them_only(tmp_path, capsys):
    """`viper import atari_videos/ -S collect.suite=atari` (the import's own hint) must not fail over the preset's
    DMC task list, which only the commands that read collect.tasks use."""
    over = ["--preset", "demo", "-S", f"data_dir={tmp_path}", "-S", "collect.suite=atari"]
    assert main(["collect", *over]) == 2
    assert "error: collect.tasks=['dmc/cartpole_balance', 'dmc/cartpole_swingup'] with collect.suite='atari'" in (
        capsys.readouterr().err
    )
    assert main(["inspect", *over]) == 2  # runs, and fails for its own reason: there is no atari store
    err = capsys.readouterr().err
    assert "note: collect.tasks=" in err and "atari.zarr" in err


def test_an_empty_preset_exits_naming_the_presets(capsys):
    assert main(["config", "--preset", ""]) == 2
    assert "preset='': expected at least one preset name; known presets: cpu_agent" in capsys.readouterr().err


def test_an_unknown_flag_names_its_command_and_an_unwritable_metrics_path_fails_before_the_stage(tmp_path, capsys):
    """`viper inspect --bogus` answered with the top level's usage; `--metrics-out` under a file ran the whole stage
    and then lost its exit status to a traceback."""
    with pytest.raises(SystemExit) as exit_:
        main(["inspect", "--bogus"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "viper inspect: error: unrecognized arguments: --bogus" in err, err
    (tmp_path / "file").write_text("")
    args = ["report", "--preset", "tiny", "-S", f"data_dir={tmp_path / 'data'}"]
    assert main([*args, "--metrics-out", str(tmp_path / "file" / "m.json")]) == 2
    assert "--metrics-out" in capsys.readouterr().err and not (tmp_path / "data" / "report").exists()
