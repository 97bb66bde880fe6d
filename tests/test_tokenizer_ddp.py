"""Data-parallel training on 2 CPU processes (gloo): the tokenizer's replicas stay identical, ranks draw their
own random numbers and each resumes its own stream, and the batch must divide among the ranks."""

from __future__ import annotations

import json
import os
import signal
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from viper import config, paths
from viper.errors import ViperError
from viper.models.vqgan import load_tokenizer
from viper.signals import StopSignals
from viper.train import common, tokenizer
from viper.train.frames import ArrayFrames


def _ddp_worker(rank: int, world: int, port: int, data_dir: str, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    over = ("tokenizer.train_grad_steps=4", "tokenizer.dead_code_restart=true",
            "tokenizer.dead_code_every_grad_steps=2", "tokenizer.kmeans_init=true")  # fmt: skip
    cfg = config.load("tiny", [f"data_dir={data_dir}", *over], params_path=None)
    # Different frames per rank: only gradient averaging can keep the replicas identical.
    frames = np.random.default_rng(rank).integers(0, 256, (16, 64, 64, 3), dtype=np.uint8)
    result = tokenizer.run(cfg, frames=ArrayFrames(frames), progress=False)
    Path(out, f"rank{rank}").write_text(result["tokenizer_hash"])


def test_ddp_two_cpu_processes_stay_in_sync(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(_ddp_worker, args=(2, port, str(tmp_path), str(tmp_path)), nprocs=2, join=True)
    hashes = {(tmp_path / f"rank{r}").read_text() for r in range(2)}
    assert len(hashes) == 1
    saved = load_tokenizer(paths.tokenizer_dir(tmp_path, "dmc"))
    assert saved.hash in hashes
    # The checkpoint holds each rank's own RNG state (they differ: ranks draw different random numbers).
    state = torch.load(
        sorted(paths.tokenizer_dir(tmp_path, "dmc").glob("checkpoints/step_*/state.pt"))[-1], weights_only=False
    )
    assert len(state["rng_ranks"]) == 2
    assert not torch.equal(state["rng_ranks"][0]["torch"], state["rng_ranks"][1]["torch"])


def _rng_worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    ctx = common.setup_distributed("cpu")
    try:
        common.seed_torch(7)
        weights = torch.rand(4)  # the shared initial weights
        common.decorrelate_ranks(7, ctx)
        first = torch.rand(4)  # e.g. dropout masks
        states = common.broadcast_object(common.gather_rng_states(ctx), ctx)
        after_save = torch.rand(4)
        common.restore_rng({"rng": states[0], "rng_ranks": states}, 7, ctx)
        resumed = torch.rand(4)
        common.restore_rng({"rng": states[0]}, 7, ctx)  # a checkpoint without per-rank states
        old_format = torch.rand(4)
        torch.save(dict(weights=weights, first=first, after_save=after_save, resumed=resumed, old=old_format),
                   Path(out, f"rank{rank}.pt"))  # fmt: skip
    finally:
        common.teardown_distributed(ctx)


def test_ranks_draw_different_random_numbers_and_each_resumes_its_own(tmp_path):
    """DDP: dropout masks must differ across ranks (the initial weights agree), and a resume gives every rank
    back its own stream, not rank 0's."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(_rng_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    assert torch.equal(r0["weights"], r1["weights"])
    assert not torch.equal(r0["first"], r1["first"])
    for r in (r0, r1):
        assert torch.equal(r["resumed"], r["after_save"])
    assert not torch.equal(r0["old"], r1["old"])
    assert torch.equal(r0["old"], r0["after_save"])  # rank 0 keeps its stream
    torch.manual_seed(7)
    torch.rand(4)
    assert torch.equal(r0["first"], torch.rand(4))  # a single process's draws are unchanged


def _stop_worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    ctx = common.setup_distributed("cpu")
    try:
        stop = StopSignals()
        seen = [common.stop_signal(stop, ctx, common.STOP_POLL_UPDATES)]
        if rank == 1:
            stop.signum = int(signal.SIGTERM)  # as its handler records a signal that reached this rank alone
        seen.append(common.stop_signal(stop, ctx, common.STOP_POLL_UPDATES + 1))  # between polls: no collective
        seen.append(common.stop_signal(stop, ctx, 2 * common.STOP_POLL_UPDATES))
        Path(out, f"stop{rank}").write_text(json.dumps(seen))
    finally:
        common.teardown_distributed(ctx)


def test_a_stop_signal_that_reached_one_rank_stops_every_rank_at_the_same_update(tmp_path):
    """DDP: a rank that saw no signal must still join the stop save (a lone rank would wait in the next
    all-reduce forever, and rank 0 alone writes the checkpoint)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(_stop_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        assert json.loads((tmp_path / f"stop{rank}").read_text()) == [None, None, int(signal.SIGTERM)]


def test_ranks_must_divide_the_global_batch():
    """Tokenizer and prior share one check: a batch the ranks do not divide is refused, naming the key."""
    three = common.DistContext(rank=1, world_size=3, local_rank=1, device=torch.device("cpu"), owns_group=False)
    assert common.rank_batch("prior.batch_size", 63, three) == 21
    with pytest.raises(ViperError, match="prior.batch_size=64 must be divisible by 3 ranks"):
        common.rank_batch("prior.batch_size", 64, three)
