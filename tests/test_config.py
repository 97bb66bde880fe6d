"""The config loader: preset order, params.yaml, -S overrides, strict key and type errors, frozen configs."""

from __future__ import annotations

import dataclasses
import re

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from viper import config as C
from viper.presets import PRESETS


def test_defaults_are_the_published_dmc_settings():
    cfg = C.load(preset="paper_dmc", params_path=None)
    assert cfg.tokenizer.codebook_size == 256 and cfg.tokenizer.channel_mult == (1, 2, 2, 2)
    assert (cfg.prior.d_model, cfg.prior.layers, cfg.prior.seq_len, cfg.prior.frame_skip) == (256, 8, 16, 1)
    assert cfg.reward.mode == "joint"
    assert cfg.agent.train_ratio == 64.0 and cfg.agent.actor_lr == 3e-5
    assert len(cfg.collect.tasks) == 17


def test_preset_is_a_partial_override():
    cfg = C.load(preset="paper_atari", params_path=None)
    assert cfg.tokenizer.codebook_size == 1024 and cfg.tokenizer.channel_mult == (1, 2, 2)
    # Keys the preset does not name keep their defaults.
    assert cfg.tokenizer.base_channels == C.TokenizerConfig().base_channels
    assert cfg.prior.layers == 8
    # The published Atari curves' 10M frames, at its action repeat (the DMC default's 5M steps made 20M here).
    assert cfg.agent.env_steps * cfg.agent.action_repeat == 10_000_000


def test_presets_apply_in_order():
    assert C.load(preset="demo,size_s", params_path=None).agent.size == "S"
    assert C.load(preset="size_s,demo", params_path=None).agent.size == "tiny"


def test_resolution_order_params_then_overrides(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"preset": "tiny", "prior": {"layers": 3, "heads": 4}}))
    cfg = C.load(overrides=["prior.layers=5"], params_path=params)
    assert cfg.preset == "tiny"
    assert cfg.prior.layers == 5  # -S beats params.yaml
    assert cfg.prior.heads == 4  # params.yaml beats the preset
    assert cfg.prior.d_model == PRESETS["tiny"]["prior"]["d_model"]  # preset beats defaults
    # An explicit --preset replaces params.yaml's; `-S preset=...` (dvc exp run) does too.
    assert C.load(preset="demo", params_path=params).preset == "demo"
    assert C.load(overrides=["preset=paper_dmc"], params_path=params).preset == "paper_dmc"


@pytest.mark.parametrize(
    ("text", "key", "value"),
    [
        ("prior.layers=4", "prior.layers", 4),
        ("reward.mode=conditional", "reward.mode", "conditional"),
        ("agent.seeds=[0, 1]", "agent.seeds", [0, 1]),
        ("tokenizer.lr=3e-4", "tokenizer.lr", 3e-4),
        ("tokenizer.compile=true", "tokenizer.compile", True),
        ("collect.policy=noisy:0.5", "collect.policy", "noisy:0.5"),
        ("tokenizer.lpips_weights_path=", "tokenizer.lpips_weights_path", ""),
        ("++prior.layers=4", "prior.layers", 4),  # Hydra's add-or-override, as `dvc exp run -S` needs
        ("+prior.layers=4", "prior.layers", 4),
    ],
)
def test_override_parsing(text, key, value):
    assert C.parse_override(text) == (key, value)


def test_overrides_are_typed():
    cfg = C.load("tiny", ["agent.seeds=[0, 1]", "tokenizer.lr=1", "prior.dropout=0"], params_path=None)
    assert cfg.agent.seeds == (0, 1)
    assert isinstance(cfg.tokenizer.lr, float) and cfg.tokenizer.lr == 1.0


def test_unknown_key_error_names_key_and_allowed():
    with pytest.raises(C.ConfigError) as err:
        C.load("tiny", ["prior.no_such_key=1"], params_path=None)
    assert "prior.no_such_key" in str(err.value) and "d_model" in str(err.value)
    with pytest.raises(C.ConfigError, match="no_such") as err:
        C.load("tiny", ["no_such.key=1"], params_path=None)
    assert "allowed keys" in str(err.value) and "tokenizer" in str(err.value)


