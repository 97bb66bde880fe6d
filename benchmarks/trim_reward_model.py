"""Copy a trained reward model's newest checkpoints, weights only, into this repo's ``data/`` for a GPU call.

The device tool carries at most 64 MiB; the tokenizer's checkpoint holds its discriminator and optimiser states
(~40 MB) and the prior's its optimiser, none of which scoring reads. This keeps the weights (tokenizer ``model``,
prior ``model`` and ``ema``), the fingerprints and ``done`` markers of one checkpoint each: the tokenizer's
latest and the prior's that ``reward.checkpoint`` scores with (``--prior-checkpoint``, default ``released`` as
the config's default; it need not be the latest). Every pointer (``latest``, ``best``, ``released``) and the
step folder's ``marks.json`` name the one carried folder, so scoring on the device loads exactly it:

    .venv/bin/python benchmarks/trim_reward_model.py /work/run_demo2/data [--suite dmc] [--out data]

then name ``data/tokenizer`` and ``data/prior`` in the call's ``carry`` (benchmarks/results/gpu.md).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch

from viper.checkpoint import DONE, Checkpointer
from viper.models.prior_checkpoint import BEST, CHOICES, MARKS, RELEASED, checkpoint_folder

DROPPED = {"tokenizer": ("disc", "opt_g", "opt_d"), "prior": ("optimizer",)}


def trim(source: Path, out: Path, suite: str, prior_checkpoint: str = RELEASED) -> None:
    for stage, dropped in DROPPED.items():
        src_dir = source / stage / suite / "checkpoints"
        if stage == "prior":
            chosen = checkpoint_folder(src_dir, prior_checkpoint).name
        else:
            chosen = Checkpointer(src_dir).latest_path().name
        dst_dir = out / stage / suite / "checkpoints"
        shutil.rmtree(dst_dir, ignore_errors=True)  # a folder left by an earlier model would be carried too
        (dst_dir / chosen).mkdir(parents=True)
        state = torch.load(src_dir / chosen / "state.pt", weights_only=False, map_location="cpu")
        torch.save({k: v for k, v in state.items() if k not in dropped}, dst_dir / chosen / "state.pt")
        for name in ("fingerprint.json", DONE):  # the done marker last, as a save writes it
            shutil.copy(src_dir / chosen / name, dst_dir / chosen / name)
        if stage == "prior":
            (dst_dir / chosen / MARKS).write_text(json.dumps({BEST: chosen, RELEASED: chosen}))
        for pointer in ("latest", BEST, RELEASED):  # all name the copied folder: the only one carried
            (dst_dir / pointer).write_text(chosen)
        size = (dst_dir / chosen / "state.pt").stat().st_size / 2**20
        print(f"{stage}: {src_dir / chosen} -> {dst_dir / chosen} ({size:.1f} MiB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="a data folder with a trained tokenizer and prior")
    parser.add_argument("--suite", default="dmc")
    parser.add_argument("--out", type=Path, default=Path("data"))
    parser.add_argument(
        "--prior-checkpoint", choices=CHOICES, default=RELEASED, help="prior checkpoint to carry (reward.checkpoint)"
    )
    args = parser.parse_args()
    trim(args.source, args.out, args.suite, args.prior_checkpoint)


if __name__ == "__main__":
    main()
