"""Stage ``train-videogpt`` end to end on a real (random-weight) tokenizer checkpoint and a real token store:
checkpoints, metrics, pictures, exact resume, and the reward model loading the result."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from viper import config as config_lib
from viper import paths
from viper.checkpoint import Checkpointer
from viper.data.tokens import write_tokens
from viper.errors import Stopped, ViperError
from viper.models.prior_checkpoint import BEST, load_prior
from viper.models.vqgan import VQGAN, VQGANArch, load_tokenizer
from viper.reward import VideoReward
from viper.reward.reference import score_per_window
from viper.train import prior as prior_stage

TASKS = ["dmc/cartpole_balance", "dmc/cartpole_swingup"]


def square_video(steps: int, offset: int, size: int = 16) -> np.ndarray:
    """A white square moving right by 4 px per frame (wrapping) over a dark background: uint8 (T, 64, 64, 3)."""
    frames = np.full((steps, 64, 64, 3), 30, np.uint8)
    for t in range(steps):
        x = (offset + 4 * t) % (64 - size)
        frames[t, 24 : 24 + size, x : x + size] = 230
    return frames


def write_tokenizer(data_dir: Path, tcfg: config_lib.TokenizerConfig) -> None:
    """A randomly initialised VQ-GAN saved as a tokenizer run (the checkpoint format load_tokenizer reads)."""
    arch = VQGANArch.from_config(tcfg)
    torch.manual_seed(0)
    model = VQGAN(arch)
    ckpt = Checkpointer(paths.tokenizer_dir(data_dir, "dmc") / "checkpoints")
    ckpt.save(1, {"model": model.state_dict(), "arch": asdict(arch)})


def make_inputs(data_dir: Path, tcfg: config_lib.TokenizerConfig) -> None:
    """A tokenizer checkpoint in the stage's format and the token store made with it (4 episodes per task)."""
    write_tokenizer(data_dir, tcfg)
    tokenizer = load_tokenizer(paths.tokenizer_dir(data_dir, "dmc"))
    for i, task in enumerate(TASKS):
        frames = np.concatenate([square_video(10, offset=7 * e + i) for e in range(4)])
        tokens = tokenizer.encode(frames).numpy().astype(np.int16)
        write_tokens(
            paths.tokens(data_dir, "dmc"), task, tokens, np.array([10, 20, 30, 40]), np.array([0, 0, 0, 1]),
            tokenizer.hash, tokenizer.codebook_size,
        )  # fmt: skip


def tiny_cfg(data_dir: Path, steps: int, **prior) -> config_lib.Config:
    overrides = [
        f"data_dir={data_dir}",
        f"collect.tasks={json.dumps(TASKS)}",
        f"prior.train_grad_steps={steps}",
        "prior.eval_every_grad_steps=4",
        "prior.checkpoint_every_grad_steps=4",
        "prior.log_every_grad_steps=2",
        "prior.batch_size=4",
        "prior.dropout=0.1",
        "prior.picture_context_frames=1",
        "reward.device=cpu",
    ] + [f"prior.{k}={v}" for k, v in prior.items()]
    return config_lib.load("tiny", overrides, params_path=None)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("prior")
    make_inputs(root, tiny_cfg(root, 1).tokenizer)
    return root


