"""Where every artifact lives, relative to ``Config.data_dir``. The single source for Python and dvc.yaml.

dvc.yaml is generated from these functions (``viper dvc-yaml``) and a test checks the committed file matches,
so a path is written once.
"""

from __future__ import annotations

from pathlib import Path


def slug(task: str) -> str:
    """``dmc/cartpole_balance`` -> ``dmc-cartpole_balance`` (a file-name-safe task name)."""
    return task.replace("/", "-")


def videos_dir(data_dir: str | Path) -> Path:
    """The video stores (``collect``'s DVC output)."""
    return Path(data_dir) / "videos"


def store(data_dir: str | Path, suite: str) -> Path:
    """Zarr video store of one suite: one group per task."""
    return videos_dir(data_dir) / f"{suite}.zarr"


def published_dir(data_dir: str | Path) -> Path:
    """Where users place the published datasets: ``published/<suite>/<task>/{train,test}/*.npz`` (collect policy
    ``published`` imports them; a dependency of the ``collect`` stage)."""
    return Path(data_dir) / "published"


def tokens_dir(data_dir: str | Path) -> Path:
    """The token stores (``tokenize``'s DVC output)."""
    return Path(data_dir) / "tokens"


def tokens(data_dir: str | Path, suite: str) -> Path:
    """Token store of one suite (same group layout as the video store, written by ``tokenize``).

    Kept apart from the video store so that DVC sees ``collect`` and ``tokenize`` write different outputs.
    """
    return tokens_dir(data_dir) / f"{suite}.zarr"


def tokenizers_dir(data_dir: str | Path) -> Path:
    """Every suite's VQ-GAN run (``train-tokenizer``'s DVC output)."""
    return Path(data_dir) / "tokenizer"


def tokenizer_dir(data_dir: str | Path, suite: str) -> Path:
    """VQ-GAN run folder: ``checkpoints/``, ``metrics.json``, ``plots/``, ``logs/``."""
    return tokenizers_dir(data_dir) / suite


def priors_dir(data_dir: str | Path) -> Path:
    """Every suite's VideoGPT run (``train-videogpt``'s DVC output)."""
    return Path(data_dir) / "prior"


def prior_dir(data_dir: str | Path, suite: str) -> Path:
    """VideoGPT run folder: ``checkpoints/``, ``metrics.json``, ``plots/``, ``logs/``."""
    return priors_dir(data_dir) / suite


def reward_evals_dir(data_dir: str | Path) -> Path:
    """Every suite's reward diagnostics (``reward-eval``'s DVC output)."""
    return Path(data_dir) / "reward_eval"


def reward_eval_dir(data_dir: str | Path, suite: str) -> Path:
    """Reward diagnostics: ``metrics.json``, scatter plots."""
    return reward_evals_dir(data_dir) / suite


def experts_dir(data_dir: str | Path) -> Path:
    """Every trained expert (``expert``'s DVC output)."""
    return Path(data_dir) / "experts"


def expert_dir(data_dir: str | Path, task: str) -> Path:
    """Agent trained on the task reward to supply expert videos for a task without a scripted expert."""
    return experts_dir(data_dir) / slug(task)


def agents_dir(data_dir: str | Path) -> Path:
    """Every agent run (``train-agent``'s DVC output)."""
    return Path(data_dir) / "agents"


def agent_dir(data_dir: str | Path, reward: str, task: str, seed: int) -> Path:
    """One agent run (``reward`` is ``task`` for experts/oracles or ``viper``)."""
    return agents_dir(data_dir) / reward / slug(task) / f"seed{seed}"


def evaluate_dir(data_dir: str | Path) -> Path:
    """``results.json``, ``baselines.json`` and the episode GIFs of ``evaluate`` (its DVC output)."""
    return Path(data_dir) / "evaluate"


def report_dir(data_dir: str | Path) -> Path:
    """The final Markdown/HTML report with its pictures."""
    return Path(data_dir) / "report"


def report_plots(data_dir: str | Path) -> Path:
    """Curves as two-column TSVs (``step``, value), declared as top-level DVC plots with ``x: step``."""
    return report_dir(data_dir) / "plots"


def report_assets(data_dir: str | Path) -> Path:
    """The report's pictures (learning curves, reconstructions, predictions, episodes), also DVC image plots."""
    return report_dir(data_dir) / "assets"
