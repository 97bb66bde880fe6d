"""The training loop's log rows: the update metrics and the wall time per phase since the previous row.

``agent/time/<phase>`` is the fraction of the stretch since the previous row spent acting, inserting (with reward
viper: relabelling), stepping the envs, updating, evaluating or checkpointing; ``agent/env_steps_per_s`` is the
rate over the same stretch and ``agent/stretch_s`` its wall seconds (after a resume: since the run restarted)
(``viper.agent.train``; ``benchmarks/run_table.py`` reads them back).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from viper.agent.divergence import Diverged
from viper.agent.replay import Replay
from viper.metrics import Logger

PHASES = ("act", "insert", "env", "update", "eval", "checkpoint")
"""The timed phases of one loop iteration, in order."""


class Phases:
    """Wall seconds per phase of the loop since the last log row, reported as fractions of that stretch."""

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self.since = time.perf_counter()

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - start

    def row(self, env_steps: int) -> dict[str, float]:
        """``agent/time/<phase>`` fractions, ``agent/env_steps_per_s`` over ``env_steps`` and ``agent/stretch_s``
        since the last row; starts the next stretch."""
        now = time.perf_counter()
        wall = max(now - self.since, 1e-9)
        row = {f"agent/time/{name}": seconds / wall for name, seconds in self.seconds.items()}
        row["agent/env_steps_per_s"] = env_steps / wall
        row["agent/stretch_s"] = wall
        self.seconds, self.since = dict.fromkeys(PHASES, 0.0), now
        return row


class Stretch:
    """The metrics of the updates and the phase times since the last log row, written as one row."""

    def __init__(self, log: Logger, counters: dict, replay: Replay) -> None:
        self.log, self.counters, self.replay = log, counters, replay
        self.phases = Phases()
        self.sums: dict[str, Any] = {}
        self.updates = 0
        self.logged_at = counters["env_steps"]

    def add(self, metrics: dict[str, Any]) -> None:
        # Summed as tensors (on CUDA a float() per metric would wait for the GPU after every update).
        for key, value in metrics.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
        self.updates += 1

    def write(self, step: int) -> None:
        """Log the row for env step ``step`` (update means, counters, phase fractions) and start a new stretch;
        ``Diverged`` if any value is not finite."""
        row = {f"agent/{k}": float(v) / self.updates for k, v in self.sums.items()} if self.updates else {}
        row.update(
            {
                "agent/updates": self.counters["updates"],
                "agent/replay_steps": len(self.replay),
                "agent/wall_s": self.counters["wall_s"],
                **self.phases.row(step - self.logged_at),
            }
        )
        self.log.scalars(row, step)
        self.sums, self.updates, self.logged_at = {}, 0, step
        bad = sorted(k for k, v in row.items() if not np.isfinite(v))
        if bad:
            raise Diverged(f"{', '.join(bad[:5])} not finite in the updates up to env step {step}")
