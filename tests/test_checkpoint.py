"""Checkpoint folders: done marker, latest pointer, keep N, torn writes, fingerprints, RNG round trip."""

from __future__ import annotations

import os
import random
import signal
import threading

import numpy as np
import pytest
import torch

from viper.checkpoint import Checkpointer, StopSignals, rng_state, set_rng_state


def test_save_load_keep_and_latest(tmp_path):
    ckpt = Checkpointer(tmp_path, keep=2)
    assert ckpt.load_latest() is None
    for step in (10, 20, 30):
        ckpt.save(step, {"step": step, "w": torch.full((3,), float(step))})
    names = [p.name for p in ckpt.complete()]
    assert names == ["step_000000020", "step_000000030"]
    state, path = ckpt.load_latest()
    assert state["step"] == 30 and path.name == "step_000000030" and ckpt.loads == 1
    assert (tmp_path / "latest").read_text() == "step_000000030"


def test_torn_checkpoint_is_ignored_and_cleaned(tmp_path):
    ckpt = Checkpointer(tmp_path, keep=3)
    ckpt.save(5, {"step": 5})
    # A kill mid-write leaves a folder without `done` and a temp folder; neither may be loaded.
    (tmp_path / "step_000000009").mkdir()
    (tmp_path / "step_000000009" / "state.pt").write_bytes(b"truncated")
    (tmp_path / ".tmp_step_000000010").mkdir()
    (tmp_path / "latest").write_text("step_000000009")
    state, path = ckpt.load_latest()
    assert state["step"] == 5
    ckpt.save(6, {"step": 6})
    assert not (tmp_path / "step_000000009").exists() and not (tmp_path / ".tmp_step_000000010").exists()


def test_fingerprint_mismatch_starts_fresh(tmp_path):
    Checkpointer(tmp_path, fingerprint={"layers": 2}).save(100, {"step": 100})
    assert Checkpointer(tmp_path, fingerprint={"layers": 2}).load_latest()[0]["step"] == 100
    changed = Checkpointer(tmp_path, fingerprint={"layers": 3})
    assert changed.load_latest() is None
    changed.save(1, {"step": 1})
    assert [p.name for p in changed.complete()] == ["step_000000001"]
    assert not (tmp_path / "step_000000100").exists()


def test_rng_state_round_trip():
    state = rng_state()
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == pytest.approx(first)


def test_stop_signals_turn_sigterm_into_a_request_and_restore_the_handler():
    before, before_int = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with StopSignals() as stop:
        os.kill(os.getpid(), signal.SIGTERM)  # would end the test process without the handler
        assert stop.signum == signal.SIGTERM
        # A second SIGTERM would act as usual: the handler gave way to the previous one.
        assert signal.getsignal(signal.SIGTERM) is before
    assert signal.getsignal(signal.SIGTERM) is before and signal.getsignal(signal.SIGINT) is before_int

    # Off the main thread Python cannot install handlers: the context does nothing rather than fail.
    seen = []

    def worker():
        with StopSignals() as stop:
            seen.append(stop.signum)

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen == [None] and signal.getsignal(signal.SIGTERM) is before
