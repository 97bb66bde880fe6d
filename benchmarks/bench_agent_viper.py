"""What the VIPER reward costs inside the agent: update time and replay insertion, task reward vs VIPER.

    .venv/bin/python benchmarks/bench_agent_viper.py --sizes tiny XS --batch 4 64 --threads 1 --rounds 2

1. Seconds per update (batch B x T, world model + imagination + actor + critics) of the task-reward agent
   (one critic) and the VIPER agent (density head, 8-member disagreement ensemble and its update, two critics),
   timed in turn so that load from other processes hits both alike. Reports the best process CPU time per
   update (with one thread it is what the update costs, whatever else runs on the machine) and wall time.
2. Env steps per second through the relabelling ``Inserter`` (4 streams, 64-step chunks, the preset prior's
   context) with the preset's tokenizer and prior at random weights (speed does not depend on them), against
   the task reward's pass-through.

Random 64x64 frames; continuous actions (A=1, cartpole). Compare numbers only within one run (shared machine).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from viper import config as config_lib
from viper.agent.agent import Agent
from viper.agent.replay import Replay
from viper.agent.rewards import Inserter, TaskReward
from viper.agent.run_spec import replay_spec
from viper.agent.viper_reward import ViperReward
from viper.models.prior_checkpoint import LoadedPrior
from viper.models.videogpt import VideoGPT
from viper.models.vqgan import VQGAN, Tokenizer, VQGANArch, weights_hash
from viper.reward import VideoReward
from viper.train.prior import spec_for

TASK = "dmc/cartpole_balance"


def batch_for(batch: int, length: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    is_first = np.zeros((batch, length), bool)
    is_first[:, 0] = True
    return {
        "image": rng.integers(0, 256, (batch, length, 64, 64, 3), dtype=np.uint8),
        "action": rng.uniform(-1, 1, (batch, length, 1)).astype(np.float32),
        "reward": rng.normal(size=(batch, length)).astype(np.float32),
        "density": rng.normal(-300, 100, size=(batch, length)).astype(np.float32),
        "is_first": is_first,
        "is_terminal": np.zeros((batch, length), bool),
    }


def best_of(fns: dict[str, object], rounds: int) -> dict[str, tuple[float, float]]:
    """Best (CPU, wall) seconds per call over ``rounds``, calling the functions in turn after one warm-up each."""
    for fn in fns.values():
        fn()
    best = {name: (float("inf"), float("inf")) for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            cpu, wall = time.process_time(), time.perf_counter()
            fn()
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            best[name] = (min(best[name][0], cpu), min(best[name][1], wall))
    return best


def update_times(size: str, batch: int, length: int, rounds: int) -> dict[str, tuple[float, float]]:
    cfg = config_lib.AgentConfig(size=size, batch_size=batch, batch_length=length)
    data = batch_for(batch, length)
    fns = {}
    for name, reward in (("task", "reward"), ("viper", "density")):
        torch.manual_seed(0)
        agent = Agent(cfg, 1, False, reward, "cpu")
        tensors = agent.to_tensors({k: v for k, v in data.items() if k != "density" or reward == "density"})
        fns[name] = lambda agent=agent, tensors=tensors: agent.update(tensors)
    return best_of(fns, rounds)


def reward_model(preset: str) -> VideoReward:
    cfg = config_lib.load(preset, params_path=None)
    torch.manual_seed(0)
    vqgan = VQGAN(VQGANArch.from_config(cfg.tokenizer))
    tokenizer = Tokenizer(vqgan, weights_hash(vqgan.state_dict()))
    codebook = tokenizer.codebook.cpu()
    prior = VideoGPT(spec_for(cfg.prior, tokenizer.grid, codebook, num_tasks=1), codebook).eval()
    loaded = LoadedPrior(prior, (TASK,), tokenizer.hash, cfg.prior.seq_len, cfg.prior.frame_skip, 0, Path("bench"))
    return VideoReward(tokenizer, loaded, cfg.reward.__class__(device="cpu"))


def insert_rate(source, streams: int, steps: int) -> float:
    """Env steps (all streams) per second pushed through the Inserter into a replay."""
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (steps, streams, 64, 64, 3), dtype=np.uint8)
    replay = Replay(100_000, streams, replay_spec((64, 64, 3), 1, source.name), seed=0)
    inserter = Inserter(replay, source, streams)
    start = time.perf_counter()
    for t in range(steps):
        inserter.add(
            {
                "image": frames[t],
                "action": np.zeros((streams, 1), np.float32),
                "reward": np.zeros(streams, np.float32),
                "is_first": np.full(streams, t == 0),
                "is_last": np.zeros(streams, bool),
                "is_terminal": np.zeros(streams, bool),
            }
        )
    return steps * streams / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["tiny", "XS"])
    parser.add_argument("--batch", type=int, nargs=2, default=[16, 64], metavar=("B", "T"))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--preset", default="demo", help="preset whose tokenizer/prior sizes the insertion uses")
    parser.add_argument("--insert-steps", type=int, default=192, help="env steps per stream for the insertion rate")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{args.threads} threads, load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    print("\n| size | batch | task CPU s/update | VIPER CPU s/update | VIPER / task (CPU) | wall s task / VIPER |")
    print("|---|---|---|---|---|---|")
    for size in args.sizes:
        t = update_times(size, *args.batch, args.rounds)
        (task_cpu, task_wall), (viper_cpu, viper_wall) = t["task"], t["viper"]
        print(f"| {size} | {args.batch[0]}x{args.batch[1]} | {task_cpu:.2f} | {viper_cpu:.2f} | "
              f"{viper_cpu / task_cpu:.2f} | {task_wall:.1f} / {viper_wall:.1f} |", flush=True)  # fmt: skip
    model = reward_model(args.preset)
    viper = ViperReward(model, TASK, chunk_steps=64)
    task_rate = insert_rate(TaskReward(), 4, args.insert_steps)
    viper_rate = insert_rate(viper, 4, args.insert_steps)
    print(f"\nInserter, 4 streams, {args.preset} reward model (window {model.window_frames}, context "
          f"{viper.context_steps}, chunk {viper.chunk_steps}): task {task_rate:,.0f} env steps/s, "
          f"VIPER {viper_rate:,.0f} env steps/s")  # fmt: skip
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
