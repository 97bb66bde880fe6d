"""Reward relabelling throughput: the batched ``VideoReward.score`` vs the naive per-window loop.

Both use the same models (paper_dmc tokenizer and prior sizes by default; random weights: speed does not depend
on them) on the same episode. The naive loop (``viper.reward.reference.score_per_window``) encodes each
window's frames and runs the prior once per window; the batched scorer encodes every frame once and runs many
windows per prior forward. A second pair isolates the prior: per-window forwards vs batched forwards on
pre-encoded tokens. Numbers are env steps scored per second (steps with a full window).

    .venv/bin/python benchmarks/bench_reward.py                  # CPU, paper_dmc sizes, writes results
    .venv/bin/python benchmarks/bench_reward.py --device cuda --steps 512 --naive-steps 64
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from viper import config as config_lib
from viper.models.prior_checkpoint import LoadedPrior
from viper.models.videogpt import VideoGPT
from viper.models.vqgan import VQGAN, Tokenizer, VQGANArch, weights_hash
from viper.reward import VideoReward
from viper.reward.reference import score_per_window
from viper.train.prior import spec_for

TASK = "dmc/cartpole_balance"


def build(preset: str, mode: str, windows_per_batch: int, device: str) -> VideoReward:
    cfg = config_lib.load(preset, params_path=None)
    torch.manual_seed(0)
    vqgan = VQGAN(VQGANArch.from_config(cfg.tokenizer))
    tokenizer = Tokenizer(vqgan, weights_hash(vqgan.state_dict()), device=device)
    codebook = tokenizer.codebook.cpu()
    spec = spec_for(cfg.prior, tokenizer.grid, codebook, num_tasks=1)
    prior = VideoGPT(spec, codebook).to(device).eval().requires_grad_(False)
    loaded = LoadedPrior(prior, (TASK,), tokenizer.hash, cfg.prior.seq_len, cfg.prior.frame_skip, 0, Path("bench"))
    reward_cfg = config_lib.RewardConfig(mode=mode, windows_per_batch=windows_per_batch, device=device)
    return VideoReward(tokenizer, loaded, reward_cfg)


def cpu_name() -> str:
    """CPU model and core count (``/proc/cpuinfo`` on Linux)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    except OSError:
        names = []
    return f"{names[0] if names else platform.processor() or 'CPU'} ({os.cpu_count()} cores)"


def frames_for(steps: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (1, steps, 64, 64, 3), dtype=np.uint8)


def interleaved(fns: dict[str, object], rounds: int) -> dict[str, float]:
    """Best wall time per function over ``rounds``, calling them in turn (after one warm-up call each), so
    that load from other processes on this shared machine hits every path alike."""
    for fn in fns.values():
        fn()
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(rounds):
        for name, fn in fns.items():
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


@torch.inference_mode()
def prior_per_window(reward: VideoReward, tokens: torch.Tensor, task_id: torch.Tensor) -> None:
    for t in range(reward.window_frames - 1, tokens.shape[1]):
        window = tokens[:, t - (reward.seq_len - 1) * reward.frame_skip : t + 1 : reward.frame_skip]
        reward.prior.frame_log_probs(window, task_id)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="paper_dmc")
    parser.add_argument("--mode", default="joint", choices=["joint", "conditional"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=79, help="episode steps scored by the batched scorer")
    parser.add_argument("--naive-steps", type=int, default=23, help="episode steps scored by the naive loop")
    parser.add_argument("--windows-per-batch", type=int, default=16, help="16 suits CPU caches; 64+ for GPUs")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved rounds; the best time counts")
    parser.add_argument(
        "--output", default="benchmarks/results/reward.md", help="Markdown file to append to ('' = none)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    reward = build(args.preset, args.mode, args.windows_per_batch, args.device)
    first = reward.window_frames - 1
    long, short = frames_for(args.steps), frames_for(args.naive_steps)
    n_long, n_short = args.steps - first, args.naive_steps - first
    assert n_short > 0 and n_long > 0, f"episodes need more than {first} steps"

    # Same numbers from both paths (a cheap guard that the benchmark compares equal work). On CUDA the prior runs
    # under bf16 autocast, whose different batching rounds differently: a relative tolerance there.
    tol = {"rtol": 2e-3} if reward.device.type == "cuda" else {"atol": 5e-3}
    np.testing.assert_allclose(reward.score(short, TASK), score_per_window(reward, short, TASK), **tol)
    tokens = reward.encode(torch.as_tensor(long[0])).reshape(1, args.steps, *reward.tokenizer.grid)
    task_id = torch.tensor([0], device=reward.device)
    best = interleaved(
        {
            "naive": lambda: score_per_window(reward, short, TASK),
            "batched": lambda: reward.score(long, TASK),
            "prior_naive": lambda: prior_per_window(reward, tokens[:, : args.naive_steps], task_id),
            "prior_batched": lambda: reward.score_tokens(tokens, TASK),
            "encode": lambda: reward.encode(torch.as_tensor(long[0])),
        },
        args.repeats,
    )
    naive, batched, prior_naive, prior_batched, encode = (
        best[k] for k in ("naive", "batched", "prior_naive", "prior_batched", "encode")
    )
    rows = [
        ("end to end: naive per-window loop (encode window + prior)", n_short / naive),
        ("end to end: batched VideoReward.score", n_long / batched),
        ("prior only: one window per forward", n_short / prior_naive),
        (f"prior only: {args.windows_per_batch} windows per forward", n_long / prior_batched),
        ("tokenizer only: encode every frame once (frames/s)", args.steps / encode),
    ]
    spec = reward.prior.spec
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else cpu_name()
    lines = [
        f"## {args.preset} sizes, {args.mode} reward, {args.device} ({datetime.date.today().isoformat()})",
        "",
        f"Command: `.venv/bin/python benchmarks/bench_reward.py --preset {args.preset} --mode {args.mode} "
        f"--device {args.device} --threads {args.threads} --steps {args.steps} --naive-steps {args.naive_steps} "
        f"--windows-per-batch {args.windows_per_batch}`",
        f"Machine: {device}, {args.threads} torch threads, torch {torch.__version__}, float32"
        + (" (bf16 autocast on the prior)" if args.device.startswith("cuda") else ""),
        f"Prior: d {spec.d_model}, {spec.layers} layers, {spec.heads} heads, MLP {spec.mlp_dim}, "
        f"{reward.seq_len} frames x {spec.grid[0]}x{spec.grid[1]} tokens, K {spec.codebook_size}; "
        f"window {reward.window_frames} steps",
        "",
        "| path | env steps/s |",
        "|---|---|",
        *[f"| {name} | {value:.2f} |" for name, value in rows],
        "",
        f"Speed-up end to end: **{(n_long / batched) / (n_short / naive):.2f}x**; "
        f"prior only: **{(n_long / prior_batched) / (n_short / prior_naive):.2f}x**.",
        "",
    ]
    print("\n".join(lines))
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        with Path(args.output).open("a") as fh:
            fh.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
