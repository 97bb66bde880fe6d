"""Copy a trained reward model's newest checkpoints, weights only, into this repo's ``data/`` for a GPU call.

The device tool carries at most 64 MiB; the tokenizer's checkpoint holds its discriminator and optimiser states
(~40 MB) and the prior's its optimiser, none of which scoring reads. This keeps the weights (tokenizer ``model``,
prior ``model`` and ``ema``), the fingerprints, ``done`` markers and ``latest`` / ``best`` pointers:

    .venv/bin/python benchmarks/trim_reward_model.py /work/run_demo2/data [--suite dmc] [--out data]

then name ``data/tokenizer`` and ``data/prior`` in the call's ``carry`` (benchmarks/results/gpu.md).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch

DROPPED = {"tokenizer": ("disc", "opt_g", "opt_d"), "prior": ("optimizer",)}


def trim(source: Path, out: Path, suite: str) -> None:
    for stage, dropped in DROPPED.items():
        src_dir = source / stage / suite / "checkpoints"
        latest = (src_dir / "latest").read_text().strip()
        dst_dir = out / stage / suite / "checkpoints"
        (dst_dir / latest).mkdir(parents=True, exist_ok=True)
        state = torch.load(src_dir / latest / "state.pt", weights_only=False, map_location="cpu")
        torch.save({k: v for k, v in state.items() if k not in dropped}, dst_dir / latest / "state.pt")
        for name in ("done", "fingerprint.json"):
            shutil.copy(src_dir / latest / name, dst_dir / latest / name)
        for pointer in ("latest", "best"):  # both name the copied folder: the only one carried
            if (src_dir / pointer).exists():
                (dst_dir / pointer).write_text(latest)
        size = (dst_dir / latest / "state.pt").stat().st_size / 2**20
        print(f"{stage}: {src_dir / latest} -> {dst_dir / latest} ({size:.1f} MiB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="a data folder with a trained tokenizer and prior")
    parser.add_argument("--suite", default="dmc")
    parser.add_argument("--out", type=Path, default=Path("data"))
    args = parser.parse_args()
    trim(args.source, args.out, args.suite)


if __name__ == "__main__":
    main()
