"""Typed, frozen configuration: one dataclass per stage, presets as partial overrides, strict loading.

The stage sections (``CollectConfig`` ... ``EvaluateConfig``) live in ``viper.sections`` and the task lists in
``viper.fields`` (with the per-value checks), re-exported here; this module holds the whole ``Config`` and the loader.

Resolution order (later wins):
  1. the dataclass defaults in ``viper.sections`` (the published code's settings: viper_rl's ``viper_rl/configs``),
  2. the named preset(s) from ``viper.presets`` in the order given (``--preset demo`` or ``tiny,size_xs``),
  3. the per-section overrides written in ``params.yaml`` (besides its ``preset:`` key),
  4. ``-S section.key=value`` overrides from the command line (DVC's syntax; values parsed as YAML).

Unknown sections or keys, values of the wrong type and numbers out of their field's range (never negative; see
``viper.sections``) raise ``ConfigError`` naming the key, the value and what is allowed. Units are part of field
names: ``env_steps`` are agent steps after action repeat, ``frames`` are rendered images, ``grad_steps`` are
optimiser updates.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from viper.fields import ATARI_TASKS, DMC_TASKS, ConfigError, check_value, scientific
from viper.sections import (
    AgentConfig,
    CollectConfig,
    EvaluateConfig,
    PriorConfig,
    RewardConfig,
    TokenizerConfig,
)

__all__ = [
    "ATARI_TASKS",
    "DMC_TASKS",
    "AgentConfig",
    "CollectConfig",
    "Config",
    "ConfigError",
    "EvaluateConfig",
    "PriorConfig",
    "RewardConfig",
    "TokenizerConfig",
    "load",
]


@dataclass(frozen=True)
class Config:
    """The fully resolved configuration: one section per stage."""

    preset: str = "demo"
    """Preset(s) applied over the defaults, comma-separated, in order: ``--preset``, or ``-S preset=...``, which wins
    over it; default: params.yaml's ``preset:``, else demo."""
    data_dir: str = "data"
    """Root of every output (stores, checkpoints, metrics, plots, reports)."""
    collect: CollectConfig = field(default_factory=CollectConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    prior: PriorConfig = field(default_factory=PriorConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (tuples as lists), as written to YAML."""
        return _plain(dataclasses.asdict(self))


SECTION_TYPES: dict[str, type] = {
    "collect": CollectConfig,
    "tokenizer": TokenizerConfig,
    "prior": PriorConfig,
    "reward": RewardConfig,
    "agent": AgentConfig,
    "evaluate": EvaluateConfig,
}
TOP_LEVEL_KEYS = ("preset", "data_dir")


def load(
    preset: str | None = None,
    overrides: typing.Sequence[str] = (),
    params_path: str | Path | None = "params.yaml",
) -> Config:
    """Resolve the configuration: defaults, then presets, then params.yaml sections, then ``-S`` overrides.

    ``preset`` (comma-separated names) replaces params.yaml's ``preset:`` when given. A missing params.yaml
    is fine (defaults and presets only); ``params_path=None`` skips it.
    """
    from viper.presets import PRESETS

    params: dict[str, Any] = {}
    if params_path is not None and Path(params_path).exists():
        if not Path(params_path).is_file():
            raise ConfigError(f"{params_path}: expected a YAML params file, found a directory")
        try:
            params = yaml.safe_load(Path(params_path).read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{params_path}: not valid YAML ({' '.join(str(exc).split())})") from None
        if not isinstance(params, dict):
            raise ConfigError(f"{params_path}: expected a mapping of sections, got {type(params).__name__}")
    tree = Config().to_dict()
    parsed = [parse_override(o) for o in overrides]
    # A `-S preset=...` override selects presets too (that is how `dvc exp run -S preset=tiny` reaches us).
    cli_preset = [v for k, v in parsed if k == "preset"]
    names = cli_preset[-1] if cli_preset else preset if preset is not None else params.get("preset", "demo")
    named_in = "" if cli_preset or preset is not None or "preset" not in params else f"{params_path}: "
    if not isinstance(names, str):
        raise ConfigError(f"{named_in}preset: expected a preset name (str), got {names!r}")
    chosen = [n.strip() for n in names.split(",") if n.strip()]
    if not chosen:  # an empty name used to select the bare defaults, the full paper settings, silently
        raise ConfigError(
            f"preset={names!r}: expected at least one preset name; known presets: {', '.join(sorted(PRESETS))} "
            "(paper_dmc is the bare defaults)"
        )
    for name in chosen:
        if name not in PRESETS:
            raise ConfigError(f"{named_in}unknown preset {name!r}; known presets: {', '.join(sorted(PRESETS))}")
        _merge(tree, PRESETS[name], source=f"preset {name!r}")
    tree["preset"] = names
    origins: dict[str, str] = {}  # dotted key -> the params file or override that set it last
    _merge(tree, {k: v for k, v in params.items() if k != "preset"}, source=str(params_path), origins=origins)
    for key, value in parsed:
        if key != "preset":
            _merge(tree, _nest(key, value), source=f"override -S {key}", origins=origins)
    try:
        return build(tree)
    except ConfigError as exc:
        # A bad value names its key; a value from params.yaml also names the file (an override names itself).
        message = str(exc)
        source = next((src for key, src in origins.items() if _names_key(message, key)), None)
        if source is None or source.startswith("override"):
            raise
        raise ConfigError(f"{source}: {message}") from None


def _names_key(message: str, key: str) -> bool:
    """Whether a ``ConfigError`` message is about ``key`` (it starts ``key=`` or ``key[i]=``)."""
    return message.startswith((f"{key}=", f"{key}["))


def parse_override(text: str) -> tuple[str, Any]:
    """``"prior.layers=4"`` -> ``("prior.layers", 4)``; the value is parsed as YAML, as DVC does.

    A leading ``+`` or ``++`` (Hydra's add / add-or-override, which ``dvc exp run -S`` needs for keys that
    params.yaml does not list yet) is accepted and means the same here, so one override works in both places.
    """
    key, sep, raw = text.partition("=")
    key = key.strip().removeprefix("++").removeprefix("+")
    if not sep or not key:
        raise ConfigError(f"override {text!r}: expected section.key=value, e.g. prior.layers=4")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc.__class__.__name__})") from exc
    return key, scientific(value)


def build(tree: dict[str, Any]) -> Config:
    """Typed ``Config`` from a nested dict; every value is checked against its field's type."""
    sections = {}
    for name, cls in SECTION_TYPES.items():
        sections[name] = _build_section(cls, name, tree.get(name, {}))
    top = {k: check_value(f"{k}", tree[k], str) for k in TOP_LEVEL_KEYS if k in tree}
    if "data_dir" in top and not top["data_dir"].strip():
        raise ConfigError(f"data_dir={top['data_dir']!r}: expected the folder the stages write under, e.g. data")
    if "data_dir" in top and Path(top["data_dir"]).exists() and not Path(top["data_dir"]).is_dir():
        raise ConfigError(f"data_dir={top['data_dir']!r}: is a file; expected the folder the stages write under")
    _check_together(sections)
    return Config(**top, **sections)


def _check_together(sections: dict[str, Any]) -> None:
    """Settings valid one by one that do not fit together, refused on load (they failed mid-stage)."""
    prior, tokenizer, collect, agent = sections["prior"], sections["tokenizer"], sections["collect"], sections["agent"]
    for key, values in (
        ("collect.tasks", collect.tasks),
        ("agent.tasks", agent.tasks),
        ("agent.seeds", agent.seeds),
    ):
        if not values:
            raise ConfigError(f"{key}=[]: expected at least one entry (an empty list ran nothing, silently)")
    if prior.d_model % prior.heads:
        raise ConfigError(
            f"prior.heads={prior.heads} must divide prior.d_model={prior.d_model} (each head gets d_model / heads)"
        )
    labels = [f"{eps:g}" for eps in sections["evaluate"].noisy_epsilons]
    if len(set(labels)) < len(labels):  # each names a category (noisy:<eps>): two with one name would merge
        raise ConfigError(
            f"evaluate.noisy_epsilons={list(sections['evaluate'].noisy_epsilons)}: two values print alike "
            f"({', '.join(labels)}); expected distinct values to 6 significant digits"
        )
    if not 1 <= len(tokenizer.channel_mult) <= 7:
        raise ConfigError(
            f"tokenizer.channel_mult={list(tokenizer.channel_mult)}: expected 1 to 7 entries (64x64 frames halve "
            "len - 1 times to the token grid, e.g. [1, 2, 2, 2] -> 8x8)"
        )


def stray_collect_tasks(cfg: Config) -> str | None:
    """Why ``collect.tasks`` do not fit ``collect.suite``, or None: one store per suite (collect refused a stray
    task only after the expert stage had run). Not a load error: commands that read the suite alone (import,
    inspect, export, tokenize, score) need no matching task list."""
    collect = cfg.collect
    strays = [task for task in collect.tasks if task.partition("/")[0] != collect.suite]
    if not strays:
        return None
    return (
        f"collect.tasks={list(collect.tasks)} with collect.suite={collect.suite!r}: {', '.join(strays)} "
        f"{'is' if len(strays) == 1 else 'are'} not in that suite; expected only {collect.suite}/<task> tasks "
        "(the suite names the one video store they are written to)"
    )


def uncollected_agent_tasks(cfg: Config, reward: str, task: str | None = None) -> str | None:
    """Why ``task`` (``train-agent --task``; default ``agent.tasks``) cannot train on ``reward``, or None: the VIPER
    reward model learns the collected tasks only, and ``train-agent`` found that out only after collect, the
    tokenizer and the prior had run (``VideoReward.task_id``). Not a load error: stages that never read the agent
    (an import, a tokenizer for ``-S collect.tasks=[...]`` of one's own videos) must not need ``agent.tasks``
    narrowed as well."""
    tasks = cfg.agent.tasks if task is None else (task,)
    unknown = [name for name in tasks if name not in cfg.collect.tasks]
    if reward != "viper" or not unknown:
        return None
    if task is not None:
        return (
            f"--task {task} with reward viper: not in collect.tasks={list(cfg.collect.tasks)}; expected a collected "
            "task (the VIPER reward model learns only the collected tasks): add it to collect.tasks, or train on "
            "the task reward (--reward task)"
        )
    return (
        f"agent.tasks={list(tasks)} with agent.reward='viper': {', '.join(unknown)} not in "
        f"collect.tasks={list(cfg.collect.tasks)}; expected agent.tasks within collect.tasks (the VIPER reward "
        "model learns only the collected tasks): add them to collect.tasks, narrow agent.tasks, or set "
        "agent.reward=task"
    )


def override(cfg: Config, section: str, values: dict[str, Any], flags: dict[str, str] | None = None) -> Config:
    """``cfg`` with fields of ``section`` set to ``values`` (a command's flags), each checked as a loaded value
    is: a ``ConfigError`` names ``section.key``, the value and what is allowed, after the flag ``flags[key]``
    (with the value as typed) where the value came from one."""
    hints = typing.get_type_hints(SECTION_TYPES[section], include_extras=True)
    flags = flags or {}
    checked = {}
    for key, value in values.items():
        try:
            checked[key] = check_value(f"{section}.{key}", value, hints[key])
        except ConfigError as exc:
            if key not in flags:
                raise
            raise ConfigError(f"{flags[key]}: {exc}") from None
    return dataclasses.replace(cfg, **{section: dataclasses.replace(getattr(cfg, section), **checked)})


def field_docs(cls: type) -> dict[str, str]:
    """Field name -> the one-line docstring written under it in the class body."""
    import ast
    import inspect
    import textwrap

    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
    docs = {}
    for node, after in zip(body, body[1:], strict=False):
        named = isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
        if named and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant):
            docs[node.target.id] = " ".join(str(after.value.value).split())
    return docs


def describe_section(name: str) -> list[tuple[str, str, str]]:
    """``(section.key, default as YAML, docstring)`` rows for a section's --help."""
    cls = SECTION_TYPES[name]
    docs = field_docs(cls)
    default = dataclasses.asdict(cls())
    return [
        (
            f"{name}.{f.name}",
            yaml.safe_dump(_plain(default[f.name]), default_flow_style=True).strip().removesuffix("...").strip(),
            docs.get(f.name, ""),
        )
        for f in dataclasses.fields(cls)
    ]


def describe_top_level() -> list[tuple[str, str, str]]:
    """``(key, default, docstring)`` rows of the keys outside the sections (``preset``, ``data_dir``)."""
    docs, default = field_docs(Config), Config()
    return [(key, str(getattr(default, key)), docs.get(key, "")) for key in TOP_LEVEL_KEYS]


def _build_section(cls: type, name: str, values: dict[str, Any]) -> Any:
    hints = typing.get_type_hints(cls, include_extras=True)
    kwargs = {key: check_value(f"{name}.{key}", value, hints[key]) for key, value in values.items()}
    return cls(**kwargs)


def _merge(
    tree: dict[str, Any], update: dict[str, Any], source: str, origins: dict[str, str] | None = None, prefix: str = ""
) -> None:
    """Deep-merge ``update`` into ``tree``, refusing keys the tree does not have; ``origins`` records ``source``
    for each dotted key set."""
    if not isinstance(update, dict):
        raise ConfigError(f"{source}: expected a mapping, got {update!r}")
    for key, value in update.items():
        if key not in tree:
            raise ConfigError(f"{source}: unknown key {key!r}; allowed keys: {', '.join(tree)}")
        if isinstance(tree[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: {key!r} is a section; expected a mapping of its keys, got {value!r}")
            try:
                _merge(tree[key], value, source, origins, f"{prefix}{key}.")
            except ConfigError as exc:
                # Re-raise with the dotted path so the message names `section.key`.
                raise ConfigError(str(exc).replace("unknown key '", f"unknown key '{key}.", 1)) from None
        else:
            tree[key] = value
            if origins is not None:
                origins[f"{prefix}{key}"] = source


def _nest(dotted: str, value: Any) -> dict[str, Any]:
    out: Any = value
    for part in reversed(dotted.split(".")):
        out = {part: out}
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
