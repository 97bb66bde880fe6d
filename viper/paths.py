"""Where every artifact lives, relative to ``Config.data_dir``. The single source for Python and dvc.yaml.

dvc.yaml is generated from these functions (``viper dvc-yaml``) and a test checks the committed file matches,
so a path is written once.
"""

from __future__ import annotations

from pathlib import Path


def slug(task: str) -> str:
    """``dmc/cartpole_balance`` -> ``dmc-cartpole_balance`` (a file-name-safe task name)."""
    return task.replace("/", "-")


def store(data_dir: str | Path, suite: str) -> Path:
    """Zarr video store of one suite: one group per task."""
    return Path(data_dir) / "videos" / f"{suite}.zarr"


def published_dir(data_dir: str | Path) -> Path:
    """Where users place the published datasets: ``published/<suite>/<task>/{train,test}/*.npz`` (collect policy
    ``published`` imports them; a dependency of the ``collect`` stage)."""
    return Path(data_dir) / "published"


def tokens(data_dir: str | Path, suite: str) -> Path:
    """Token store of one suite (same group layout as the video store, written by ``tokenize``).

    Kept apart from the video store so that DVC sees ``collect`` and ``tokenize`` write different outputs.
    """
    return Path(data_dir) / "tokens" / f"{suite}.zarr"


def tokenizer_dir(data_dir: str | Path, suite: str) -> Path:
    """VQ-GAN run folder: ``checkpoints/``, ``metrics.json``, ``plots/``, ``logs/``."""
    return Path(data_dir) / "tokenizer" / suite


def prior_dir(data_dir: str | Path, suite: str) -> Path:
    """VideoGPT run folder: ``checkpoints/``, ``metrics.json``, ``plots/``, ``logs/``."""
    return Path(data_dir) / "prior" / suite


def reward_eval_dir(data_dir: str | Path, suite: str) -> Path:
    """Reward diagnostics: ``metrics.json``, scatter plots."""
    return Path(data_dir) / "reward_eval" / suite


def expert_dir(data_dir: str | Path, task: str) -> Path:
    """Agent trained on the task reward to supply expert videos for a task without a scripted expert."""
    return Path(data_dir) / "experts" / slug(task)


def agent_dir(data_dir: str | Path, reward: str, task: str, seed: int) -> Path:
    """One agent run (``reward`` is ``task`` for experts/oracles or ``viper``)."""
    return Path(data_dir) / "agents" / reward / slug(task) / f"seed{seed}"


def report_dir(data_dir: str | Path) -> Path:
    """The final Markdown/HTML report with its pictures."""
    return Path(data_dir) / "report"


def report_plots(data_dir: str | Path) -> Path:
    """Curves as two-column TSVs (``step``, value), declared as top-level DVC plots with ``x: step``."""
    return report_dir(data_dir) / "plots"


def report_assets(data_dir: str | Path) -> Path:
    """The report's pictures (learning curves, reconstructions, predictions, episodes), also DVC image plots."""
    return report_dir(data_dir) / "assets"
