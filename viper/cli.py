"""The ``viper`` command: one subcommand per pipeline stage, each a thin caller of a stage module.

Every stage command takes ``--preset P`` and any number of ``-S section.key=value`` overrides (DVC's syntax)
and resolves the configuration the same way (``viper.config.load``). A stage module provides
``add_arguments(parser, command)`` (optional) and ``cli(cfg, args, command)``, which returns the stage's
summary metrics (a flat dict, written by ``--metrics-out`` for DVC) or None; the table below is the only
registry of commands (``viper/stages.py`` declares the DVC stages, and with them the config sections each stage
command reads, which its ``--help`` lists).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import os
import shutil
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import yaml

from viper import config as config_lib
from viper import runtime
from viper import stages as dvc_stages
from viper.errors import Stopped, ViperError
from viper.metrics import write_json
from viper.presets import PRESETS


@dataclass(frozen=True)
class Stage:
    module: str
    """Import path of the module with ``cli(cfg, args)``."""
    summary: str
    """One line for ``viper --help``."""
    sections: tuple[str, ...]
    """Config sections whose options this stage reads (listed in its --help)."""


def _params(command: str) -> tuple[str, ...]:
    """The config sections of the DVC stage that runs ``command``: its params in ``viper/stages.py`` (dvc.yaml's),
    so that --help and DVC's staleness agree on what the stage reads."""
    return next(spec.sections for spec in dvc_stages.STAGES if spec.command == command)


STAGES: dict[str, Stage] = {
    "collect": Stage(
        "viper.data.collect",
        "roll out a policy in each task's env, filter, and write (replace) the task's videos in the video store",
        _params("collect"),
    ),
    "import": Stage(
        "viper.data.importers",
        "import published npz episode folders or HDF5 into the video store",
        ("collect",),
    ),
    "export": Stage("viper.data.importers", "export one task of the video store to HDF5", ("collect",)),
    # The default store is <data_dir>/videos/<collect.suite>.zarr.
    "inspect": Stage("viper.data.inspect", "print a store's tasks, episodes, returns; write a preview", ("collect",)),
    "expert": Stage(
        "viper.agent.commands",
        "train a DreamerV3 expert on the task reward for tasks without a scripted expert",
        _params("expert"),
    ),
    "train-tokenizer": Stage(
        "viper.train.tokenizer", "train the VQ-GAN frame tokenizer on the store", _params("train-tokenizer")
    ),
    "tokenize": Stage(
        "viper.train.tokenize", "encode every stored frame into tokens with the tokenizer", _params("tokenize")
    ),
    "train-videogpt": Stage(
        "viper.train.prior", "train the task-conditioned VideoGPT prior over tokens", _params("train-videogpt")
    ),
    # The prior's settings come from its checkpoint; only the reward section applies.
    "score": Stage("viper.reward.score", "print and plot per-step VIPER rewards of one episode", ("reward",)),
    "reward-eval": Stage(
        "viper.eval.reward_eval",
        "score expert / noisy / random episodes: AUROC, Spearman, scatter plot",
        _params("reward-eval"),
    ),
    "train-agent": Stage(
        "viper.agent.commands", "train a DreamerV3 agent on the VIPER (or task) reward", _params("train-agent")
    ),
    "evaluate": Stage(
        "viper.eval.agent_eval", "roll out trained agents: task and VIPER returns, GIFs", _params("evaluate")
    ),
    "report": Stage(
        "viper.eval.report", "write the Markdown/HTML report beside the published results", _params("report")
    ),
}


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--preset",
        default=None,
        help=f"preset(s) applied over the defaults, comma-separated ({', '.join(PRESETS)}); "
        "default: params.yaml's `preset:`, else demo. A `-S preset=...` (DVC's form) wins over --preset",
    )
    parser.add_argument(
        "-S",
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config value (YAML syntax, repeatable), e.g. -S prior.layers=4",
    )
    parser.add_argument(
        "--params",
        help="params file to read (default: ./params.yaml when it exists; a file named here must exist)",
    )


