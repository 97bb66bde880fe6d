"""train-tokenizer: overfitting, exact resume (in process and after SIGKILL), mismatched checkpoints, batches from a
real Zarr store (DDP on 2 CPU processes: test_tokenizer_ddp.py; the tokenize stage: test_tokenize.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from viper import config, paths
from viper.data.store import open_store
from viper.errors import Stopped, ViperError
from viper.models.vqgan import load_tokenizer
from viper.train import common, tokenizer
from viper.train.frames import ArrayFrames, StoreFrames

ROOT = Path(__file__).resolve().parents[1]
TASKS = ("dmc/cartpole_balance", "dmc/cartpole_swingup")


def synthetic_frames(n: int, seed: int = 0) -> np.ndarray:
    """Coloured rectangles on a flat background: structured, varied, cheap (uint8 (n, 64, 64, 3))."""
    rng = np.random.default_rng(seed)
    frames = np.empty((n, 64, 64, 3), np.uint8)
    for i in range(n):
        frames[i] = rng.integers(0, 256, 3)
        for _ in range(3):
            y, x = rng.integers(0, 48, 2)
            h, w = rng.integers(6, 16, 2)
            frames[i, y : y + h, x : x + w] = rng.integers(0, 256, 3)
    return frames


def tiny_cfg(data_dir: Path, *overrides: str) -> config.Config:
    return config.load("tiny", [f"data_dir={data_dir}", *overrides], params_path=None)


def test_tiny_preset_overfits_a_fixed_batch():
    """Tiny widths, GAN off (it only sharpens), lr raised: test L1 on [0, 1] pixels < 0.10 within 120 updates."""
    cfg = tiny_cfg(Path("unused"), "tokenizer.lr=3e-3", "tokenizer.gan_weight=0.0", "tokenizer.warmup_grad_steps=10")
    trainer = tokenizer.TokenizerTrainer(cfg.tokenizer, common.setup_distributed())
    frames = synthetic_frames(4)
    start, _ = trainer.evaluate(frames)
    for step in range(120):
        trainer.step(step, frames)
    end, recon = trainer.evaluate(frames)
    assert start["recon_l1"] > 0.15
    assert end["recon_l1"] < 0.10, end
    assert end["psnr_db"] > start["psnr_db"] + 3
    assert recon.shape == frames.shape and recon.dtype == np.uint8


def test_generator_loss_is_the_published_sum_and_r1_is_lazy():
    """loss = L1 + VQ (codebook + 0.25 commitment) + gan_weight x generator loss (LPIPS off without its weights);
    the R1 penalty is applied every r1_every_grad_steps updates only."""
    over = ("tokenizer.gan_weight=0.3", "tokenizer.gan_start_grad_steps=0", "tokenizer.r1_every_grad_steps=3")
    cfg = tiny_cfg(Path("unused"), *over).tokenizer
    trainer = tokenizer.TokenizerTrainer(cfg, common.setup_distributed())
    assert trainer.perceptual is None
    frames = synthetic_frames(4)
    for step in range(4):
        stats = {k: float(v) for k, v in trainer.step(step, frames).items()}
        by_hand = stats["loss/recon_l1"] + stats["loss/vq"] + 0.3 * stats["loss/gan_g"]
        assert stats["loss/total"] == pytest.approx(by_hand, rel=1e-5), step
        assert (stats["loss/r1"] != 0) == (step % 3 == 0), (step, stats["loss/r1"])


@pytest.mark.parametrize("fake", ["updated", "reused"])
def test_discriminator_scores_the_reconstruction_the_setting_names(fake):
    """Released: the discriminator's fakes come from the VQ-GAN after this step's update (``updated``)."""
    from viper.models.vqgan import frames_to_model

    over = ("tokenizer.gan_weight=0.1", "tokenizer.gan_start_grad_steps=0", f"tokenizer.disc_fake={fake}",
            "tokenizer.warmup_grad_steps=1", "tokenizer.lr=1e-2")  # fmt: skip
    trainer = tokenizer.TokenizerTrainer(tiny_cfg(Path("unused"), *over).tokenizer, common.setup_distributed())
    frames = synthetic_frames(4)
    x = frames_to_model(frames, "cpu")
    before = trainer._reconstruct(x)
    seen, disc = [], trainer.d
    trainer.d = lambda batch: (seen.append(batch[len(x) :].detach().clone()), disc(batch))[1]  # records, then scores
    trainer.step(5, frames)  # past the warm-up (its lr starts at 0)
    after = trainer._reconstruct(x)
    assert not torch.allclose(before, after)  # the generator moved
    torch.testing.assert_close(seen[0], after if fake == "updated" else before, rtol=1e-5, atol=1e-6)


def test_resume_continues_exactly(tmp_path):
    """Stop at 6 of 12 updates, re-run: one load, step continues, same weights as an uninterrupted run."""
    frames = ArrayFrames(synthetic_frames(24, 1), synthetic_frames(8, 2))
    over = (
        "tokenizer.train_grad_steps=12",
        "tokenizer.eval_every_grad_steps=6",
        "tokenizer.checkpoint_every_grad_steps=6",
        "tokenizer.gan_start_grad_steps=3",
        "tokenizer.r1_every_grad_steps=2",
    )
    first = tokenizer.run(tiny_cfg(tmp_path / "a", *over), frames=frames, stop_at_grad_steps=6, progress=False)
    assert first["step"] == 6 and first["checkpoint_loads"] == 0
    resumed = tokenizer.run(tiny_cfg(tmp_path / "a", *over), frames=frames, progress=False)
    assert resumed["checkpoint_loads"] == 1 and resumed["start_step"] == 6 and resumed["step"] == 12
    straight = tokenizer.run(tiny_cfg(tmp_path / "b", *over), frames=frames, progress=False)
    assert straight["tokenizer_hash"] == resumed["tokenizer_hash"]
    run_dir = Path(resumed["run_dir"])
    assert (run_dir / "plots" / "reconstructions.png").stat().st_size > 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["step"] == 12 and 0 < metrics["recon_l1"] < 1 and metrics["psnr_db"] > 0
    logged = (run_dir / "logs" / "metrics.jsonl").read_text()
    assert "tokenizer/eval/psnr_db" in logged and "tokenizer/loss/r1" in logged
    # A finished run re-run does no update and loads once.
    again = tokenizer.run(tiny_cfg(tmp_path / "a", *over), frames=frames, progress=False)
    assert again["start_step"] == 12 and again["tokenizer_hash"] == resumed["tokenizer_hash"]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_stop_signal_saves_the_update_it_stopped_at_and_the_resume_matches_an_uninterrupted_run(
    tmp_path, monkeypatch, signum
):
    """Ctrl-C or a scheduler's SIGTERM during update 5 (checkpoints every 6): the run lost updates 1-5 before;
    now it saves update 5, stops with ``Stopped`` (the CLI exits 128 + signum) and resumes from there exactly."""
    frames = ArrayFrames(synthetic_frames(24, 1), synthetic_frames(8, 2))
    over = ("tokenizer.train_grad_steps=12", "tokenizer.checkpoint_every_grad_steps=6",
            "tokenizer.eval_every_grad_steps=6", "tokenizer.gan_start_grad_steps=3")  # fmt: skip
    real = tokenizer.TokenizerTrainer.step

    def step_then_signal(self, step, batch):
        out = real(self, step, batch)
        if step == 4:  # during the fifth update
            os.kill(os.getpid(), signum)
        return out

    monkeypatch.setattr(tokenizer.TokenizerTrainer, "step", step_then_signal)
    name = signal.Signals(signum).name
    with pytest.raises(Stopped, match=f"stopped by {name} at tokenizer update 5 of 12; checkpoint saved in .*"):
        tokenizer.run(tiny_cfg(tmp_path / "a", *over), frames=frames, progress=False)
    checkpoints = paths.tokenizer_dir(tmp_path / "a", "dmc") / "checkpoints"
    assert (checkpoints / "latest").read_text() == "step_000000005"
    monkeypatch.undo()
    resumed = tokenizer.run(tiny_cfg(tmp_path / "a", *over), frames=frames, progress=False)
    assert resumed["start_step"] == 5 and resumed["step"] == 12
    straight = tokenizer.run(tiny_cfg(tmp_path / "b", *over), frames=frames, progress=False)
    assert straight["tokenizer_hash"] == resumed["tokenizer_hash"]


def test_moving_the_lpips_weights_file_keeps_the_run_resumable(tmp_path):
    """The fingerprint holds the LPIPS weights' sha256, not their path: a moved file resumed nothing before (the
    run was set aside and trained from update 0); other weights still do not resume."""
    from viper.models.lpips import LPIPS

    torch.manual_seed(0)
    torch.save(LPIPS().state_dict(), tmp_path / "vgg_a.pt")
    frames = ArrayFrames(synthetic_frames(8, 1), synthetic_frames(4, 2))
    over = ["tokenizer.train_grad_steps=3", "tokenizer.gan_weight=0", "tokenizer.eval_every_grad_steps=100"]
    cfg = tiny_cfg(tmp_path / "data", *over, f"tokenizer.lpips_weights_path={tmp_path / 'vgg_a.pt'}")
    assert tokenizer.run(cfg, frames=frames, stop_at_grad_steps=2, progress=False)["step"] == 2
    (tmp_path / "vgg_a.pt").rename(tmp_path / "vgg_b.pt")
    cfg = tiny_cfg(tmp_path / "data", *over, f"tokenizer.lpips_weights_path={tmp_path / 'vgg_b.pt'}")
    resumed = tokenizer.run(cfg, frames=frames, progress=False)
    assert resumed["checkpoint_loads"] == 1 and resumed["start_step"] == 2
    torch.manual_seed(1)
    torch.save(LPIPS().state_dict(), tmp_path / "vgg_b.pt")  # other weights at the same path
    assert tokenizer.run(cfg, frames=frames, progress=False)["start_step"] == 0


def test_logged_train_metrics_average_the_updates_since_the_last_log(tmp_path):
    """The logged train losses are means over the log interval (not the logged update's values): replayed
    update by update from the same batches, the discriminator's keys averaged over the updates that had them."""
    frames = ArrayFrames(synthetic_frames(24, 1), synthetic_frames(8, 2))
    over = ("tokenizer.train_grad_steps=6", "tokenizer.log_every_grad_steps=3", "tokenizer.gan_start_grad_steps=2",
            "tokenizer.eval_every_grad_steps=100", "tokenizer.batch_size=4")  # fmt: skip
    cfg = tiny_cfg(tmp_path, *over)
    result = tokenizer.run(cfg, frames=frames, progress=False)
    rows = [json.loads(line) for line in (Path(result["run_dir"]) / "logs" / "metrics.jsonl").read_text().splitlines()]
    logged = {r["step"]: r for r in rows if "tokenizer/loss/total" in r}
    trainer = tokenizer.TokenizerTrainer(cfg.tokenizer, common.setup_distributed())
    stream = frames.batches(4, cfg.tokenizer.seed, 0, 0, 1)
    per_step = [trainer.step(step, next(stream)) for step in range(6)]
    for end in (3, 6):
        window = per_step[end - 3 : end]
        for key in ("loss/total", "loss/recon_l1", "train/perplexity", "loss/disc"):
            values = [float(s[key]) for s in window if key in s]
            assert logged[end][f"tokenizer/{key}"] == pytest.approx(sum(values) / len(values), rel=1e-5), (end, key)
    assert logged[3]["tokenizer/loss/total"] != pytest.approx(float(per_step[2]["loss/total"]), rel=1e-5)


def test_mismatched_checkpoint_is_a_clear_error(tmp_path):
    frames = ArrayFrames(synthetic_frames(16, 3))
    cfg = tiny_cfg(tmp_path, "tokenizer.train_grad_steps=2")
    tokenizer.run(cfg, frames=frames, progress=False)
    run_dir = paths.tokenizer_dir(tmp_path, "dmc")
    tok = load_tokenizer(run_dir, expected=cfg.tokenizer)
    assert tok.codebook_size == 16 and len(tok.hash) == 16
    with pytest.raises(ViperError, match=r"tokenizer\.codebook_size: 32 vs 16"):
        load_tokenizer(run_dir, expected=tiny_cfg(tmp_path, "tokenizer.codebook_size=32").tokenizer)
    with pytest.raises(ViperError, match="no tokenizer checkpoint"):
        load_tokenizer(tmp_path / "nowhere")


def write_store(data_dir: Path, episodes: int = 3, length: int = 12) -> None:
    store = open_store(paths.store(data_dir, "dmc"), "a")
    for t, task in enumerate(TASKS):
        for e in range(episodes):
            frames = synthetic_frames(length, seed=100 * t + e)
            store.append_episode(task, frames, split="test" if e == episodes - 1 else "train")


def test_store_batches_resume_where_an_uninterrupted_run_would_be(tmp_path):
    """Batch s of the store's frame stream depends on (seed, rank, s) alone, across pool refreshes, so a resumed
    tokenizer run trains on the batches an uninterrupted one would (ArrayFrames is tested by the resume test)."""
    write_store(tmp_path, episodes=4)
    source = StoreFrames(paths.store(tmp_path, "dmc"))
    straight = source.batches(64, seed=3, rank=0, start_step=0)
    first = [next(straight) for _ in range(40)]  # 64 a batch: a pool serves 8 updates, so this crosses five
    assert first[0].shape == (64, 64, 64, 3) and not np.array_equal(first[0], first[1])
    for start in (5, 8, 17, 39):
        assert np.array_equal(next(source.batches(64, 3, 0, start)), first[start]), start
    halves = [next(source.batches(32, 3, rank, 5, world_size=2)) for rank in (0, 1)]  # DDP: each rank's share
    assert all(h.shape == (32, 64, 64, 3) for h in halves) and not np.array_equal(*halves)


def test_store_batches_are_task_balanced_as_released(tmp_path):
    """Three tasks of very different lengths, each frame coloured by its task: every batch of 8 holds the
    released loader's groups (8 // 3 = 2 frames from each task in turn, cut to 8), whatever the lengths."""
    from viper.data.windows import combine_order
    from viper.train.frames import StoreFrames

    tasks = ["dmc/cartpole_balance", "dmc/cheetah_run", "dmc/walker_walk"]
    store = open_store(paths.store(tmp_path, "dmc"), "a", chunk_frames=8, shard_frames=32)
    for shade, (task, length) in enumerate(zip(tasks, [200, 12, 40], strict=True)):
        store.append_episode(task, np.full((length, 64, 64, 3), 50 * (shade + 1), np.uint8), split="train")
    stream = StoreFrames(paths.store(tmp_path, "dmc")).batches(8, seed=0, rank=0, start_step=5)
    for index in range(5, 11):
        batch = next(stream)
        shades = [int(frame[0, 0, 0]) // 50 - 1 for frame in batch]
        assert shades == [t for t, count in combine_order(3, 8, index) for _ in range(count)], (index, shades)
    # DDP: two ranks of 4 draw the two halves of that one-device batch of 8, in order.
    halves = [StoreFrames(paths.store(tmp_path, "dmc")).batches(4, 0, rank, 5, world_size=2) for rank in (0, 1)]
    for index in range(5, 11):
        shades = [int(frame[0, 0, 0]) // 50 - 1 for half in halves for frame in next(half)]
        assert shades == [t for t, count in combine_order(3, 8, index) for _ in range(count)], (index, shades)


def cli_command(data_dir: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "viper.cli",
        "train-tokenizer",
        "--preset",
        "tiny",
        "-S",
        f"data_dir={data_dir}",
        "-S",
        "tokenizer.train_grad_steps=400",
        "-S",
        "tokenizer.checkpoint_every_grad_steps=4",
        "-S",
        "tokenizer.eval_every_grad_steps=1000",
        "-S",
        "tokenizer.gan_weight=0.0",
    ]


def test_sigkill_then_rerun_resumes(tmp_path):
    """A real kill: SIGKILL the CLI after its first checkpoint, re-run the same command, it resumes."""
    write_store(tmp_path, episodes=2, length=10)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "VIPER_TEST_THREADS": "1"}
    ckpts = paths.tokenizer_dir(tmp_path, "dmc") / "checkpoints"
    proc = subprocess.Popen(
        cli_command(tmp_path), cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    deadline = time.time() + 90
    while time.time() < deadline and not list(ckpts.glob("step_*/done")):
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = sorted(int(p.parent.name.split("_")[1]) for p in ckpts.glob("step_*/done"))
    assert saved, "no checkpoint before the kill"
    cmd = cli_command(tmp_path)
    cmd[cmd.index("tokenizer.train_grad_steps=400")] = f"tokenizer.train_grad_steps={saved[-1] + 4}"
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"resumed from {ckpts}" in done.stdout
    assert (paths.tokenizer_dir(tmp_path, "dmc") / "metrics.json").exists()


def test_gan_batches_must_keep_real_and_fake_frames_in_separate_stddev_groups(tmp_path):
    """The discriminator's minibatch-stddev groups of 4 must not mix real and fake frames: a per-rank batch that
    is not a multiple of 4 is refused with the GAN on, and trains with it off."""
    frames = ArrayFrames(synthetic_frames(16, 3))
    with pytest.raises(ViperError, match=r"tokenizer.batch_size=6: .* gets 6 frames; .* multiple of 4"):
        tokenizer.run(tiny_cfg(tmp_path / "a", "tokenizer.batch_size=6"), frames=frames, progress=False)
    over = ("tokenizer.batch_size=6", "tokenizer.gan_weight=0", "tokenizer.train_grad_steps=2")
    assert tokenizer.run(tiny_cfg(tmp_path / "b", *over), frames=frames, progress=False)["step"] == 2


def test_unknown_recon_loss_is_a_clear_error():
    with pytest.raises(ViperError, match="tokenizer.recon_loss='l2': expected one of l1, mse"):
        tiny_cfg(Path("unused"), "tokenizer.recon_loss=l2")  # refused when the configuration loads
    cfg = config.TokenizerConfig(recon_loss="l2")  # and by the trainer, built from code
    with pytest.raises(ViperError, match="tokenizer.recon_loss='l2'"):
        tokenizer.TokenizerTrainer(cfg, common.setup_distributed())
