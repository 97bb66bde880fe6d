"""Checkpoint folders: done marker, latest pointer, keep N, torn writes, fingerprints, RNG round trip."""

from __future__ import annotations

import os
import random
import signal
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from viper.checkpoint import Checkpointer, rng_state, set_rng_state
from viper.errors import ViperError
from viper.signals import StopSignals


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


def test_a_step_saved_again_replaces_its_folder_and_a_kill_between_the_renames_loses_nothing(tmp_path, monkeypatch):
    """A resumed run saves the step it loaded again (the updates and the evaluation a stop cut short). The old
    folder was deleted before the new one took its name, so a kill in between lost the step; it is renamed now."""
    ckpt = Checkpointer(tmp_path, keep=2)
    ckpt.save(5, {"step": 5, "evaluated": False})
    ckpt.save(5, {"step": 5, "evaluated": True})
    assert ckpt.load_latest()[0]["evaluated"] and not list(tmp_path.glob(".replaced_*"))
    # The kill after the first rename: the step's complete folder is only under its hidden name.
    (tmp_path / "step_000000005").rename(tmp_path / ".replaced_step_000000005")
    state, path = Checkpointer(tmp_path, keep=2).load_latest()
    assert state["evaluated"] and path.name == "step_000000005"
    assert not list(tmp_path.glob(".replaced_*"))


def save_with_replay(folder):
    """An agent-like checkpoint's extra files: a replay array in a sub-folder."""
    (folder / "replay").mkdir()
    np.save(folder / "replay" / "image.npy", np.arange(4000, dtype=np.uint8))


@pytest.mark.parametrize("damage", ["truncated", "flipped", "replay"])
def test_an_unreadable_checkpoint_is_kept_aside_and_the_one_before_it_resumes(tmp_path, damage):
    """Bytes lost after `done` (a crash before the disk flushed): torch.load's traceback ended every resume, and
    a zeroed stretch of tensor or replay bytes loaded silently. Every file's checksum is checked now: the folder
    moves to damaged/ (nothing deleted) and the previous checkpoint loads; with none left, an error names the
    folder instead of a silent fresh start."""
    ckpt = Checkpointer(tmp_path, keep=3)
    for step in (1, 2):
        ckpt.save(step, {"step": step, "w": torch.arange(1000.0)}, extra=save_with_replay)
    state_file = tmp_path / "step_000000002" / ("replay/image.npy" if damage == "replay" else "state.pt")
    data = bytearray(state_file.read_bytes())
    if damage == "truncated":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 3 : len(data) // 3 + 64] = bytes(64)  # zeroed bytes inside the archive / array
    state_file.write_bytes(bytes(data))
    state, path = ckpt.load_latest()
    assert state["step"] == 1 and path.name == "step_000000001"
    kept = tmp_path / "damaged" / "step_000000002" / state_file.relative_to(tmp_path / "step_000000002")
    assert kept.read_bytes() == bytes(data)
    (path / "state.pt").write_bytes(b"")
    with pytest.raises(ViperError, match="no readable checkpoint left; the unreadable ones are in .*damaged"):
        ckpt.load_latest()


def test_a_damaged_checkpoint_of_other_settings_does_not_block_a_fresh_start(tmp_path):
    """Only this run's own damaged checkpoints stop a fresh start; a DDP rank > 0 never moves a checkpoint (rank 0
    loaded that file: a fault on another rank is that rank's, and moving it would split the ranks' steps)."""
    old = Checkpointer(tmp_path, fingerprint={"lr": 1})
    old.save(1, {"step": 1})
    (tmp_path / "step_000000001" / "state.pt").write_bytes(b"torn")
    with pytest.raises(ViperError, match="cannot be read on this rank"):
        old.load_latest(set_aside=False)
    assert (tmp_path / "step_000000001").is_dir()
    with pytest.raises(ViperError, match="no readable checkpoint left"):
        old.load_latest()
    assert Checkpointer(tmp_path, fingerprint={"lr": 2}).load_latest() is None  # other settings start anew


def test_fingerprint_mismatch_starts_fresh_and_keeps_the_old_run_in_superseded(tmp_path):
    Checkpointer(tmp_path, fingerprint={"layers": 2}).save(100, {"step": 100})
    assert Checkpointer(tmp_path, fingerprint={"layers": 2}).load_latest()[0]["step"] == 100
    changed = Checkpointer(tmp_path, fingerprint={"layers": 3})
    assert changed.load_latest() is None
    assert "(layers: 2 -> 3)" in changed.stale_message("tokenizer")
    changed.save(1, {"step": 1})
    assert [p.name for p in changed.complete()] == ["step_000000001"] and changed.stale() == []
    # The old run is not deleted: it sits complete in superseded/ (the next test resumes it from there).
    kept = tmp_path / "superseded" / "step_000000100"
    assert (kept / "done").exists() and torch.load(kept / "state.pt")["step"] == 100
    # A second change away supersedes the new run too, beside the first (same step name: suffixed, not replaced).
    Checkpointer(tmp_path, fingerprint={"layers": 2}).save(1, {"step": 1})
    assert (tmp_path / "superseded" / "step_000000001").exists() and kept.exists()
    back = Checkpointer(tmp_path, fingerprint={"layers": 4})
    back.save(5, {"step": 5})
    assert (tmp_path / "superseded" / "step_000000001.1").exists()