def _options_epilog(sections: tuple[str, ...]) -> str:
    """The config keys a command reads, with defaults and docstrings: the top-level keys, then ``sections``."""
    lines = []
    blocks = [("config options (-S KEY=VALUE):", config_lib.describe_top_level())]
    blocks += [
        (f"config options (-S {section}.KEY=VALUE; defaults before presets):", config_lib.describe_section(section))
        for section in sections
    ]
    for title, rows in blocks:
        lines.append(title)
        for key, default, doc in rows:
            lines.append(f"  {key} = {default}")
            lines.extend(
                textwrap.wrap(doc, 100, initial_indent="      ", subsequent_indent="      ", break_on_hyphens=False)
            )
    return "\n".join(lines)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The full parser; only ``command``'s stage module is imported (heavy imports stay off ``--help``)."""
    parser = argparse.ArgumentParser(
        prog="viper",
        description="VIPER: video prediction models as rewards for reinforcement learning. "
        "Each command is one pipeline stage; `dvc repro` and the Prefect flows run the same stages.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    cfg_parser = sub.add_parser(
        "config",
        help="print the fully resolved configuration of every stage as YAML",
        description="Print the fully resolved configuration (defaults, presets, params.yaml, -S) as YAML.",
        epilog=_options_epilog(tuple(config_lib.SECTION_TYPES)),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_config_options(cfg_parser)
    dvc_parser = sub.add_parser(
        "dvc-yaml",
        help="write dvc.yaml from the stage table (paths live in Python)",
        description="Write dvc.yaml from the stage table in viper/stages.py: each stage's command, the config "
        "sections it reads (params), the code and data it depends on and what it writes. Run it after changing "
        "which modules a stage imports; tests/test_pipeline.py checks the committed file is current.",
    )
    dvc_parser.add_argument("--output", default="dvc.yaml", help="file to write (default: %(default)s)")
    for name, stage in STAGES.items():
        stage_parser = sub.add_parser(
            name,
            help=stage.summary,
            description=stage.summary[0].upper() + stage.summary[1:] + ".",
            epilog=_options_epilog(stage.sections),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        _add_config_options(stage_parser)
        stage_parser.add_argument(
            "--metrics-out",
            default=None,
            metavar="PATH",
            help="write the stage's summary metrics as JSON here (dvc.yaml uses data/metrics/<stage>.json)",
        )
        module = import_stage(stage) if name == command else None
        if module is not None and hasattr(module, "add_arguments"):
            module.add_arguments(stage_parser, name)
    parser.set_defaults(_commands=sub.choices)  # name -> its parser, for errors in the command's own words
    return parser


def import_stage(stage: Stage):
    """The stage's module, or None when that module (or its package) does not exist yet."""
    try:
        return importlib.import_module(stage.module)
    except ModuleNotFoundError as exc:
        # Only a missing stage module means "not implemented"; a missing dependency inside it (zarr, say) is a real
        # error, which would otherwise drop the stage from dvc.yaml without a word.
        if exc.name is not None and (stage.module == exc.name or stage.module.startswith(exc.name + ".")):
            return None
        raise


def _command_of(argv: list[str]) -> str | None:
    """The subcommand named in ``argv`` (its first positional argument), if it is a stage."""
    first = next((arg for arg in argv if not arg.startswith("-")), None)
    return first if first in STAGES else None


def main(argv: list[str] | None = None) -> int:
    """Run one command; ``argv=None`` means this process's command line (the ``viper`` entry point)."""
    own_process = argv is None
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(_command_of(argv))
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # the command's usage and name, not the top level's `usage: viper [-h] COMMAND ...`
        args._commands[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    if own_process:
        # The allocator settings of viper/runtime.env apply only from a process's start (a no-op when they did).
        runtime.restart_if_needed()
    cfg = None
    try:
        if args.command == "dvc-yaml":
            from viper import dvc_yaml

            dvc_yaml.write(args.output)
            return 0
        if args.params is not None and not Path(args.params).exists():
            raise ViperError(f"--params {args.params}: no such file (leave --params out to use ./params.yaml)")
        cfg = config_lib.load(args.preset, args.overrides, args.params or "params.yaml")
        check_policy(cfg.collect.policy)
        if args.command in EXPERT_SETTINGS_READERS:
            check_expert_settings(cfg.collect.expert_settings)
        _note_overridden_data_dir(args.command, cfg, Path(args.params or "params.yaml"))
        _note_action_repeats(args.command, cfg)
        _check_agent_tasks(args, cfg)
        _check_collect_tasks(args.command, cfg)
        if args.command == "config":
            print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
            return 0
        if getattr(args, "metrics_out", None):
            check_metrics_out(Path(args.metrics_out))
        module = import_stage(STAGES[args.command])
        if module is None or not hasattr(module, "cli"):
            print(f"viper {args.command}: not implemented yet (see the open issues)", file=sys.stderr)
            return 3
        metrics = module.cli(cfg, args, args.command)
        if args.metrics_out:
            write_json(args.metrics_out, metrics or {})
        return 0
    except ViperError as exc:
        print(f"viper {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except Stopped as exc:
        print(f"viper {args.command}: {exc}", file=sys.stderr)
        return 128 + exc.signum
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        print(f"viper {args.command}: error: {_disk_full(exc, cfg)}", file=sys.stderr)
        return 2


def check_metrics_out(path: Path) -> None:
    """``ViperError`` unless ``--metrics-out`` can be written, checked before the stage runs: a path found
    unwritable only when the stage had finished lost its exit status to a traceback."""
    if path.is_dir():
        raise ViperError(f"--metrics-out {path}: is a directory; expected a JSON file path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ViperError(f"--metrics-out {path}: cannot create its folder ({exc.strerror}: {exc.filename})") from None
    if not os.access(path.parent, os.W_OK):
        raise ViperError(f"--metrics-out {path}: its folder {path.parent} is not writable")


def check_policy(policy: str) -> None:
    """``ConfigError`` unless ``collect.policy`` has a form collect accepts, with collect's own message.

    Checked as the configuration loads, not when ``collect`` runs (after the ``expert`` stage). Here rather than
    in ``viper.config``: the parser lives in ``viper.experts.policies``, which every stage would otherwise import.
    """
    kind, _, rest = policy.partition(":")
    if policy in ("expert", "random", "published") or (kind == "checkpoint" and rest):
        return
    # Lazy: viper.experts imports MuJoCo, which the common policies do not need here.
    from viper.experts.policies import spec_problem

    why = spec_problem(policy)
    if why is not None:
        raise config_lib.ConfigError(f"collect.policy={policy!r}: {why}")


EXPERT_SETTINGS_READERS = ("config", "expert", "collect")
"""Commands that check ``collect.expert_settings`` as the configuration loads: ``expert`` runs before collect in
the pipeline, so a typo is refused before any expert trains. Not every command: the check imports MuJoCo."""


def check_expert_settings(entries: tuple[str, ...]) -> None:
    """``ConfigError`` unless every ``collect.expert_settings`` entry names a scripted expert's numeric setting
    with a finite value (collect's own check, ``parse_expert_settings``)."""
    if not entries:
        return
    from viper.experts.policies import parse_expert_settings

    try:
        parse_expert_settings(entries)
    except ViperError as exc:
        raise config_lib.ConfigError(f"collect.expert_settings: {exc}") from None


SUITE_ONLY = ("config", "import", "export", "inspect", "tokenize", "score")
"""Commands that read ``collect.suite`` (or a task named on the command line) but never ``collect.tasks``."""


def _check_collect_tasks(command: str, cfg) -> None:
    """Collect tasks outside ``collect.suite``: an error for the commands that read the task list, one line for
    those that read the suite alone (``viper import my_atari_videos/ -S collect.suite=atari`` must work)."""
    problem = config_lib.stray_collect_tasks(cfg)
    if problem and command not in SUITE_ONLY:
        raise config_lib.ConfigError(problem)
    if problem:
        print(f"viper {command}: note: {problem}", file=sys.stderr)


def _check_agent_tasks(args: argparse.Namespace, cfg) -> None:
    """Agent tasks the VIPER reward model was not trained on: an error for ``train-agent`` (before any env
    starts; only the tasks it will train: ``--task`` or ``agent.tasks``), one line for every other command, the
    first stage of ``dvc repro`` included, so a pipeline that will fail there says so at its start."""
    if args.command == "train-agent":
        from viper.envs.suites import check_task

        reward = getattr(args, "reward", None) or cfg.agent.reward
        task = getattr(args, "task", None)
        if task:
            check_task(task)  # a short name: "unknown task", not "not in collect.tasks"
        problem = config_lib.uncollected_agent_tasks(cfg, reward, task or None)
        if problem:
            raise config_lib.ConfigError(problem)
    elif problem := config_lib.uncollected_agent_tasks(cfg, cfg.agent.reward):
        print(f"viper {args.command}: note: {problem}; train-agent will refuse them", file=sys.stderr)


def _note_action_repeats(command: str, cfg) -> None:
    """One line when the agent would step at another action repeat than collect records its videos at: train-agent
    refuses such a store with reward viper. Not an error: videos brought in by ``viper import`` record their own
    repeat (or none), whatever ``collect.action_repeat`` says."""
    agent, collect = cfg.agent, cfg.collect
    if agent.reward != "viper" or collect.policy == "published" or agent.action_repeat == collect.action_repeat:
        return
    print(
        f"viper {command}: note: agent.action_repeat={agent.action_repeat} but collect.action_repeat="
        f"{collect.action_repeat}: with agent.reward=viper, train-agent refuses videos collected at another repeat "
        "(the reward scores frames at the videos' rate); set both alike unless the videos were imported at "
        f"repeat {agent.action_repeat}",
        file=sys.stderr,
    )


def _note_overridden_data_dir(command: str, cfg, params_path: Path) -> None:
    """One line when ``-S data_dir`` overrides params.yaml's ``data_dir``: dvc.yaml's commands pin it to data/, and
    a ``data_dir`` the user set in params.yaml must not be ignored there without a word."""
    from viper.stages import DATA

    if not params_path.is_file():
        return
    wanted = (yaml.safe_load(params_path.read_text()) or {}).get("data_dir")  # load() checked it is a mapping
    if wanted is None or Path(str(wanted)) == Path(cfg.data_dir):
        return
    print(
        f"viper {command}: writing under {cfg.data_dir}/ (-S data_dir={cfg.data_dir}), not {params_path}'s data_dir "
        f"{wanted!r}: dvc.yaml's stages always write under {DATA}/, where DVC tracks their outputs; run viper commands "
        "without -S data_dir to write elsewhere",
        file=sys.stderr,
    )


def _disk_full(exc: OSError, cfg) -> str:
    """What a full disk (or quota) means for a stage: where, how much is free, and that re-running resumes."""
    where = exc.filename or (cfg.data_dir if cfg is not None else None)
    text = f"{exc.strerror or 'no space left on device'}"
    if where is not None:
        text += f" while writing under {where}"
        with contextlib.suppress(OSError):
            text += f" ({shutil.disk_usage(where).free / 2**20:.1f} MiB free there now)"
    return (
        f"{text}. Stores and checkpoints are written atomically, so everything this stage had committed is intact; "
        "free some space and run the same command again to resume."
    )


if __name__ == "__main__":
    sys.exit(main())
