"""Tokenizer training and encoding speed: images/s per preset (tiny, demo; paper_dmc when a GPU is present).

    .venv/bin/python benchmarks/bench_tokenizer.py [--threads 2] [--steps 10] [--out benchmarks/results/tokenizer.md]

Times full ``TokenizerTrainer.step`` updates (VQ-GAN forward/backward + AdamW, and the discriminator update with
R1 when the preset's GAN is on) after warm-up steps, then ``Tokenizer.encode`` throughput (the ``tokenize``
stage's inner loop). Frames are random uint8: speed does not depend on content. On CUDA the presets run with
bf16 autocast, as training does. Writes a Markdown table to ``--out`` (and prints it).
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

from viper import config, runtime
from viper.models.vqgan import Tokenizer
from viper.train import common
from viper.train.tokenizer import TokenizerTrainer


def time_training(preset: str, overrides: list[str], steps: int, warmup: int) -> tuple[float, float, int]:
    """(images/s, s/update, batch) of ``steps`` timed updates after ``warmup`` untimed ones."""
    cfg = config.load(preset, overrides, params_path=None).tokenizer
    ctx = common.setup_distributed()
    trainer = TokenizerTrainer(cfg, ctx)
    frames = np.random.default_rng(0).integers(0, 256, (cfg.batch_size, 64, 64, 3), dtype=np.uint8)
    for step in range(warmup):
        trainer.step(cfg.gan_start_grad_steps + step, frames)
    if ctx.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for step in range(steps):
        trainer.step(cfg.gan_start_grad_steps + warmup + step, frames)
    if ctx.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / steps
    return cfg.batch_size / seconds, seconds, cfg.batch_size


def time_encoding(preset: str, overrides: list[str], frames_n: int) -> float:
    cfg = config.load(preset, overrides, params_path=None).tokenizer
    from viper.models.vqgan import VQGAN

    device = runtime.resolve_device("auto", "device")
    tok = Tokenizer(VQGAN.from_config(cfg), "bench", device, batch_size=cfg.tokenize_batch_frames)
    frames = torch.randint(0, 256, (frames_n, 64, 64, 3), dtype=torch.uint8)
    tok.encode(frames[: min(64, frames_n)])
    start = time.perf_counter()
    with common.autocast(device, cfg.bf16):
        tok.encode(frames)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return frames_n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--steps", type=int, default=10, help="timed updates per preset")
    parser.add_argument("--warmup", type=int, default=3, help="untimed updates first")
    parser.add_argument("--encode-frames", type=int, default=1024, help="frames encoded for the encode rate")
    parser.add_argument("--out", default="benchmarks/results/tokenizer.md", help="Markdown results file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cases = [
        ("tiny", [], "tiny (GAN + R1 on)"),
        ("tiny", ["tokenizer.gan_weight=0.0"], "tiny, GAN off"),
        ("demo", [], "demo (GAN off in the preset)"),
        ("demo", ["tokenizer.gan_weight=0.1"], "demo with the GAN switched on"),
    ]
    if torch.cuda.is_available():
        cases.append(("paper_dmc", [], "paper_dmc (published sizes, bf16)"))
        cases.append(("paper_atari", [], "paper_atari (published sizes, bf16)"))
    rows = []
    for preset, overrides, label in cases:
        images_s, s_update, batch = time_training(preset, overrides, args.steps, args.warmup)
        encode_s = time_encoding(preset, overrides, args.encode_frames)
        rows.append(f"| {label} | {batch} | {s_update:.3f} | {images_s:.0f} | {encode_s:.0f} |")
        print(rows[-1], flush=True)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {args.threads} torch threads"
    text = "\n".join(
        [
            "# Tokenizer speed",
            "",
            f"Command: `.venv/bin/python benchmarks/bench_tokenizer.py --threads {args.threads} "
            f"--steps {args.steps}`  ",
            f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; {device}; "
            f"torch {torch.__version__}  ",
            f"Date: {datetime.date.today().isoformat()}",
            "",
            "| preset | batch | s / update | training images/s | encode frames/s |",
            "|---|---|---|---|---|",
            *rows,
            "",
        ]
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