def test_unknown_key_in_params_file_names_the_file(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("preset: tiny\ncollect:\n  episode: 3\n")
    with pytest.raises(C.ConfigError, match=r"params\.yaml.*collect\.episode"):
        C.load(params_path=params)


def test_a_bad_value_or_preset_in_the_params_file_names_the_file(tmp_path):
    """Type and range errors named the key but not where it was set; a -S override names itself."""
    params = tmp_path / "p.yaml"
    params.write_text("preset: tiny\nprior:\n  layers: three\n")
    with pytest.raises(C.ConfigError) as exc:
        C.load(params_path=params)
    assert str(exc.value) == f"{params}: prior.layers='three': expected int, got str"
    with pytest.raises(C.ConfigError) as exc:  # the override wins, and it is the one that is wrong
        C.load(overrides=["prior.layers=four"], params_path=params)
    assert str(exc.value) == "prior.layers='four': expected int, got str"
    assert C.load(overrides=["prior.layers=4"], params_path=params).prior.layers == 4
    params.write_text("preset: nope\n")
    with pytest.raises(C.ConfigError, match=rf"^{re.escape(str(params))}: unknown preset 'nope'; known presets:"):
        C.load(params_path=params)


def test_an_empty_data_dir_is_refused():
    """It used to load and make every stage read and write the working directory."""
    with pytest.raises(C.ConfigError, match="^data_dir='': expected the folder the stages write under"):
        C.load(overrides=["data_dir="], params_path=None)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("prior.layers=four", "prior.layers='four': expected int, got str"),
        ("prior.layers=2.5", "prior.layers=2.5: expected int, got float"),
        ("prior.class_conditional=1", "prior.class_conditional=1: expected bool, got int"),
        ("agent.seeds=3", "agent.seeds=3: expected list of int, got int"),
        ("agent.seeds=[0, x]", "agent.seeds[1]='x': expected int, got str"),
        ("prior.layers=true", "prior.layers=True: expected int, got bool"),
        ("reward.device=3", "reward.device=3: expected str, got int"),
        ("reward.mode=3", "reward.mode=3: expected one of joint, conditional"),
        # Fixed sets of values are checked on load, before a stage sees (and supersedes) its old checkpoints.
        ("agent.size=xs", "agent.size='xs': expected one of tiny, XS, S, M, L, XL"),
        ("agent.reward=viperr", "agent.reward='viperr': expected one of task, viper"),
        # Numbers out of range are refused on load too (a negative step count used to train nothing, silently).
        ("agent.env_steps=-5", "agent.env_steps=-5: expected int >= 1"),
        ("agent.model_lr=.nan", "agent.model_lr=nan: expected float >= 0"),
        ("prior.layers=0", "prior.layers=0: expected int >= 1"),
        ("prior.layers=-1", "prior.layers=-1: expected int >= 1"),  # the field's own bound, not ">= 0"
        ("agent.discount_horizon=.nan", "agent.discount_horizon=nan: expected float > 1"),
        ("prior.picture_windows_per_task=0", "prior.picture_windows_per_task=0: expected int >= 1"),
        ("agent.discount_horizon=0.5", "agent.discount_horizon=0.5: expected float > 1"),
        ("agent.discount_horizon=1", "agent.discount_horizon=1.0: expected float > 1"),
        ("agent.disag_models=1", "agent.disag_models=1: expected int >= 2"),
        # Devices are named as torch does (a bad name was a raw torch error mid-stage), and settings that do
        # not fit together are refused on load too.
        ("agent.device=gpu", "agent.device='gpu': expected str (auto, cpu, mps, cuda or cuda:<i>)"),
        ("reward.device=cuda:x", "reward.device='cuda:x': expected str (auto, cpu, mps, cuda or cuda:<i>)"),
        ("prior.heads=3", "prior.heads=3 must divide prior.d_model=32 (each head gets d_model / heads)"),
        ("agent.seeds=[]", "agent.seeds=[]: expected at least one entry (an empty list ran nothing, silently)"),
        ("collect.tasks=[]", "collect.tasks=[]: expected at least one entry (an empty list ran nothing, silently)"),
        (
            "tokenizer.channel_mult=[]",
            "tokenizer.channel_mult=[]: expected 1 to 7 entries (64x64 frames halve len - 1 times to the token grid, "
            "e.g. [1, 2, 2, 2] -> 8x8)",
        ),
        ("collect.test_fraction=1.5", "collect.test_fraction=1.5: expected float in [0, 1]"),
        ("collect.keep_return_percentile=101", "collect.keep_return_percentile=101.0: expected float in [0, 100]"),
        ("tokenizer.channel_mult=[1, 0]", "tokenizer.channel_mult[1]=0: expected int >= 1"),
        ("evaluate.noisy_epsilons=[0.5, 2]", "evaluate.noisy_epsilons[1]=2.0: expected float in [0, 1]"),
    ],
)
def test_type_error_text(override, expected):
    with pytest.raises(C.ConfigError) as err:
        C.load("tiny", [override], params_path=None)
    assert str(err.value) == expected


