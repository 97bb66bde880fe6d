"""Seconds per update of the public PyTorch DreamerV3 port the speed target is set against (NM512/dreamerv3-torch).

shared/TARGETS.md asks our update (batch 16 x 64) to be 1.5x faster than that port's on the same machine, and
says to quote ratios measured in one run. This harness times the port's ``Dreamer._train`` (world model, 15-step
imagination, actor, critic, their optimisers and the slow critic) on random 64x64 frames and 6 action dims, the
same batch ``bench_agent.py`` feeds ours, so the two can run alternately on one machine:

    for round in 1 2; do
      OMP_NUM_THREADS=2 /tmp/refvenv/bin/python benchmarks/bench_reference.py --reference-dir /tmp/dv3ref --threads 2
      .venv/bin/python benchmarks/bench_agent.py --sizes XS S --threads 2 --repeats 3 --warmup 1
    done

The port is not part of this project and is not downloaded here: ``--reference-dir`` names a checkout of it
(dreamer.py, models.py, networks.py, tools.py, exploration.py, configs.yaml; results/agent.md lists the commits
measured). It runs in its own environment, not the project's: ``python3 -m venv /tmp/refvenv &&
/tmp/refvenv/bin/pip install torch==2.13.0 numpy "ruamel.yaml<0.18" tensorboard pillow`` (its dreamer.py reads
the config with ``yaml.safe_load``, gone in ruamel.yaml 0.18). Nothing of the port is modified: its env wrappers
(imported by dreamer.py, used only to make environments) are replaced by an empty module, and gym's spaces by
the two attributes its constructors read.

Sizes: ``S`` is the port's default config (dmc_vision: deter 512, units 512, CNN depth 32; 19.1M parameters with
the slow critic), ``XS`` the same with deter / hidden / units 256, CNN depth 24 and one layer per MLP (8.7M):
the two configurations TARGETS.md quotes (9.95 and 5.4 s/update).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
from batches import random_batch

PORT_FILES = ("dreamer.py", "models.py", "networks.py", "tools.py", "exploration.py", "configs.yaml")
XS_ONE_LAYER = ("reward_layers", "cont_layers", "value_layers", "actor_layers", "dyn_input_layers", "dyn_output_layers")


class Space:
    """What the port's constructors read of a gym space: ``shape``, ``dtype``, ``low``/``high``, ``spaces``."""

    def __init__(self, shape=(), dtype=np.float32, low=0.0, high=1.0, spaces=None) -> None:
        self.shape, self.dtype, self.spaces = tuple(shape), np.dtype(dtype), spaces
        self.low, self.high = np.full(self.shape, low, self.dtype), np.full(self.shape, high, self.dtype)


def import_port(folder: Path):
    """Import the port's ``dreamer`` and ``tools`` modules from ``folder`` (a checkout of NM512/dreamerv3-torch)."""
    missing = [name for name in PORT_FILES if not (folder / name).is_file()]
    if missing:
        raise SystemExit(f"--reference-dir {folder}: not a dreamerv3-torch checkout (missing {', '.join(missing)})")
    envs = types.ModuleType("envs")
    envs.__path__ = []
    envs.wrappers = types.ModuleType("envs.wrappers")
    sys.modules.setdefault("envs", envs)
    sys.modules.setdefault("envs.wrappers", envs.wrappers)
    sys.path.insert(0, str(folder))
    import dreamer
    import tools

    return dreamer, tools


def port_config(folder: Path, tools, size: str, batch: int, length: int, logdir: str) -> argparse.Namespace:
    """The port's config as its dreamer.py builds it (defaults + dmc_vision), for CPU fp32 without compile."""
    import ruamel.yaml as yaml

    configs = yaml.safe_load((folder / "configs.yaml").read_text())
    config: dict = {}
    for name in ("defaults", "dmc_vision"):
        merge(config, configs[name])
    config.update(device="cpu", compile=False, precision=32, batch_size=batch, batch_length=length)
    if size == "XS":
        config.update(dyn_deter=256, dyn_hidden=256, units=256, **{key: 1 for key in XS_ONE_LAYER})
        for part in ("encoder", "decoder"):
            config[part].update(cnn_depth=24, mlp_layers=1, mlp_units=256)
    args = argparse.Namespace(**{k: tools.args_type(v)(v) for k, v in sorted(config.items())})
    args.logdir, args.traindir, args.evaldir, args.num_actions = logdir, Path(logdir), Path(logdir), 6
    return args


def merge(base: dict, update: dict) -> None:
    for key, value in update.items():
        if isinstance(value, dict) and key in base:
            merge(base[key], value)
        else:
            base[key] = value


def bench_size(folder: Path, dreamer, tools, size: str, args: argparse.Namespace) -> dict:
    import torch

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as logdir:
        config = port_config(folder, tools, size, args.batch_size, args.batch_length, logdir)
        image = Space((64, 64, 3), np.uint8, 0, 255)
        flags = {key: Space((), bool, 0, 1) for key in ("is_first", "is_last", "is_terminal")}
        obs_space = Space(spaces={"image": image, **flags})
        with contextlib.redirect_stdout(sys.stderr):  # the port prints its layer shapes
            agent = dreamer.Dreamer(obs_space, Space((6,), np.float32, -1, 1), config, None, None)
        agent.requires_grad_(requires_grad=False)  # as the port's main() does; its optimisers enable their own
        batch = random_batch(config.batch_size, config.batch_length, 6)  # bench_agent.py's, plus the port's keys
        batch.update(discount=np.ones(batch["reward"].shape, np.float32), is_last=batch["is_terminal"].copy())
        rows = []
        for i in range(args.warmup + args.repeats):
            data = {k: v.copy() for k, v in batch.items()}  # the port's preprocess scales discount in place
            wall, cpu = time.perf_counter(), time.process_time()
            agent._train(data)
            if i >= args.warmup:
                rows.append((time.perf_counter() - wall, time.process_time() - cpu))
    wall, cpu = np.median(np.array(rows), 0)
    params = sum(p.numel() for p in agent.parameters()) / 1e6
    return {"size": size, "threads": args.threads, "params_m": round(params, 2), "wall_s": wall, "cpu_s": cpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference-dir", type=Path, required=True, help="a checkout of NM512/dreamerv3-torch")
    parser.add_argument("--sizes", nargs="+", default=["XS", "S"], choices=["XS", "S"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--batch-length", type=int, default=64)
    args = parser.parse_args()
    dreamer, tools = import_port(args.reference_dir.resolve())
    import torch

    torch.set_num_threads(args.threads)
    print("| size | threads | params (M) | CPU s/update | s/update (wall) |")
    print("|---|---|---|---|---|")
    for size in args.sizes:
        r = bench_size(args.reference_dir.resolve(), dreamer, tools, size, args)
        row = (f"{r['size']} (dreamerv3-torch)", r["threads"], r["params_m"], f"{r['cpu_s']:.3g}", f"{r['wall_s']:.3g}")
        print("| " + " | ".join(map(str, row)) + " |")
        print(f"<!-- {json.dumps(r)} -->", flush=True)


if __name__ == "__main__":
    main()
