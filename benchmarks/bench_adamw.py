"""Optimiser step time of the tokenizer's and prior's AdamW (``viper.train.adamw.OptaxAdamW``) on a preset's models.

    .venv/bin/python benchmarks/bench_adamw.py --presets demo paper_dmc --device cpu --steps 20

Times ``optimizer.step()`` alone (gradients are random and set once) for the VQ-GAN generator and the VideoGPT prior
of each preset: OptaxAdamW parameter by parameter (its default on the CPU) and as multi-tensor kernels (its default
on GPUs: one launch per op, whatever the number of parameter tensors), against ``torch.optim.AdamW`` with
``foreach=True`` (torch's default on CUDA) and ``foreach=False``. Reports milliseconds per step (median
of ``--repeats`` timings of ``--steps`` steps) and the parameter-tensor count.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from viper import config as config_lib
from viper.models.videogpt import VideoGPT
from viper.models.vqgan import VQGAN, Tokenizer, VQGANArch, weights_hash
from viper.train.adamw import OptaxAdamW
from viper.train.prior import spec_for


def _models(preset: str) -> dict[str, torch.nn.Module]:
    cfg = config_lib.load(preset, params_path=None)
    torch.manual_seed(0)
    vqgan = VQGAN(VQGANArch.from_config(cfg.tokenizer))
    tokenizer = Tokenizer(vqgan, weights_hash(vqgan.state_dict()), device="cpu")
    codebook = tokenizer.codebook.cpu()
    prior = VideoGPT(spec_for(cfg.prior, tokenizer.grid, codebook, num_tasks=2), codebook)
    return {"tokenizer (VQ-GAN)": vqgan, "prior (VideoGPT)": prior}


def _time(make, params: list[torch.Tensor], steps: int, repeats: int, device: torch.device) -> float:
    opt = make(params)
    for _ in range(3):  # state allocation and warm-up
        opt.step()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(steps):
            opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) / steps)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["demo", "paper_dmc"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device = torch.device(args.device)
    optimizers = {
        "OptaxAdamW per parameter": lambda ps: OptaxAdamW(ps, lr=1e-4, weight_decay=1e-4, foreach=False),
        "OptaxAdamW multi-tensor": lambda ps: OptaxAdamW(ps, lr=1e-4, weight_decay=1e-4, foreach=True),
        "torch AdamW foreach": lambda ps: torch.optim.AdamW(ps, lr=1e-4, weight_decay=1e-4, foreach=True),
        "torch AdamW loop": lambda ps: torch.optim.AdamW(ps, lr=1e-4, weight_decay=1e-4, foreach=False),
    }
    print(f"device {device} ({torch.__version__}, {torch.get_num_threads()} threads)")
    print("| preset | model | tensors | params (M) | " + " | ".join(f"{k} ms/step" for k in optimizers) + " |")
    print("|---|---|---|---|" + "---|" * len(optimizers))
    for preset in args.presets:
        for name, model in _models(preset).items():
            params = [p for p in model.to(device).parameters() if p.requires_grad]
            g = torch.Generator(device=device).manual_seed(0)
            for p in params:
                p.grad = torch.randn(p.shape, generator=g, device=device) * 1e-3
            ms = [_time(make, params, args.steps, args.repeats, device) for make in optimizers.values()]
            count = sum(p.numel() for p in params) / 1e6
            cells = " | ".join(f"{m:.2f}" for m in ms)
            print(f"| {preset} | {name} | {len(params)} | {count:.1f} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