def test_task_names_are_checked_on_load():
    """A short or misspelt task fails when the config loads, naming the key and the known tasks."""
    with pytest.raises(
        C.ConfigError, match=r"agent.tasks\[0\]='cartpole_balance': expected one of .*dmc/cartpole_balance"
    ):
        C.load("tiny", ["agent.tasks=[cartpole_balance]"], params_path=None)
    with pytest.raises(C.ConfigError, match=r"collect.tasks\[1\]='atari/pongg': expected one of .*atari/pong,"):
        C.load("tiny", ["collect.tasks=[dmc/cartpole_balance, atari/pongg]"], params_path=None)
    task_reward = ["agent.reward=task", "agent.tasks=[atari/pong]"]  # with reward viper: only collected tasks
    assert C.load("tiny", task_reward, params_path=None).agent.tasks == ("atari/pong",)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        # Each used to fail only in collect, after the expert stage (viper/cli.py: an error for the commands
        # that read collect.tasks, a note for those that read the suite alone).
        (
            ["collect.suite=atari"],
            "collect.tasks=['dmc/cartpole_balance', 'dmc/cartpole_swingup'] with collect.suite='atari': "
            "dmc/cartpole_balance, dmc/cartpole_swingup are not in that suite; expected only atari/<task> tasks "
            "(the suite names the one video store they are written to)",
        ),
        (
            ["collect.tasks=[dmc/cartpole_balance, atari/pong]"],
            "collect.tasks=['dmc/cartpole_balance', 'atari/pong'] with collect.suite='dmc': atari/pong is not in "
            "that suite; expected only dmc/<task> tasks (the suite names the one video store they are written to)",
        ),
    ],
)
def test_collect_tasks_outside_the_suite_are_named(overrides, expected):
    assert C.stray_collect_tasks(C.load("demo", overrides, params_path=None)) == expected
    assert C.stray_collect_tasks(C.load("demo", [], params_path=None)) is None


def test_agent_tasks_outside_the_collected_ones_are_named_for_the_viper_reward_only():
    """The rule train-agent applies (viper/cli.py: an error there, a note elsewhere): with the VIPER reward every
    agent task must be a collected one; the task reward, or a --task that was collected, is fine."""
    cfg = C.load("demo", ["agent.tasks=[dmc/walker_walk]"], params_path=None)  # loads: only train-agent needs it
    assert C.uncollected_agent_tasks(cfg, "viper") == (
        "agent.tasks=['dmc/walker_walk'] with agent.reward='viper': dmc/walker_walk not in "
        "collect.tasks=['dmc/cartpole_balance', 'dmc/cartpole_swingup']; expected agent.tasks within collect.tasks "
        "(the VIPER reward model learns only the collected tasks): add them to collect.tasks, narrow agent.tasks, "
        "or set agent.reward=task"
    )
    assert C.uncollected_agent_tasks(cfg, "task") is None
    assert C.uncollected_agent_tasks(cfg, "viper", "dmc/cartpole_swingup") is None
    # A task named by train-agent --task: the message names the flag, not agent.tasks (which it replaced).
    assert C.uncollected_agent_tasks(cfg, "viper", "dmc/cheetah_run").startswith(
        "--task dmc/cheetah_run with reward viper: not in collect.tasks=['dmc/cartpole_balance', "
    )