def test_training_writes_checkpoints_metrics_and_pictures(data_dir, capsys):
    cfg = tiny_cfg(data_dir, steps=8)
    metrics = prior_stage.run(cfg)
    run_dir = paths.prior_dir(data_dir, "dmc")
    assert metrics["prior/grad_steps"] == 8
    assert np.isfinite(metrics["prior/eval_bits_per_token"]) and metrics["prior/eval_bits_per_token"] > 0
    assert json.loads((run_dir / "metrics.json").read_text()) == metrics
    best = (run_dir / "checkpoints" / BEST).read_text()
    assert best == f"step_{metrics['prior/best_step']:09d}" and (run_dir / "checkpoints" / best / "done").exists()
    assert (run_dir / "plots" / "open_loop.png").stat().st_size > 0
    logged = [json.loads(line) for line in (run_dir / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if "prior/train_bits_per_token" in r] == [2, 4, 6, 8]
    loaded = load_prior(run_dir)
    assert loaded.step == 8 and loaded.tasks == tuple(TASKS) and not loaded.model.training
    # The released script's rule: at each checkpoint step, keep it if the raw weights' latest eval was a new best.
    raw = [(r["step"], r["prior/eval_bits_per_token_raw"]) for r in logged if "prior/eval_bits_per_token_raw" in r]
    assert [step for step, _ in raw] == [4, 8]  # the checkpoint steps
    expected = max(step for i, (step, value) in enumerate(raw) if all(value < v for _, v in raw[:i]))
    assert metrics["prior/released_step"] == expected
    assert (run_dir / "checkpoints" / "released").read_text() == f"step_{expected:09d}"
    assert load_prior(run_dir, "released").step == expected
    # A run from before the pointer and the marks existed: the latest checkpoint, with a line saying so.
    pointer = run_dir / "checkpoints" / "released"
    marks = run_dir / "checkpoints" / "step_000000008" / "marks.json"
    sums = marks.with_name("checksums.json")  # such a run's checksums (if any) do not list marks.json either
    kept = pointer.read_text(), marks.read_text(), sums.read_text()
    assert json.loads(kept[1]) == {"best": best, "released": kept[0]}
    pointer.unlink()
    marks.unlink()
    sums.write_text(json.dumps({k: v for k, v in json.loads(kept[2]).items() if k != "marks.json"}))
    try:
        assert load_prior(run_dir, "released").step == 8
        assert "has no 'released' checkpoint" in capsys.readouterr().out
    finally:
        pointer.write_text(kept[0])
        marks.write_text(kept[1])
        sums.write_text(kept[2])
    assert (loaded.seq_len, loaded.frame_skip) == (cfg.prior.seq_len, cfg.prior.frame_skip)


def test_resumed_run_matches_an_uninterrupted_one(tmp_path, data_dir):
    # Uninterrupted: 8 steps in a fresh folder (inputs copied); interrupted: 4 steps, then re-run to 8.
    import shutil

    for name in ("tokenizer", "tokens"):
        shutil.copytree(data_dir / name, tmp_path / name)
    prior_stage.run(tiny_cfg(tmp_path, steps=8))
    straight = torch.load(
        Checkpointer(paths.prior_dir(tmp_path, "dmc") / "checkpoints").latest_path() / "state.pt", weights_only=False
    )
    shutil.rmtree(paths.prior_dir(tmp_path, "dmc"))
    prior_stage.run(tiny_cfg(tmp_path, steps=4))
    prior_stage.run(tiny_cfg(tmp_path, steps=8))
    resumed = torch.load(
        Checkpointer(paths.prior_dir(tmp_path, "dmc") / "checkpoints").latest_path() / "state.pt", weights_only=False
    )
    for key, value in straight["model"].items():
        torch.testing.assert_close(resumed["model"][key], value, rtol=0, atol=0, msg=key)
    for key, value in straight["ema"].items():
        torch.testing.assert_close(resumed["ema"][key], value, rtol=0, atol=0, msg=key)
    # A changed model setting never resumes the old run: it trains anew from step 0.
    metrics = prior_stage.run(tiny_cfg(tmp_path, steps=2, d_model=16))
    assert metrics["prior/grad_steps"] == 2


def test_another_evaluation_set_on_resume_restarts_the_best_values(tmp_path, data_dir, capsys):
    """eval_windows_per_task may change on resume, but bits per token on another set are not comparable: the
    best values carried over decided which checkpoint was released (the default reward.checkpoint)."""
    import shutil

    for name in ("tokenizer", "tokens"):
        shutil.copytree(data_dir / name, tmp_path / name)
    prior_stage.run(tiny_cfg(tmp_path, steps=4))
    capsys.readouterr()
    metrics = prior_stage.run(tiny_cfg(tmp_path, steps=8, eval_windows_per_task=3))
    assert "eval_windows_per_task 8 -> 3: the best eval bits per token" in capsys.readouterr().out
    run_dir = paths.prior_dir(tmp_path, "dmc")
    state = torch.load(Checkpointer(run_dir / "checkpoints").latest_path() / "state.pt", weights_only=False)
    logged = [json.loads(line) for line in (run_dir / "logs" / "metrics.jsonl").read_text().splitlines()]
    raw = {r["step"]: r["prior/eval_bits_per_token_raw"] for r in logged if "prior/eval_bits_per_token_raw" in r}
    assert state["progress"]["eval_windows"] == 3
    assert state["progress"]["best_raw_nll"] == pytest.approx(raw[8])  # only the new set's evaluation counts
    assert metrics["prior/released_step"] == metrics["prior/best_step"] == 8
    capsys.readouterr()
    prior_stage.run(tiny_cfg(tmp_path, steps=8, eval_windows_per_task=3))  # the same set again: nothing said
    assert "eval_windows_per_task" not in capsys.readouterr().out
    # A finished run keeps its best values when the set changes (no evaluation would follow to set new ones).
    done = prior_stage.run(tiny_cfg(tmp_path, steps=8, eval_windows_per_task=2))
    assert done["prior/best_eval_bits_per_token"] == pytest.approx(metrics["prior/best_eval_bits_per_token"])
    assert "eval_windows_per_task" not in capsys.readouterr().out


def test_a_stop_signal_saves_the_update_it_stopped_at_and_the_resume_matches_an_uninterrupted_run(
    tmp_path, data_dir, monkeypatch
):
    """SIGTERM during update 3 (checkpoints every 4): update 3 is saved, the run stops, and resuming gives the
    uninterrupted run's weights and the same best / released checkpoints (a stop's save marks neither)."""
    import os
    import shutil
    import signal

    for name in ("tokenizer", "tokens"):
        shutil.copytree(data_dir / name, tmp_path / name)
    straight = prior_stage.run(tiny_cfg(tmp_path, steps=8))
    checkpoints = paths.prior_dir(tmp_path, "dmc") / "checkpoints"
    expected = torch.load(Checkpointer(checkpoints).latest_path() / "state.pt", weights_only=False)
    shutil.rmtree(paths.prior_dir(tmp_path, "dmc"))
    real, calls = prior_stage.train_step, []

    def step_then_signal(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    monkeypatch.setattr(prior_stage, "train_step", step_then_signal)
    with pytest.raises(Stopped, match="stopped by SIGTERM at prior update 3 of 8; checkpoint saved in"):
        prior_stage.run(tiny_cfg(tmp_path, steps=8))
    assert (checkpoints / "latest").read_text() == "step_000000003"
    monkeypatch.undo()
    resumed = prior_stage.run(tiny_cfg(tmp_path, steps=8))
    state = torch.load(Checkpointer(checkpoints).latest_path() / "state.pt", weights_only=False)
    for key, value in expected["model"].items():
        torch.testing.assert_close(state["model"][key], value, rtol=0, atol=0, msg=key)
    for key in ("prior/best_step", "prior/released_step", "prior/eval_bits_per_token"):
        assert resumed[key] == straight[key], key


def _prior_worker(rank: int, world: int, port: int, data_dir: str) -> None:
    import os

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    prior_stage.run(tiny_cfg(Path(data_dir), steps=8))


def test_a_run_resumed_on_more_gpus_continues_instead_of_starting_anew(tmp_path, data_dir, capfd):
    """The GPU count is recorded but does not block a resume: a run preempted on 1 GPU and restarted on 2 (here 2
    gloo processes) continued nothing before: it set the run aside and trained from update 0."""
    import shutil
    import socket

    for name in ("tokenizer", "tokens"):
        shutil.copytree(data_dir / name, tmp_path / name)
    prior_stage.run(tiny_cfg(tmp_path, steps=4))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(_prior_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    assert "resuming a run of 1 process(es) on 2: same global batch" in capfd.readouterr().out
    checkpoints = paths.prior_dir(tmp_path, "dmc") / "checkpoints"
    assert not (checkpoints / "superseded").exists()
    state = torch.load(checkpoints / "step_000000008" / "state.pt", weights_only=False)
    assert len(state["rng_ranks"]) == 2 and (checkpoints / "step_000000004" / "done").exists()
    # A changed model setting still never resumes the old run.
    prior_stage.run(tiny_cfg(tmp_path, steps=2, d_model=16))
    assert (checkpoints / "superseded" / "step_000000008").exists()


def test_a_run_brought_back_after_a_settings_change_scores_with_its_own_best_and_released(tmp_path, data_dir, capsys):
    """Settings changed and changed back: the first run comes back from superseded/, but the best / released
    pointer files named the other run's steps, so scoring fell back to the latest checkpoint ("a run from before
    it was recorded"). Each step folder now carries its run's marks."""
    import shutil

    from viper.models.prior_checkpoint import RELEASED, checkpoint_folder

    for name in ("tokenizer", "tokens"):
        shutil.copytree(data_dir / name, tmp_path / name)
    first = prior_stage.run(tiny_cfg(tmp_path, steps=8))
    prior_stage.run(tiny_cfg(tmp_path, steps=2, d_model=16, checkpoint_every_grad_steps=1))
    again = prior_stage.run(tiny_cfg(tmp_path, steps=8))  # the first run, brought back (finished: no update)
    assert again["prior/grad_steps"] == 8
    run_dir = paths.prior_dir(tmp_path, "dmc")
    capsys.readouterr()
    for which, key in ((BEST, "prior/best_step"), (RELEASED, "prior/released_step")):
        assert checkpoint_folder(run_dir, which).name == f"step_{first[key]:09d}", which
    assert "has no 'released' checkpoint" not in capsys.readouterr().out


def test_reward_model_loads_the_trained_pair(data_dir):
    cfg = tiny_cfg(data_dir, steps=8)
    if not (paths.prior_dir(data_dir, "dmc") / "checkpoints").exists():
        prior_stage.run(cfg)
    reward = VideoReward.load(paths.tokenizer_dir(data_dir, "dmc"), paths.prior_dir(data_dir, "dmc"), cfg.reward)
    frames = square_video(6, offset=3)[None]
    np.testing.assert_allclose(
        reward.score(frames, TASKS[0]), score_per_window(reward, frames, TASKS[0]), atol=1e-4, rtol=0
    )
    best = VideoReward.load(
        paths.tokenizer_dir(data_dir, "dmc"),
        paths.prior_dir(data_dir, "dmc"),
        config_lib.RewardConfig(checkpoint="best", device="cpu"),
    )
    checkpoints = paths.prior_dir(data_dir, "dmc") / "checkpoints"
    assert best.prior_path == checkpoints / (checkpoints / "best").read_text().strip()  # the recorded best step
    saved = torch.load(best.prior_path / "state.pt", map_location="cpu", weights_only=False)["ema"]
    assert all(torch.equal(best.prior.state_dict()[k].cpu(), v) for k, v in saved.items())
    raw = VideoReward.load(
        paths.tokenizer_dir(data_dir, "dmc"),
        paths.prior_dir(data_dir, "dmc"),
        config_lib.RewardConfig(weights="raw", device="cpu"),
    )
    state = torch.load(reward.prior_path / "state.pt", weights_only=False)
    for key, value in raw.prior.state_dict().items():
        torch.testing.assert_close(value, state["model"][key], rtol=0, atol=0)
        torch.testing.assert_close(reward.prior.state_dict()[key], state["ema"][key], rtol=0, atol=0)
    with pytest.raises(ViperError, match="no complete prior checkpoint"):
        load_prior(data_dir / "nowhere")


def test_score_command_prints_a_summary_and_plots_the_curve(data_dir, tmp_path, capsys):
    from viper import cli

    if not (paths.prior_dir(data_dir, "dmc") / "checkpoints").exists():
        prior_stage.run(tiny_cfg(data_dir, steps=8))
    episode = tmp_path / "episode.npz"
    np.savez_compressed(episode, arr_0=square_video(9, offset=5))
    (tmp_path / "none.yaml").write_text("")  # an empty params file: the repository's is not read
    common = ["--preset", "tiny", "--params", str(tmp_path / "none.yaml"), "-S", f"data_dir={data_dir}"]
    argv = ["score", str(episode), "--task", TASKS[1], *common, "--metrics-out", str(tmp_path / "m.json")]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "9 steps, 6 scored" in out and "mean" in out
    # Not beside the episode (it may lie in a stage's output, e.g. an agent's videos/): in data_dir/scores/.
    assert not (tmp_path / "episode.reward.png").exists()
    assert (data_dir / "scores" / "dmc" / "episode.reward.png").stat().st_size > 0
    summary = json.loads((tmp_path / "m.json").read_text())
    assert summary["score/scored_steps"] == 6 and np.isfinite(summary["score/mean"])
    assert cli.main(["score", str(episode), "--task", "dmc/walker_walk", *common]) == 2
    assert "not in the prior's task map" in capsys.readouterr().err
    assert cli.main(["score", str(episode), "--task", "cartpole_swingup", *common]) == 2  # no suite
    assert "unknown task 'cartpole_swingup': expected '<suite>/<task>'" in capsys.readouterr().err
    assert cli.main(["score", str(episode), "--task", TASKS[1], "--output", str(tmp_path), *common]) == 2
    assert "is a directory; expected the PNG file" in capsys.readouterr().err
    # Too short for one window: it says why nothing was scored.
    np.savez_compressed(tmp_path / "short.npz", arr_0=square_video(2, offset=5))
    assert cli.main(["score", str(tmp_path / "short.npz"), "--task", TASKS[1], *common]) == 0
    assert "2 steps, 0 scored" in (out := capsys.readouterr().out) and "window spans 4 steps" in out
    # Frames channels first (or any other layout): an error naming the file and the expected layout.
    np.savez_compressed(tmp_path / "chw.npz", frames=square_video(9, offset=5).transpose(0, 3, 1, 2))
    assert cli.main(["score", str(tmp_path / "chw.npz"), "--task", TASKS[1], *common]) == 2
    err = capsys.readouterr().err
    assert "chw.npz: 'frames' is uint8 (9, 3, 64, 64); expected uint8 (T, 64, 64, 3)" in err
    np.savez_compressed(tmp_path / "empty.npz", frames=np.zeros((0, 64, 64, 3), np.uint8))  # crashed plotting
    assert cli.main(["score", str(tmp_path / "empty.npz"), "--task", TASKS[1], *common]) == 2
    assert "empty.npz: 'frames' is uint8 (0, 64, 64, 3); expected uint8 (T, 64, 64, 3) RGB frames, T >= 1" in (
        capsys.readouterr().err
    )
    np.savez(tmp_path / "objects.npz", arr_0=np.array([None, 1], dtype=object))
    assert cli.main(["score", str(tmp_path / "objects.npz"), "--task", TASKS[1], *common]) == 2
    assert "objects.npz: not a readable .npz of uint8 frames" in capsys.readouterr().err


def test_unreadable_or_foreign_model_checkpoints_are_errors_naming_the_file(tmp_path):
    """A truncated state.pt, or one whose model description this code cannot build, raised torch's or the
    dataclass's traceback without the file's name."""
    from viper.models.prior_checkpoint import CHECKPOINT_FORMAT

    prior_dir, tokenizer_dir = tmp_path / "prior", tmp_path / "tokenizer"
    Checkpointer(prior_dir / "checkpoints").save(1, {"format": CHECKPOINT_FORMAT, "spec": {"layers": 2}, "ema": {}})
    with pytest.raises(ViperError, match=r"step_000000001/state.pt: its model description and weights do not fit"):
        load_prior(prior_dir)
    Checkpointer(tokenizer_dir / "checkpoints").save(1, {"model": {}, "arch": {"widths": 3}})
    with pytest.raises(ViperError, match=r"state.pt: its 'arch' does not describe this code's VQ-GAN"):
        load_tokenizer(tokenizer_dir)
    for run in (prior_dir, tokenizer_dir):
        state = run / "checkpoints" / "step_000000001" / "state.pt"
        state.write_bytes(state.read_bytes()[:40])
    # The checksums the save recorded catch it first; without them (a trimmed copy), torch.load does.
    damaged = r"step_000000001: state.pt is missing or differs from its checksum in checksums.json: the checkpoint is"
    with pytest.raises(ViperError, match=damaged):
        load_prior(prior_dir)
    with pytest.raises(ViperError, match=damaged):
        load_tokenizer(tokenizer_dir)
    for run in (prior_dir, tokenizer_dir):
        (run / "checkpoints" / "step_000000001" / "checksums.json").unlink()
    with pytest.raises(ViperError, match=r"state.pt: cannot be read as a prior checkpoint"):
        load_prior(prior_dir)
    with pytest.raises(ViperError, match=r"state.pt: cannot be read as a tokenizer checkpoint"):
        load_tokenizer(tokenizer_dir)


def test_a_bit_flipped_in_a_models_weights_is_refused_not_scored(tmp_path):
    """torch.load reads a flipped byte in a tensor without complaint, so a damaged prior or tokenizer scored
    rewards silently; their loaders now check the checksums the save recorded."""
    make_inputs(tmp_path, tiny_cfg(tmp_path, 1).tokenizer)
    prior_stage.run(tiny_cfg(tmp_path, steps=2))
    runs = ((paths.prior_dir(tmp_path, "dmc"), load_prior), (paths.tokenizer_dir(tmp_path, "dmc"), load_tokenizer))
    for run, load in runs:
        folder = Checkpointer(run / "checkpoints").latest_path()
        state = folder / "state.pt"
        original = state.read_bytes()
        try:
            data = bytearray(original)
            data[len(data) // 2] ^= 0x01  # inside the tensors' bytes
            state.write_bytes(bytes(data))
            torch.load(state, map_location="cpu", weights_only=False)  # torch itself does not notice
            with pytest.raises(ViperError, match="state.pt is missing or differs from its checksum"):
                load(run)
        finally:
            state.write_bytes(original)
        load(run)


def test_scoring_with_best_says_so_when_the_run_marked_none(tmp_path, capsys):
    """reward.checkpoint=best fell back to the latest checkpoint without a word (released said so)."""
    from viper.models.prior_checkpoint import checkpoint_folder

    Checkpointer(tmp_path / "prior" / "checkpoints").save(5, {"format": "x"})
    assert checkpoint_folder(tmp_path / "prior", BEST).name == "step_000000005"
    assert "has no 'best' checkpoint (no evaluation landed on a saved step" in capsys.readouterr().out
