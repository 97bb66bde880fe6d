"""The pipeline's stages, declared once: command, code, params sections, inputs and outputs.

``dvc.yaml`` is generated from this table (``viper dvc-yaml``; a test checks the committed file is
current) and
the Prefect flows in ``pipeline/`` run the same stages through ``dvc repro``, so DVC's lock file is the single
record of what is stale whichever way a stage was started.

Why one stage per step rather than a DVC ``foreach`` per task: DVC resolves ``foreach`` from params.yaml at
parse time, but the task and seed lists come from the selected preset (``viper/presets.py``), so a
``dvc exp run -S preset=tiny`` could not change the fan-out. Each stage therefore covers all of the preset's
tasks/seeds and fans out inside (worker processes, or Prefect task runners); outputs are persistent and
per-task work resumes, so a killed ``dvc repro`` picks up where it stopped.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from viper import paths
from viper.hashing import sources_digest

DATA = "data"

# Each stage's output folder, from viper/paths.py (where the stages themselves find them).
EXPERTS = str(paths.experts_dir(DATA))
VIDEOS = str(paths.videos_dir(DATA))
TOKENIZER = str(paths.tokenizers_dir(DATA))
TOKENS = str(paths.tokens_dir(DATA))
PRIOR = str(paths.priors_dir(DATA))
REWARD_EVAL = str(paths.reward_evals_dir(DATA))
AGENTS = str(paths.agents_dir(DATA))
EVALUATE = str(paths.evaluate_dir(DATA))
REPORT = str(paths.report_dir(DATA))

EXTERNAL_INPUTS = (str(paths.published_dir(DATA)),)
"""Inputs that users provide rather than a stage (a tracked README keeps the folder present for DVC)."""

COMMON_CODE = ("viper/config.py", "viper/sections.py", "viper/fields.py", "viper/presets.py", "viper/paths.py")
TOKENIZER_CODE = (
    "viper/models/vqgan.py",
    "viper/models/layers.py",
    "viper/models/quantizer.py",
    "viper/train/common.py",
)
PRIOR_CODE = ("viper/models/videogpt.py", "viper/models/prior_checkpoint.py")
REWARD_CODE = (*TOKENIZER_CODE, *PRIOR_CODE, "viper/reward")
INFRASTRUCTURE = (
    "viper/__init__.py",
    "viper/runtime.py",
    "viper/errors.py",
    "viper/metrics.py",
    "viper/checkpoint.py",
    "viper/file_integrity.py",
    "viper/hashing.py",
    "viper/signals.py",
    "viper/locks.py",
    "viper/stages.py",
)
"""Code that never changes what a stage writes (process set-up, errors, metric logging, checkpoint files, this
table): in no stage's dependencies, so that editing it leaves trained models current. Every other module a
stage can import is a dependency of it or listed in ``UNTRACKED`` (a test checks this on the import graph)."""
UNTRACKED: dict[str, tuple[str, ...]] = {
    # Trains on the task reward only: the VIPER reward model is imported, never loaded.
    "expert": ("viper/models", "viper/reward", "viper/data"),
    # A trained expert acts by its weights (data/experts); how the agent code acts is not tracked, as in
    # collect's own fingerprint (envs and experts), so agent code changes do not re-collect the videos.
    "collect": ("viper/agent",),
    # Only the Atari masks (listed) shape the frames; the rest of viper/envs builds environments.
    "train-tokenizer": ("viper/envs",),
    "tokenize": ("viper/envs",),
}


@dataclass(frozen=True)
class StageSpec:
    name: str
    """DVC stage name (also the Prefect task name)."""
    command: str
    """The ``viper`` subcommand the stage runs."""
    sections: tuple[str, ...]
    """params.yaml sections the stage reads (``preset`` is always a dependency)."""
    code: tuple[str, ...]
    """Source files/folders whose change makes the stage stale."""
    inputs: tuple[str, ...]
    """Outputs of earlier stages it reads."""
    outs: tuple[str, ...]
    """Folders it writes (persistent: a re-run resumes inside them)."""
    note: str
    """One line for the stage's ``desc``."""

    @property
    def metrics(self) -> str:
        """Summary metrics file the stage writes (``viper <cmd> --metrics-out``)."""
        return metrics_path(self.name)


def repo_digest(entries: tuple[str, ...]) -> str:
    """16 hex digits naming the code ``entries`` name (files or folders, relative to the repository root)."""
    return sources_digest(Path(__file__).resolve().parents[1], entries)


def code_digest(name: str) -> str:
    """16 hex digits naming the code of stage ``name`` (its ``StageSpec.code``): for a stage that reuses its
    earlier results (reward-eval's records, evaluate's), a key part that notices what makes DVC run it again, a
    code change; without it the rerun reused every record and ``dvc.lock`` recorded old numbers as current."""
    return repo_digest(by_name(name).code)


