"""Seconds per DreamerV3 update (batch 16 x 64: world model + 15-step imagination + actor + critic).

    .venv/bin/python benchmarks/bench_agent.py --sizes XS S --threads 1 2 --repeats 3 --baseline --phases

Random 64x64 frames and walker-sized actions (A=6), as the reference figures in shared/TARGETS.md use. Reports
process CPU seconds per update (``time.process_time``: what this process computed, the honest number on a
machine shared with other jobs) beside wall-clock seconds, the load average and a matmul GFLOP/s probe (compare
numbers only within one run). ``--baseline`` also times the same model with the dense first layers over the
one-hot latents (the state before ``nets.OneHotLinear``), interleaved with the current code so that both see
the same load. ``--phases`` prints a cProfile breakdown in CPU seconds. On CUDA it also reports updates/s.
Like the ``viper`` command, it restarts itself once to run under viper/runtime.env's ``GLIBC_TUNABLES`` (freed
memory kept for reuse; ``--allocator default`` times glibc's defaults instead).
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import inspect
import os
import platform
import pstats
import time

import numpy as np
import torch
from batches import random_batch
from torch import nn

from viper import runtime
from viper.agent import nets
from viper.agent.actor_critic import ActorCritic
from viper.agent.agent import Agent
from viper.agent.rssm import RSSM
from viper.agent.world_model import WorldModel
from viper.config import AgentConfig

REFERENCE_S_PER_UPDATE = {"XS": 5.4, "S": 9.95}
"""dreamerv3-torch on this machine class (2 cores, fp32, compile off): shared/TARGETS.md. Those were taken on
another day's host; for a ratio, time the port on this machine with bench_reference.py, alternating with this."""

PHASES = {
    "world-model forward (encoder, RSSM, decoder, heads, KL)": WorldModel.loss,
    "  encoder forward": nets.ConvEncoder.forward,
    "  RSSM observe": RSSM.observe,
    "  decoder forward": nets.ConvDecoder.forward,
    "imagination forward (15 steps)": WorldModel.imagine,
    "actor-critic losses forward (critic, slow critic, returns)": ActorCritic.losses,
    "all backward passes (world model, actor, critic)": torch.autograd.graph._engine_run_backward,
    "optimiser steps": torch.optim.Adam.step,
    "update total": Agent.update,
}
"""Report label -> function whose cumulative CPU seconds cProfile reports."""


def gflops_probe(device: torch.device, n: int = 1024, repeats: int = 10) -> float:
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9


@contextlib.contextmanager
def dense_onehot_layers():
    """Benchmark-only: run ``OneHotLinear`` layers as plain dense ``nn.Linear`` (the code before the gather)."""
    gather = nets.OneHotLinear.forward
    nets.OneHotLinear.forward = nn.Linear.forward
    try:
        yield
    finally:
        nets.OneHotLinear.forward = gather


def timed_update(agent: Agent, batch, device: torch.device) -> tuple[float, float]:
    """(wall s, process CPU s) of one update."""
    wall, cpu = time.perf_counter(), time.process_time()
    agent.update(batch)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - wall, time.process_time() - cpu


