"""A trained agent as a policy: what the collector's ``checkpoint:<path>`` policy loads.

``load_policy(path)`` accepts an agent run folder (``<data>/agents/<reward>/<task>/seed<k>``), its
``checkpoints`` folder, or one ``step_*`` checkpoint folder, rebuilds the agent from the configuration
stored in the checkpoint and returns a ``CheckpointPolicy`` (``reset()``, ``act(frame) -> action``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from viper.agent.agent import Agent
from viper.agent.driver import clip_action
from viper.checkpoint import Checkpointer
from viper.config import AgentConfig
from viper.errors import ViperError
from viper.file_integrity import verify
from viper.hashing import file_sha256


def checkpoint_folder(path: str | Path) -> Path:
    """The complete checkpoint folder ``path`` names (run folder, checkpoints folder or step folder)."""
    path = Path(path)
    if (path / "state.pt").exists() and (path / "done").exists():
        return path
    for directory in (path / "checkpoints", path):
        found = Checkpointer(directory).latest_path()
        if found is not None:
            return found
    raise ViperError(f"{path}: no complete agent checkpoint (expected <run>/checkpoints/step_*/done)")


def checkpoint_identity(path: str | Path) -> dict[str, str]:
    """The checkpoint a ``checkpoint:<path>`` policy loads, by content: its folder ``name`` and the sha256 (16 hex)
    of its ``weights`` (a retrained run may reuse a folder name; a copy or ``dvc checkout`` changes only times)."""
    folder = checkpoint_folder(path)
    return {"name": folder.name, "weights": file_sha256(folder / "state.pt")[:16]}


class CheckpointPolicy:
    """A trained agent acting in one env: ``reset()`` at episode start, ``act(frame uint8 (64, 64, 3))``.

    Actions: float32 (A,) in [-1, 1] for continuous tasks, the action index (int) for discrete ones.
    ``sample=False`` (default) takes the policy's mode, the agent's best guess for expert videos. The agent
    samples its latent state (and with ``sample`` its action) from torch's RNG: the policy runs it from its own
    stream seeded by ``seed``, so the same seed plays the same episode and the caller's RNG is left as it was.
    """

    def __init__(self, agent: Agent, sample: bool = False, seed: int = 0) -> None:
        self.agent, self.sample, self.seed = agent, sample, seed
        self._rng: tuple[torch.Tensor, torch.Tensor | None] | None = None
        self.reset()

    def reset(self) -> None:
        self._carry = self.agent.initial_carry(1)
        self._first = True

    def act(self, obs: np.ndarray):
        obs = np.asarray(obs)
        assert obs.shape == (64, 64, 3) and obs.dtype == np.uint8, "frame uint8 (64, 64, 3) expected"
        cuda = [self.agent.device] if self.agent.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            if self._rng is None:
                torch.manual_seed(self.seed)
            else:
                torch.set_rng_state(self._rng[0])
                if cuda:
                    torch.cuda.set_rng_state(self._rng[1], cuda[0])
            action, self._carry = self.agent.act(obs[None], np.array([self._first]), self._carry, self.sample)
            self._rng = (torch.get_rng_state(), torch.cuda.get_rng_state(cuda[0]) if cuda else None)
        self._first = False
        if self.agent.discrete:
            return int(np.argmax(action[0]))
        return clip_action(action[0])

    def taken(self, action) -> None:
        """The env executed ``action`` instead of this policy's last choice (``NoisyPolicy`` replaced it): the
        next latent update conditions on the executed action, as the agent's own training data always does."""
        if self.agent.discrete:
            executed = np.eye(self.agent.action_dim, dtype=np.float32)[[int(action)]]
        else:
            executed = np.asarray(action, np.float32).reshape(1, -1)
        state, chosen = self._carry
        self._carry = (state, torch.as_tensor(executed, device=chosen.device, dtype=chosen.dtype))


def load_policy(path: str | Path, sample: bool = False, device: str = "cpu", seed: int = 0) -> CheckpointPolicy:
    """Load the newest complete agent checkpoint under ``path`` as a policy (see the module docstring)."""
    folder = checkpoint_folder(path)
    verify(folder, only=("state.pt",))  # a damaged expert would collect videos without a word (replay unread)
    state = torch.load(folder / "state.pt", map_location=device, weights_only=False)
    meta = state["meta"]
    fields = dict(meta["agent"])
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
    known = AgentConfig.__dataclass_fields__
    acfg = AgentConfig(**{k: v for k, v in fields.items() if k in known})
    with torch.random.fork_rng(devices=[]):  # the initial weights, overwritten below, draw from torch's RNG
        agent = Agent(acfg, meta["action_dim"], meta["discrete"], meta["reward_name"], device)
    agent.load_state_dict(state["agent"])
    agent.eval()
    return CheckpointPolicy(agent, sample, seed)
