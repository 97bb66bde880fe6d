"""Periodic evaluation during training: episodes in a separate env, an episode GIF, the return curve PNG.

Every episode reports its task return (the environment's reward: the true return, whatever the agent
optimises) and, when the run has a VIPER reward model, its VIPER return: the sum of the per-step rewards of
the whole episode scored at once, as training scores replay (the first ``context_steps`` steps have none). The
first episode of each evaluation is written as ``videos/eval_<step>.gif``, with the VIPER reward curve drawn
under the frames, and (VIPER runs) as ``videos/eval_<step>.npz`` holding its ``frames`` and ``viper_rewards``, so
that ``viper score <npz> --task <task>`` reproduces the logged rewards. ``viper score`` also scores the steps
between the first full window and ``context_steps`` where a prior's window is shorter than its context (the
(4, 4) Atari prior: 13-frame windows, 15 context steps); the agent leaves those out, as the released code does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import viper.envs
from viper.agent.driver import EpisodeInterrupted, clip_action, env_seed, run_episode
from viper.config import AgentConfig
from viper.eval.video import reward_video, write_gif
from viper.metrics import save_figure

EVAL_STREAM = 10_000
"""Seed stream of the evaluation env (training envs use streams 0..envs-1)."""
KEEP_GIFS = 5
"""Newest evaluation GIFs (and episode files) kept in ``<run>/videos``."""


@dataclass(frozen=True)
class EvalResult:
    """Returns per evaluation episode (``viper_returns`` empty without a reward model) and mean length."""

    task_returns: list[float]
    viper_returns: list[float]
    mean_length: float


class Evaluator:
    """Plays ``eval_episodes`` episodes with the agent's policy; writes ``videos/eval_<step>.gif`` (first
    episode; ``.npz`` too with a reward model) and ``plots/returns.png``.

    ``score_episode`` maps an episode's frames uint8 (T, 64, 64, 3) to its per-step VIPER rewards (T,) (NaN
    for the first ``context_steps`` steps); ``None`` for runs without a reward model.
    """

    def __init__(
        self,
        task: str,
        seed: int,
        acfg: AgentConfig,
        out_dir: Path,
        restart: int,
        score_episode: Callable[[np.ndarray], np.ndarray] | None = None,
        fast_render: bool = True,
    ) -> None:
        self.task, self.seed, self.acfg, self.out_dir, self.restart = task, seed, acfg, Path(out_dir), restart
        self.score_episode = score_episode
        self.fast_render = fast_render
        self.env = None

    def __call__(self, agent, env_step: int, interrupted: Callable[[], bool] | None = None) -> EvalResult:
        """Play the episodes; task (and VIPER) return of each, mean length in agent steps. ``interrupted`` is asked
        before every step and before scoring: ``viper.agent.driver.EpisodeInterrupted`` when it says stop."""
        if self.env is None:
            self.env = viper.envs.make(
                self.task,
                env_seed(self.seed, EVAL_STREAM, self.restart),
                action_repeat=self.acfg.action_repeat,
                episode_env_steps=self.acfg.episode_env_steps or None,
                fast_render=self.fast_render,
            )
        returns, viper_returns, lengths = [], [], []
        cuda = [agent.device] if agent.device.type == "cuda" else []
        for episode in range(self.acfg.eval_episodes):
            carry = [agent.initial_carry(1)]

            def act(obs, is_first, carry=carry):
                action, carry[0] = agent.act(obs[None], np.array([is_first]), carry[0], self.acfg.eval_sample)
                return action[0] if agent.discrete else clip_action(action[0])

            # Seeded by (run, step, episode), not by the restart count or the training RNG: a resumed run plays
            # the same evaluation episodes as an uninterrupted one, and evaluating leaves training's draws alone.
            seed = int(np.random.SeedSequence([self.seed, EVAL_STREAM, env_step, episode]).generate_state(1)[0])
            with torch.random.fork_rng(devices=cuda):
                torch.manual_seed(seed)
                total, frames, steps = run_episode(self.env, act, seed=seed % (2**31 - 1), interrupted=interrupted)
            if interrupted is not None and interrupted():
                raise EpisodeInterrupted
            returns.append(total)
            lengths.append(steps)
            rewards = None
            if self.score_episode is not None:
                rewards = np.asarray(self.score_episode(frames), np.float32)
                viper_returns.append(float(np.nansum(rewards, dtype=np.float64)))
            if episode == 0:
                self._save(frames, rewards, env_step)
        return EvalResult(returns, viper_returns, float(np.mean(lengths)))

    def _save(self, frames: np.ndarray, rewards: np.ndarray | None, env_step: int) -> None:
        folder = self.out_dir / "videos"
        folder.mkdir(parents=True, exist_ok=True)
        name = f"eval_{env_step:09d}"
        if rewards is None:
            write_gif(folder / f"{name}.gif", frames, fps=25)
        else:
            write_gif(folder / f"{name}.gif", reward_video(frames, rewards), fps=25)
            tmp = folder / f".{name}.npz.tmp"
            with open(tmp, "wb") as f:
                np.savez_compressed(f, frames=frames, viper_rewards=rewards)
            tmp.replace(folder / f"{name}.npz")
        for pattern in ("eval_*.gif", "eval_*.npz"):
            for old in sorted(folder.glob(pattern))[:-KEEP_GIFS]:
                old.unlink()

    def plot(self, eval_history: list, train_history: list) -> None:
        """Return curve over env frames (agent steps x action repeat): evaluation and training episodes."""
        from matplotlib.figure import Figure

        repeat = self.acfg.action_repeat
        fig = Figure(figsize=(6, 3.5))
        ax = fig.subplots()
        if train_history:
            steps, rets = zip(*train_history, strict=True)
            ax.plot(np.array(steps) * repeat, rets, ".", alpha=0.4, label="training episodes")
        if eval_history:
            steps, rets = zip(*eval_history, strict=True)
            ax.plot(np.array(steps) * repeat, rets, "o-", label="evaluation")
        ax.set_xlabel("env frames")
        ax.set_ylabel("task return")
        ax.set_title(self.task)
        ax.legend(loc="best")
        fig.tight_layout()
        save_figure(fig, self.out_dir / "plots" / "returns.png")

    def close(self) -> None:
        if self.env is not None:
            self.env.close()
            self.env = None
