"""Seconds per DreamerV3 update (batch 16 x 64: world model + 15-step imagination + actor + critic).

    .venv/bin/python benchmarks/bench_agent.py --sizes XS S --threads 2 --repeats 3

Random 64x64 frames and walker-sized actions (A=6), as the reference figures in shared/TARGETS.md use. Reports
wall-clock and process CPU seconds per update, the machine's load average and a matmul GFLOP/s probe (the
machines are shared: compare numbers only within one run). On CUDA it also reports updates/s.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch

from viper.agent.agent import Agent
from viper.config import AgentConfig

REFERENCE_S_PER_UPDATE = {"XS": 5.4, "S": 9.95}
"""dreamerv3-torch on this machine class (2 cores, fp32, compile off): shared/TARGETS.md."""


def gflops_probe(device: torch.device, n: int = 1024, repeats: int = 10) -> float:
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9


def random_batch(batch: int, length: int, action_dim: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    is_first = np.zeros((batch, length), bool)
    is_first[:, 0] = True
    return {
        "image": rng.integers(0, 256, (batch, length, 64, 64, 3), dtype=np.uint8),
        "action": rng.uniform(-1, 1, (batch, length, action_dim)).astype(np.float32),
        "reward": rng.normal(size=(batch, length)).astype(np.float32),
        "is_first": is_first,
        "is_terminal": np.zeros((batch, length), bool),
    }


def time_updates(size: str, device: torch.device, repeats: int, warmup: int, compile_: bool) -> dict[str, float]:
    torch.manual_seed(0)
    cfg = AgentConfig(size=size, compile=compile_)
    agent = Agent(cfg, 6, False, "reward", device)
    batch = agent.to_tensors(random_batch(cfg.batch_size, cfg.batch_length, 6))
    for _ in range(warmup):
        agent.update(batch)
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(repeats):
        agent.update(batch)
    if device.type == "cuda":
        torch.cuda.synchronize()
    params = sum(p.numel() for p in agent.parameters() if p.requires_grad) / 1e6
    return {
        "wall_s": (time.perf_counter() - wall) / repeats,
        "cpu_s": (time.process_time() - cpu) / repeats,
        "params_m": params,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["XS", "S"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--compile", action="store_true", help="torch.compile (CUDA only)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else None
    device = device or torch.device(args.device)
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, torch {torch.__version__}, "
        f"device {device}, threads {args.threads}, load average {os.getloadavg()[0]:.1f}"
    )
    print(f"matmul probe: {gflops_probe(device):.1f} GFLOP/s")
    print("| size | params (M) | s/update (wall) | CPU s/update | reference s/update | wall speed-up | updates/s |")
    print("|---|---|---|---|---|---|---|")
    for size in args.sizes:
        r = time_updates(size, device, args.repeats, args.warmup, args.compile)
        ref = REFERENCE_S_PER_UPDATE.get(size)
        speedup = f"{ref / r['wall_s']:.2f}x" if ref and device.type == "cpu" else "-"
        print(
            f"| {size} | {r['params_m']:.1f} | {r['wall_s']:.2f} | {r['cpu_s']:.2f} | {ref or '-'} | {speedup} | "
            f"{1 / r['wall_s']:.2f} |"
        )
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