def test_cross_section_rules_leave_consistent_settings_alone():
    # The task reward needs no reward model, so any task goes; a collected task is fine with reward viper.
    task_reward = C.load("demo", ["agent.tasks=[dmc/walker_walk]", "agent.reward=task"], params_path=None)
    assert task_reward.agent.tasks == ("dmc/walker_walk",)
    assert C.load("demo", ["agent.tasks=[dmc/cartpole_swingup]"], params_path=None).agent.reward == "viper"
    both = ["collect.tasks=[dmc/walker_walk]", "agent.tasks=[dmc/walker_walk]"]
    assert C.load("demo", both, params_path=None).collect.tasks == ("dmc/walker_walk",)


@pytest.mark.parametrize(
    "names",
    # Every combination README.md, the Makefile, params.yaml, benchmarks/ and the tests use, and every preset.
    [*PRESETS, "demo,cpu_agent", "demo,cpu_agent_xs", "demo,size_xs", "demo,size_s", "size_s,demo"]
    + ["tiny,published", "paper_dmc,published", "paper_atari,published"],
)
def test_presets_and_their_documented_combinations_load(names):
    assert C.load(names, params_path=None).preset == names


@pytest.mark.parametrize("source", ["--preset", "-S preset", "params.yaml"])
@pytest.mark.parametrize("empty", ["", " ", ","])
def test_an_empty_preset_is_refused_not_read_as_the_defaults(tmp_path, source, empty):
    """An empty name used to select the bare defaults (the paper's full-size settings) without a word."""
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"preset": empty if source == "params.yaml" else "tiny"}))
    with pytest.raises(C.ConfigError) as err:
        if source == "--preset":
            C.load(empty, params_path=params)
        elif source == "-S preset":
            C.load(overrides=[f"preset='{empty}'"], params_path=params)
        else:
            C.load(params_path=params)
    assert str(err.value) == (
        f"preset={empty!r}: expected at least one preset name; known presets: {', '.join(sorted(PRESETS))} "
        "(paper_dmc is the bare defaults)"
    )


def test_top_level_keys_are_described_for_help():
    rows = {key: (default, doc) for key, default, doc in C.describe_top_level()}
    assert set(rows) == set(C.TOP_LEVEL_KEYS)
    assert rows["data_dir"][0] == "data" and "Root of every output" in rows["data_dir"][1]


def test_unknown_preset_and_bad_override_syntax():
    with pytest.raises(C.ConfigError, match="unknown preset 'huge'.*demo"):
        C.load("huge", params_path=None)
    with pytest.raises(C.ConfigError, match="expected section.key=value"):
        C.load("tiny", ["prior.layers"], params_path=None)
    with pytest.raises(C.ConfigError, match="'prior' is a section"):
        C.load("tiny", ["prior=3"], params_path=None)


def test_configs_are_frozen():
    cfg = C.load("tiny", params_path=None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.prior.layers = 3  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.prior = C.PriorConfig()  # type: ignore[misc]


def test_every_preset_resolves_and_round_trips():
    for name in PRESETS:
        cfg = C.load(name, params_path=None)
        assert C.build(yaml.safe_load(yaml.safe_dump(cfg.to_dict()))) == cfg


def test_every_field_has_a_docstring():
    for name, cls in C.SECTION_TYPES.items():
        docs = C.field_docs(cls)
        missing = [f.name for f in dataclasses.fields(cls) if not docs.get(f.name)]
        assert not missing, f"{name}: fields without a docstring: {missing}"


REAL_KEYS = [f"{name}.{f.name}" for name, cls in C.SECTION_TYPES.items() for f in dataclasses.fields(cls)]
VALUES = st.one_of(
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=10),
    st.booleans(),
    st.lists(st.integers(-3, 3), max_size=3),
)


@given(st.one_of(st.text(min_size=1, max_size=30), st.sampled_from(REAL_KEYS)), VALUES)
def test_fuzzed_overrides_raise_only_config_errors(key, value):
    """Real keys too (random text alone reached only the unknown-key error): their values' parsing and range
    checks end in a config or in a ConfigError naming the key, never in another exception."""
    try:
        C.load("tiny", [f"{key}={value}"], params_path=None)
    except C.ConfigError as exc:
        assert str(exc)
        if key in REAL_KEYS:
            assert key in str(exc), (key, str(exc))
