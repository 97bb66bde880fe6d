"""VideoGPT prior checkpoints: written by ``viper.train.prior``, read for scoring by ``viper.reward.model``.

A run's ``checkpoints/`` folder holds step folders (``viper.checkpoint``) with a ``latest`` pointer and, from the
prior's trainer, ``best`` (lowest EMA eval NLL) and ``released`` (the one the released training script keeps).
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch

from viper.errors import ViperError
from viper.models.videogpt import PriorSpec, VideoGPT

CHECKPOINT_FORMAT = "viper-prior/1"
BEST = "best"
"""File in ``checkpoints/`` naming the step folder with the lowest eval NLL."""
RELEASED = "released"
"""File in ``checkpoints/`` naming the step folder the released training script would have kept (see
``viper.train.prior``: the last checkpoint saved while the raw weights' latest eval loss was the best so far)."""
CHOICES = ("latest", BEST, RELEASED)
MARKS = "marks.json"
"""File in each step folder: ``{"best": step folder, "released": step folder}`` as of that save."""


@dataclass(frozen=True)
class LoadedPrior:
    """A prior ready for scoring: EMA weights in eval mode plus what the checkpoint recorded about it."""

    model: VideoGPT
    tasks: tuple[str, ...]
    """Task names in id order (sorted); the task map of the conditional LayerNorms."""
    tokenizer_hash: str
    seq_len: int
    frame_skip: int
    step: int
    path: Path


def checkpoint_folder(path: str | Path, which: str = "latest") -> Path:
    """Resolve a run folder, its ``checkpoints/`` folder or a step folder to one complete step folder."""
    from viper.checkpoint import DONE, Checkpointer

    if which not in CHOICES:
        raise ViperError(f"prior checkpoint {which!r}: expected one of {', '.join(CHOICES)}")
    path = Path(path)
    if (path / DONE).exists():
        return path
    directory = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    latest = Checkpointer(directory).latest_path()
    if which in (BEST, RELEASED):
        # The latest checkpoint's own marks first (the run it belongs to); the pointer file for runs from
        # before the marks were saved.
        marks = latest / MARKS if latest is not None else None
        if marks is not None and marks.is_file():
            name = json.loads(marks.read_text()).get(which)
        else:
            name = (directory / which).read_text().strip() if (directory / which).exists() else None
        if name and (directory / name / DONE).exists():
            return directory / name
    if which == RELEASED:
        print(
            f"prior: {directory} has no '{RELEASED}' checkpoint (a run from before it was recorded); scoring with "
            "the latest one",
            flush=True,
        )
    elif which == BEST:
        print(
            f"prior: {directory} has no '{BEST}' checkpoint (no evaluation landed on a saved step: prior.eval_every_"
            "grad_steps and prior.checkpoint_every_grad_steps never met); scoring with the latest one",
            flush=True,
        )
    if latest is None:
        raise ViperError(f"{path}: no complete prior checkpoint (run `viper train-videogpt` first)")
    return latest


def load_prior(
    path: str | Path, which: str = "latest", device: str | torch.device = "cpu", weights: str = "ema"
) -> LoadedPrior:
    """Load a prior checkpoint (``which``: ``released``, ``latest`` or ``best``) in eval mode. ``weights``: ``ema`` (as
    published: the EMA scores rewards) or ``raw`` (the trained weights; for short runs whose EMA still
    carries much of the initialisation, e.g. decay 0.999 after 600 updates keeps 0.999^600 = 55% of it)."""
    if weights not in ("ema", "raw"):
        raise ViperError(f"prior weights {weights!r}: expected 'ema' or 'raw'")
    folder = checkpoint_folder(path, which)
    file = folder / "state.pt"
    from viper.file_integrity import verify

    verify(folder)  # a damaged prior would score rewards without a word
    try:
        state = torch.load(file, map_location="cpu", weights_only=False)
    except (OSError, EOFError, RuntimeError, pickle.UnpicklingError) as exc:
        raise ViperError(f"{file}: cannot be read as a prior checkpoint ({exc})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ViperError(f"{file}: not a VideoGPT prior checkpoint ({CHECKPOINT_FORMAT})")
    try:
        spec = PriorSpec.from_dict(state["spec"])
        params = state["ema" if weights == "ema" else "model"]
        model = VideoGPT(spec, params["codebook"])
        model.load_state_dict(params)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise ViperError(
            f"{file}: its model description and weights do not fit this code's VideoGPT ({type(exc).__name__}: "
            f"{exc}); was it written by another version? Train the prior again (viper train-videogpt)"
        ) from None
    model.to(device).eval().requires_grad_(False)
    return LoadedPrior(
        model=model,
        tasks=tuple(state["tasks"]),
        tokenizer_hash=str(state["tokenizer_hash"]),
        seq_len=int(state["seq_len"]),
        frame_skip=int(state["frame_skip"]),
        step=int(state["step"]),
        path=folder,
    )