def test_settings_changed_back_resume_the_superseded_run(tmp_path):
    """A mistyped setting supersedes a run at its first save; the right settings again must not start over."""
    Checkpointer(tmp_path, fingerprint={"layers": 2}).save(100, {"step": 100})
    Checkpointer(tmp_path, fingerprint={"layers": 2}).save(200, {"step": 200})
    Checkpointer(tmp_path, fingerprint={"layers": 3}).save(10, {"step": 10})
    assert not list(tmp_path.glob("step_0000001*")) and not list(tmp_path.glob("step_0000002*"))
    back = Checkpointer(tmp_path, fingerprint={"layers": 2})
    message = back.stale_message("agent")
    assert "(layers: 3 -> 2); resuming superseded/step_000000200, made with these settings" in message
    state, folder = back.load_latest()
    assert state["step"] == 200 and folder == tmp_path / "step_000000200" and back.loads == 1
    assert (tmp_path / "latest").read_text() == "step_000000200"
    # The other settings' run is set aside in its turn; the older matching one (a kept best, say) comes back too.
    assert (tmp_path / "superseded" / "step_000000010" / "done").exists()
    assert not (tmp_path / "superseded" / "step_000000100").exists()
    assert [p.name for p in back.complete()] == ["step_000000100", "step_000000200"] and back.stale() == []
    # Nothing of these settings anywhere: a fresh start, as before.
    assert Checkpointer(tmp_path, fingerprint={"layers": 4}).load_latest() is None


def test_a_setting_added_later_at_its_default_keeps_old_checkpoints_resumable(tmp_path):
    """The seventh session added agent.compile_mode; a run checkpointed before it must resume, not start over."""
    Checkpointer(tmp_path, fingerprint={"agent": {"lr": 1e-4}, "task": "t"}).save(7, {"step": 7})
    defaults = {"agent": {"lr": 3e-4, "mode": "default"}}
    same = Checkpointer(
        tmp_path, fingerprint={"agent": {"lr": 1e-4, "mode": "default"}, "task": "t"}, defaults=defaults
    )
    assert same.load_latest()[0]["step"] == 7 and same.stale_message("agent") is None
    off_default = Checkpointer(
        tmp_path, fingerprint={"agent": {"lr": 1e-4, "mode": "fast"}, "task": "t"}, defaults=defaults
    )
    assert off_default.load_latest() is None
    assert off_default.changes(tmp_path / "step_000000007") == ["agent.mode: (not recorded) -> 'fast'"]
    # A setting the code no longer has is a change too (its old value cannot be reproduced).
    removed = Checkpointer(tmp_path, fingerprint={"agent": {"mode": "default"}, "task": "t"}, defaults=defaults)
    assert removed.changes(tmp_path / "step_000000007") == ["agent.lr: 0.0001 -> (no longer a setting)"]


def test_agent_fingerprint_defaults_cover_every_run_shaping_setting():
    from viper.agent.rewards import TaskReward
    from viper.agent.run_spec import fingerprint, fingerprint_defaults
    from viper.config import AgentConfig

    current = fingerprint(AgentConfig(), "dmc/cartpole_balance", TaskReward())
    checker = Checkpointer("unused", fingerprint=current, defaults=fingerprint_defaults(TaskReward()))
    # A checkpoint written before any one of the settings existed resumes under the defaults.
    for key in current["agent"]:
        old = {**current, "agent": {k: v for k, v in current["agent"].items() if k != key}}
        assert checker.changes_from(old) == []
    # A run-shaping setting changed is named; a resumable one (a longer run, another device) is not recorded.
    changed = fingerprint(AgentConfig(model_lr=2e-4), "dmc/cartpole_balance", TaskReward())
    assert Checkpointer("unused", fingerprint=changed).changes_from(current) == ["agent.model_lr: 0.0001 -> 0.0002"]
    assert fingerprint(AgentConfig(env_steps=123, device="cpu"), "dmc/cartpole_balance", TaskReward()) == current


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


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (a GPU session)")
def test_rng_state_saved_on_more_gpus_restores_on_fewer():
    """A checkpoint of an 8-GPU node resumed on this machine: ``set_rng_state_all`` raised IndexError on the
    first GPU the machine lacks; the GPUs it has get their states."""
    state = rng_state()
    expected = torch.rand(4, device="cuda")
    state["cuda"] = list(state["cuda"]) + [torch.cuda.get_rng_state(0)] * 8  # more GPUs than this machine has
    set_rng_state(state)
    torch.testing.assert_close(torch.rand(4, device="cuda"), expected)


def test_a_save_puts_every_file_on_disk_before_its_done_marker(tmp_path, monkeypatch):
    """Only the folder was fsynced: after a host crash the ``done`` marker (and the rename) could reach the disk
    before the data, leaving a folder taken as complete whose state.pt is empty."""
    from viper import file_integrity

    synced, real_fsync_file = [], file_integrity.fsync_file

    def record(path):
        synced.append((Path(path).relative_to(tmp_path / "ck").as_posix(), (Path(path).parent / "done").exists()))
        real_fsync_file(path)

    monkeypatch.setattr(file_integrity, "fsync_file", record)

    def extra(folder):
        (folder / "replay").mkdir()
        (folder / "replay" / "block.npy").write_bytes(b"x" * 100)

    Checkpointer(tmp_path / "ck").save(3, {"w": torch.zeros(4)}, extra=extra)
    names = [name.split("/", 1)[1] for name, _ in synced]
    assert {"state.pt", "checksums.json", "replay/block.npy"} <= set(names) and names[-1] == "done"
    assert all(not done_existed for name, done_existed in synced if not name.endswith("/done")), synced