def bench_size(size: str, device: torch.device, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Median wall and CPU seconds per update for each variant (``current``, and ``dense`` with --baseline)."""
    torch.manual_seed(0)
    cfg = AgentConfig(
        size=size,
        compile=args.compile,
        compile_loops=args.compile_loops,
        compile_mode=args.compile_mode,
        cuda_graph=args.cuda_graph,
    )
    agent = Agent(cfg, 6, False, "reward", device)
    batch = agent.to_tensors(random_batch(cfg.batch_size, cfg.batch_length, 6))
    variants = {"current": contextlib.nullcontext}
    if args.baseline:
        variants["dense"] = dense_onehot_layers
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in variants}
    for _ in range(args.warmup):
        agent.update(batch)
    # Interleave the variants so that both see the same machine load.
    for _ in range(args.repeats):
        for name, ctx in variants.items():
            with ctx():
                times[name].append(timed_update(agent, batch, device))
    if agent.graphed is not None:
        state = "failed: eager updates" if agent.graphed.failed else "captured and replayed"
        print(f"<!-- {size}: whole-update CUDA graph {state} -->")
    params = sum(p.numel() for p in agent.parameters() if p.requires_grad) / 1e6
    out = {}
    for name, rows in times.items():
        wall, cpu = np.median(np.array(rows), 0)
        out[name] = {"wall_s": float(wall), "cpu_s": float(cpu), "params_m": params}
    if args.phases:
        out["phases"] = phase_profile(agent, batch)
    return out


def phase_profile(agent: Agent, batch) -> dict[str, float]:
    """Cumulative CPU seconds of the update's parts in one profiled update (cProfile with process time)."""
    profile = cProfile.Profile(time.process_time)
    profile.runcall(agent.update, batch)
    stats = pstats.Stats(profile).stats
    out = {}
    for label, fn in PHASES.items():
        code = inspect.unwrap(fn).__code__
        key = (code.co_filename, code.co_firstlineno, code.co_name)
        out[label] = stats[key][3] if key in stats else float("nan")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["XS", "S"])
    parser.add_argument("--threads", nargs="+", type=int, default=[2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--baseline", action="store_true", help="also time the dense one-hot layers, interleaved")
    parser.add_argument("--phases", action="store_true", help="cProfile breakdown of one update (CPU s)")
    parser.add_argument("--compile", action="store_true", help="torch.compile of the batched networks (CUDA only)")
    parser.add_argument(
        "--compile-loops", action="store_true", help="torch.compile of the observe / imagination steps (any device)"
    )
    parser.add_argument(
        "--compile-mode",
        default="default",
        help="torch.compile mode for --compile / --compile-loops (reduce-overhead: CUDA graphs on CUDA)",
    )
    parser.add_argument(
        "--cuda-graph", action="store_true", help="agent.cuda_graph: replay whole updates from one CUDA graph"
    )
    parser.add_argument(
        "--allocator",
        choices=["runtime", "default"],
        default="runtime",
        help="runtime: restart with viper/runtime.env's GLIBC_TUNABLES as the viper command does (the default); "
        "default: glibc as this process started",
    )
    args = parser.parse_args()
    if args.allocator == "runtime":
        runtime.restart_if_needed()
    if args.cuda_graph and args.warmup < 4:
        parser.error("--cuda-graph needs --warmup 4 or more (3 eager warm-up updates, then the capture)")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else None
    device = device or torch.device(args.device)
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, torch {torch.__version__}, "
        f"device {device}, load average {os.getloadavg()[0]:.1f}, "
        f"GLIBC_TUNABLES at start: {'none' if runtime.missing_at_start() else os.environ.get('GLIBC_TUNABLES')}"
    )
    print("| size | threads | variant | params (M) | CPU s/update | s/update (wall) | TARGETS.md ref. (other host) |")
    print("|---|---|---|---|---|---|---|")
    phases = {}
    for threads in args.threads:
        torch.set_num_threads(threads)
        print(f"<!-- {threads} thread(s): matmul probe {gflops_probe(device):.1f} GFLOP/s -->")
        for size in args.sizes:
            result = bench_size(size, device, args)
            if "phases" in result:
                phases[(size, threads)] = result.pop("phases")
            for variant, r in result.items():
                ref = REFERENCE_S_PER_UPDATE.get(size, "-")
                print(
                    f"| {size} | {threads} | {variant} | {r['params_m']:.1f} | {r['cpu_s']:.3g} | {r['wall_s']:.3g} | "
                    f"{ref} |"
                )
    for (size, threads), rows in phases.items():
        print(f"\nPhases at {size}, {threads} thread(s), CPU s (cumulative, one profiled update):")
        for label, seconds in rows.items():
            print(f"- {label}: {seconds:.2f}")
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
