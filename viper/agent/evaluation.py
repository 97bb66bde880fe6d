"""Periodic evaluation during training: episodes in a separate env, an episode GIF, the return curve PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import viper.envs
from viper.agent.driver import env_seed, run_episode
from viper.config import AgentConfig

EVAL_STREAM = 10_000
"""Seed stream of the evaluation env (training envs use streams 0..envs-1)."""
KEEP_GIFS = 5
"""Newest evaluation GIFs kept in ``<run>/videos``."""


class Evaluator:
    """Plays ``eval_episodes`` episodes with the agent's policy; writes ``videos/eval_<step>.gif`` (first
    episode) and ``plots/returns.png``."""

    def __init__(self, task: str, seed: int, acfg: AgentConfig, out_dir: Path, restart: int) -> None:
        self.task, self.seed, self.acfg, self.out_dir, self.restart = task, seed, acfg, Path(out_dir), restart
        self.env = None

    def __call__(self, agent, env_step: int) -> tuple[list[float], float]:
        """Mean-able task returns of the episodes and their mean length (agent steps)."""
        if self.env is None:
            self.env = viper.envs.make(
                self.task,
                env_seed(self.seed, EVAL_STREAM, self.restart),
                action_repeat=self.acfg.action_repeat,
                episode_env_steps=self.acfg.episode_env_steps or None,
            )
        returns, lengths = [], []
        for episode in range(self.acfg.eval_episodes):
            carry = [agent.initial_carry(1)]

            def act(obs, is_first, carry=carry):
                action, carry[0] = agent.act(obs[None], np.array([is_first]), carry[0], self.acfg.eval_sample)
                return action[0]

            total, frames, steps = run_episode(self.env, act)
            returns.append(total)
            lengths.append(steps)
            if episode == 0:
                self._gif(frames, env_step)
        return returns, float(np.mean(lengths))

    def _gif(self, frames: np.ndarray, env_step: int) -> None:
        import imageio.v3 as iio

        folder = self.out_dir / "videos"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"eval_{env_step:09d}.gif"
        tmp = folder / f".{path.name}.tmp"
        iio.imwrite(tmp, frames, extension=".gif", duration=40, loop=0)
        tmp.replace(path)
        for old in sorted(folder.glob("eval_*.gif"))[:-KEEP_GIFS]:
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
        folder = self.out_dir / "plots"
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / ".returns.png.tmp"
        fig.savefig(tmp, format="png", dpi=100)
        tmp.replace(folder / "returns.png")

    def close(self) -> None:
        if self.env is not None:
            self.env.close()
            self.env = None