SCORING_CODE = (
    *REWARD_CODE,
    "viper/eval/reward_eval.py",
    "viper/eval/stats.py",
    "viper/eval/keys.py",
    "viper/data",
    "viper/envs/__init__.py",
    "viper/envs/masks.py",
)
"""The part of reward-eval's code that scores stored videos (no rollout, agent or env code): the key of its
expert, shuffled and reversed records, which an agent or env edit must not throw away."""


def metrics_path(stage: str, data_dir: str | Path = DATA) -> str:
    return str(Path(data_dir) / "metrics" / f"{stage}.json")


STAGES: tuple[StageSpec, ...] = (
    StageSpec(
        "expert",
        "expert",
        ("collect", "agent"),
        ("viper/agent", "viper/envs", "viper/experts", "viper/eval/video.py"),
        (),
        (EXPERTS,),
        "train task-reward agents as experts for collect tasks without a scripted expert",
    ),
    StageSpec(
        "collect",
        "collect",
        ("collect",),
        ("viper/envs", "viper/experts", "viper/data"),
        (EXPERTS, *EXTERNAL_INPUTS),
        (VIDEOS,),
        "roll out expert policies (or import the published videos) into the Zarr video store",
    ),
    StageSpec(
        "train-tokenizer",
        "train-tokenizer",
        ("tokenizer", "collect"),
        (
            *TOKENIZER_CODE,
            "viper/models/discriminator.py",
            "viper/models/lpips.py",
            "viper/train/adamw.py",
            "viper/train/frames.py",
            "viper/train/tokenizer.py",
            "viper/train/tokenize.py",
            "viper/envs/masks.py",
            "viper/data",
        ),
        (VIDEOS,),
        (TOKENIZER,),
        "train the VQ-GAN tokenizer on single frames",
    ),
    StageSpec(
        "tokenize",
        "tokenize",
        ("tokenizer", "collect"),
        (*TOKENIZER_CODE, "viper/train/tokenize.py", "viper/envs/masks.py", "viper/data"),
        (VIDEOS, TOKENIZER),
        (TOKENS,),
        "encode every stored frame into tokens",
    ),
    StageSpec(
        "train-videogpt",
        "train-videogpt",
        ("prior", "collect"),
        (
            *PRIOR_CODE,
            *TOKENIZER_CODE,  # the prior reads the tokenizer's codebook through it
            "viper/train/adamw.py",
            "viper/train/prior.py",
            "viper/train/prior_data.py",
            "viper/data",
        ),
        (TOKENS, TOKENIZER),
        (PRIOR,),
        "train the task-conditioned VideoGPT prior",
    ),
    StageSpec(
        "reward-eval",
        "reward-eval",
        ("reward", "evaluate", "collect"),
        (
            *REWARD_CODE,
            "viper/eval/reward_eval.py",
            "viper/eval/stats.py",
            "viper/eval/keys.py",
            "viper/experts",
            "viper/envs",
            "viper/agent",  # the trained experts' noisy episodes
            "viper/data",
        ),
        (VIDEOS, TOKENIZER, PRIOR, EXPERTS),
        (REWARD_EVAL,),
        "score expert / noisy / random episodes with the reward model",
    ),
    StageSpec(
        "train-agent",
        "train-agent",
        ("agent", "reward", "collect"),
        (*REWARD_CODE, "viper/agent", "viper/envs", "viper/eval/video.py", "viper/data", "viper/experts"),
        (TOKENIZER, PRIOR),
        (AGENTS,),
        "train DreamerV3 agents on the VIPER reward for every (task, seed)",
    ),
    StageSpec(
        "evaluate",
        "evaluate",
        ("evaluate", "agent", "collect", "reward"),
        (
            *REWARD_CODE,
            "viper/eval/agent_eval.py",
            "viper/eval/keys.py",
            "viper/eval/video.py",
            "viper/agent",
            "viper/envs",
            "viper/experts",
        ),
        (AGENTS, TOKENIZER, PRIOR),
        (EVALUATE,),
        "roll out the trained agents: task and VIPER returns, videos",
    ),
    StageSpec(
        "report",
        "report",
        ("evaluate", "agent", "collect"),
        ("viper/eval/report.py", "viper/eval/keys.py", "viper/eval/published.py"),
        # the agents' logs and the tokenizer's and prior's pictures go into the report too
        (REWARD_EVAL, EVALUATE, AGENTS, TOKENIZER, PRIOR),
        (REPORT,),
        "write the Markdown/HTML report beside the published results",
    ),
)


def by_name(name: str) -> StageSpec:
    for stage in STAGES:
        if stage.name == name:
            return stage
    raise KeyError(f"unknown stage {name!r}; stages: {', '.join(s.name for s in STAGES)}")
