"""The DreamerV3 training loop of the ``train-agent`` and ``expert`` stages (their commands: ``commands.py``): one run
with checkpoints and evaluation.

Loop (per iteration, E envs step at once): act (random until replay holds one batch of steps, as the 2023 code
prefills), insert the step rows through the reward source, then run as many updates as ``train_ratio`` owes: after
training starts at step s0, the count by env step s is ``1 + floor((s - s0) * train_ratio / (batch_size *
batch_length))`` (the 2023 ``Ratio``; ``train_ratio`` 0 never trains). Every ``eval_every_env_steps`` an
evaluation env plays ``eval_episodes`` episodes (task return, VIPER return with reward viper, a GIF); every
``checkpoint_every_env_steps`` a checkpoint folder holds the agent, optimisers, return normalisers, counters, RNG
states and the replay buffer. Re-running the same command resumes from the newest complete checkpoint (envs
restart with fresh episodes); Ctrl-C or SIGTERM saves a checkpoint at the end of the current step (updates still
owed and an evaluation under way are left to the resume) and stops (exit status 130 / 143), a second Ctrl-C stops
at once. Checkpoints carry a fingerprint (the agent settings that shape
the run, the task, and with reward viper the reward model's prior checkpoint, tokenizer hash and mode): a run
whose settings or reward model changed starts afresh instead of resuming.

With reward ``viper`` (``viper.agent.viper_reward``), steps enter replay through the chunked relabelling of
``viper.agent.rewards.Inserter``; training episodes log both their task return and their VIPER return (the sum
of the rewards inserted for them).

Each log row also says where the wall time since the previous row went: ``agent/time/<phase>`` is the fraction
spent acting (the policy, and on CUDA its wait for the GPU), inserting (with reward viper: relabelling), stepping
the envs (physics and rendering), updating (sampling replay and the updates; on CUDA up to the GPU's finishing
them) and evaluating or checkpointing; ``agent/env_steps_per_s`` is the rate over the same stretch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from viper import locks, runtime
from viper.agent.agent import Agent
from viper.agent.divergence import Diverged, divergence_advice, nonfinite_modules, nonfinite_weights
from viper.agent.driver import EnvPool, EpisodeInterrupted
from viper.agent.evaluation import Evaluator
from viper.agent.log_rows import Stretch
from viper.agent.replay import Replay, is_block_file
from viper.agent.rewards import Inserter, make_reward_source
from viper.agent.run_spec import fingerprint, fingerprint_defaults, replay_spec, sequence_length
from viper.checkpoint import Checkpointer, rng_state, set_rng_state
from viper.config import AgentConfig, Config
from viper.errors import Stopped, ViperError
from viper.metrics import Logger, write_json
from viper.signals import StopSignals


def _new_counters(acfg: AgentConfig) -> dict[str, Any]:
    return {
        "env_steps": 0,
        "updates": 0,
        "episodes": 0,
        "train_start": -1,
        "restarts": 0,
        "wall_s": 0.0,
        "next_eval": acfg.eval_every_env_steps,
        "next_checkpoint": acfg.checkpoint_every_env_steps,
        "next_log": acfg.log_every_env_steps,
        "eval_history": [],
        "train_history": [],
    }


def run(cfg: Config, task: str, seed: int, reward: str, out_dir: Path, command: str = "train-agent") -> dict[str, Any]:
    """Train (or resume) one agent on ``task`` with reward source ``reward`` in ``out_dir``.

    Holds ``out_dir``'s lock (``viper.locks``) for the whole run, so a second process training into the same folder
    is refused with a ``ViperError`` (naming ``viper <command>``, ``train-agent`` or ``expert``, and this process's
    pid) instead of interleaving its checkpoints with this run's. Returns metrics: env steps and frames, updates,
    last evaluation return, wall time, and resume facts (``checkpoint_loads``, ``start_env_steps``,
    ``replay_steps_at_start``, ``replay_steps``).
    """
    out_dir = Path(out_dir)
    # Taken before the reward model, envs or agent are built, so a refused run costs nothing.
    with locks.folder(cfg.data_dir, out_dir, f"viper {command}"):
        return _run(cfg, task, seed, reward, out_dir)


def _run(cfg: Config, task: str, seed: int, reward: str, out_dir: Path) -> dict[str, Any]:
    acfg = cfg.agent
    source = make_reward_source(reward, cfg, task)
    sequence_length(acfg, source)  # a chunk that leaves one-step sequences is refused before any env starts
    device = runtime.resolve_device(acfg.device, "agent.device")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    # Render as the expert videos were rendered (collect.fast_render), so VIPER scores in-distribution frames.
    fast_render = cfg.collect.fast_render
    ckpt = Checkpointer(
        out_dir / "checkpoints",
        keep=acfg.keep_checkpoints,
        fingerprint=fingerprint(acfg, task, source, fast_render),
        defaults=fingerprint_defaults(source),
    )
    stale = ckpt.stale_message(f"train-agent {task} ({reward}, seed {seed})")
    if stale:
        print(stale, flush=True)
    loaded = ckpt.load_latest(tolerate=is_block_file)  # a damaged replay block costs steps, not the run
    counters = _new_counters(acfg)
    if loaded is not None:
        state, folder = loaded
        meta = state["meta"]
        if (meta["task"], meta["reward"]) != (task, reward):
            raise ViperError(
                f"{folder}: checkpoint of task {meta['task']!r} / reward {meta['reward']!r}, "
                f"not {task!r} / {reward!r}; use another output folder"
            )
        counters = state["counters"]
        counters["restarts"] += 1
    episode_steps = acfg.episode_env_steps or None
    envs = EnvPool(
        task,
        seed,
        acfg.envs,
        acfg.action_repeat,
        episode_steps,
        acfg.parallel_envs,
        counters["restarts"],
        fast_render=fast_render,
    )
    agent = Agent(acfg, envs.action_dim, envs.discrete, source.name, device)
    replay = Replay(acfg.replay_capacity_steps, acfg.envs, replay_spec((64, 64, 3), envs.action_dim, source.name), seed)
    act_rng = np.random.default_rng([seed, counters["restarts"]])
    if loaded is not None:
        agent.load_state_dict(state["agent"])
        agent.load_optimizer_state(state["optim"])
        set_rng_state(state["rng"])
        damaged = [name.removeprefix("replay/") for name in ckpt.damaged_files]
        dropped = replay.load(folder / "replay", damaged=tuple(damaged))
        if damaged:
            # Blocks are shared with the checkpoints before this one (hard links): they hold the same bad bytes.
            print(
                f"{folder}: {len(damaged)} replay block file(s) differ from their checksums ({', '.join(damaged[:3])}"
                f"{' ...' if len(damaged) > 3 else ''}); resuming without the {dropped} replay steps up to them",
                file=sys.stderr,
                flush=True,
            )
    start_steps, start_replay = counters["env_steps"], len(replay)
    meta = {
        "task": task,
        "reward": reward,
        "seed": seed,
        "agent": dataclasses.asdict(acfg),
        "action_dim": envs.action_dim,
        "discrete": envs.discrete,
        "reward_name": source.name,
    }
    score = getattr(source, "score_episode", None)
    evaluator = Evaluator(task, seed, acfg, out_dir, counters["restarts"], score, fast_render=fast_render)

    inserter = Inserter(replay, source, acfg.envs)

    def progress() -> tuple[int, int, int]:
        """What a checkpoint holds of the run's progress: a save with none since the last one writes nothing."""
        return counters["env_steps"], counters["updates"], len(counters["eval_history"])

    saved_at = [progress()] if loaded is not None else [None]

    def save() -> None:
        # Not the step alone: a resumed run makes up, at the step it loaded, the updates and the evaluation a stop
        # cut short, and those must be saved (e.g. a Ctrl-C during the periodic save of this very step is not).
        if saved_at[0] == progress():
            return
        if nonfinite_modules(agent):  # never overwrite good state with NaNs
            raise Diverged(f"the agent's weights are not finite at env step {counters['env_steps']}")
        inserter.flush_partial()  # the steps waiting for their relabel chunk would not survive a resume
        state = {
            "agent": agent.state_dict(),
            "optim": agent.optimizer_state(),
            "counters": counters,
            "rng": rng_state(),
            "meta": meta,
        }
        previous = ckpt.latest_path()  # the replay blocks it saved whole are linked, not written again
        previous = previous / "replay" if previous is not None else None
        ckpt.save(counters["env_steps"], state, extra=lambda f: replay.save(f / "replay", previous))
        saved_at[0] = progress()

    def evaluated_at_end() -> bool:
        return bool(counters["eval_history"]) and counters["eval_history"][-1][0] == counters["env_steps"]

    try:
        # A run stopped at its last step (in its last updates or its final evaluation) still owes them.
        if counters["env_steps"] < acfg.env_steps or not evaluated_at_end():
            with (
                Logger(
                    out_dir / "logs",
                    total=acfg.env_steps,
                    desc=f"agent {task} seed {seed}",
                    initial=counters["env_steps"],
                ) as log,
                StopSignals() as stop,
            ):
                _loop(
                    acfg,
                    agent,
                    envs,
                    replay,
                    inserter,
                    evaluator,
                    counters,
                    act_rng,
                    log,
                    save,
                    stop,
                )
                if stop.signum is not None and counters["env_steps"] < acfg.env_steps:
                    save()
                    at = f"env step {counters['env_steps']} of {acfg.env_steps}"
                    raise Stopped.saved(stop.signum, at, ckpt.directory)
                if not evaluated_at_end() and not _evaluate(agent, evaluator, counters, log, stop):
                    save()  # the resumed run finds the final evaluation missing and makes it
                    at = f"the final evaluation (env step {counters['env_steps']})"
                    raise Stopped.saved(stop.signum, at, ckpt.directory)
                save()
    except Diverged as exc:
        latest = ckpt.latest_path()
        raise ViperError(
            f"train-agent {task} ({reward}, seed {seed}): {exc} ({nonfinite_weights(agent)}): the agent diverged. "
            "Nothing is saved after a "
            f"divergence, so the newest checkpoint ({latest or 'none yet'}) holds finite weights and re-running "
            f"the command resumes from it; if it diverges again, try {divergence_advice(acfg, agent.cuda)}"
        ) from None
    finally:
        envs.close()
        evaluator.close()
    last_eval = counters["eval_history"][-1][1] if counters["eval_history"] else float("nan")
    metrics = {
        "env_steps": counters["env_steps"],
        "env_frames": counters["env_steps"] * acfg.action_repeat,
        "updates": counters["updates"],
        "episodes": counters["episodes"],
        "eval_task_return": last_eval,
        "wall_s": round(counters["wall_s"], 1),
    }
    viper_evals = counters.get("eval_viper_history", [])
    if viper_evals:
        metrics["eval_viper_return"] = viper_evals[-1][1]
    write_json(out_dir / "metrics.json", metrics)
    return {
        **metrics,
        "checkpoint_loads": ckpt.loads,
        "start_env_steps": start_steps,
        "replay_steps_at_start": start_replay,
        "replay_steps": len(replay),
    }


def _can_train(replay: Replay, batch_steps: int, length: int) -> bool:
    """Whether replay holds one batch of steps (the 2023 prefill) and a whole sequence in some env's stream
    (with more envs than sequences per batch, the first condition alone comes before either)."""
    return len(replay) >= batch_steps and bool((replay.sizes() >= length).any())


def _evaluate(agent: Agent, evaluator, counters: dict, log: Logger, stop: StopSignals) -> bool:
    """Evaluate at the current step and log it; False (nothing logged) when a stop signal cut it short."""
    try:
        result = evaluator(agent, counters["env_steps"], interrupted=lambda: stop.signum is not None)
    except EpisodeInterrupted:
        print(f"evaluation at env step {counters['env_steps']} cut short by the stop; a resumed run evaluates first")
        return False
    step = counters["env_steps"]
    counters["eval_history"].append((step, float(np.mean(result.task_returns))))
    row = {"episode/task_return": np.mean(result.task_returns), "episode/length": result.mean_length}
    if result.viper_returns:
        counters.setdefault("eval_viper_history", []).append((step, float(np.mean(result.viper_returns))))
        row["episode/viper_return"] = np.mean(result.viper_returns)
    log.scalars(row, step)
    evaluator.plot(counters["eval_history"], counters["train_history"])
    return True


def _evaluate_if_due(acfg, agent, evaluator, counters: dict, log: Logger, stop: StopSignals, phases) -> None:
    """Evaluate when the step has reached ``next_eval``; cut short by a stop, it stays due (the resumed run makes
    it at this step, before its first action)."""
    if counters["env_steps"] >= counters["next_eval"]:
        with phases("eval"):
            if _evaluate(agent, evaluator, counters, log, stop):
                counters["next_eval"] += acfg.eval_every_env_steps


def _owed_updates(counters: dict, ratio: float) -> int:
    """Updates due at the current step and not yet made (train_ratio 0 trains never, the 2023 Ratio's case)."""
    if counters["train_start"] < 0 or ratio <= 0:
        return 0
    return max(0, 1 + int((counters["env_steps"] - counters["train_start"]) * ratio) - counters["updates"])


def _train(agent, replay, acfg, counters, stretch, length: int, ratio: float, stop: StopSignals) -> None:
    """Make the updates owed at the current step; a stop leaves the rest owed (they are counted, not queued)."""
    due = _owed_updates(counters, ratio)
    with stretch.phases("update") if due > 0 else contextlib.nullcontext():
        for _ in range(due):
            if stop.signum is not None:
                break
            batch = agent.to_tensors(replay.sample(acfg.batch_size, length))
            # Summed as tensors (on CUDA a float() per metric would wait for the GPU after every update).
            stretch.add(agent.update(batch))
            counters["updates"] += 1
        if due > 0 and agent.cuda:
            # The next action would wait for these updates anyway: waiting here counts them as updating.
            torch.cuda.synchronize(agent.device)


def _loop(acfg, agent, envs, replay, inserter, evaluator, counters, rng, log, save, stop: StopSignals) -> None:
    """Act, insert and train until ``acfg.env_steps``, or until ``stop`` has caught a signal (checked before each
    update and evaluation step, and after each step's logging and checkpoint, so the state is whole when the caller
    saves). An update burst or evaluation a stop cut short is finished first on resume, at the step it was due,
    as an uninterrupted run makes it."""
    batch_steps = acfg.batch_size * acfg.batch_length
    ratio = acfg.train_ratio / batch_steps
    length = sequence_length(acfg, inserter.source)
    count = envs.count
    obs = envs.reset()
    reward = np.zeros(count, np.float32)
    is_first = np.ones(count, bool)
    is_last = np.zeros(count, bool)
    is_terminal = np.zeros(count, bool)
    carry = agent.initial_carry(count)
    ep_return = np.zeros(count)
    ep_length = np.zeros(count, np.int64)
    stretch = Stretch(log, counters, replay)
    phases = stretch.phases
    clock = time.time()
    # Resumed from a stop: what was cut short at this step (no-ops otherwise: nothing is owed, the eval is ahead).
    if _can_train(replay, batch_steps, length):
        _train(agent, replay, acfg, counters, stretch, length, ratio, stop)
    if stop.signum is None:
        _evaluate_if_due(acfg, agent, evaluator, counters, log, stop, phases)
    while counters["env_steps"] < acfg.env_steps and stop.signum is None:
        with phases("act"):
            if not _can_train(replay, batch_steps, length):
                action = envs.random_actions(rng)
            else:
                action, carry = agent.act(obs, is_first, carry)
                if not np.isfinite(action).all():  # MuJoCo would stop with an opaque mjWARN_BADCTRL
                    raise Diverged(f"the policy's action is not finite at env step {counters['env_steps']}")
        with phases("insert"):
            inserter.add(
                {
                    "image": obs,
                    "action": action,
                    "reward": reward,
                    "is_first": is_first,
                    "is_last": is_last,
                    "is_terminal": is_terminal,
                }
            )
        ep_return = np.where(is_first, 0.0, ep_return) + reward
        ep_length = np.where(is_first, 0, ep_length + 1)
        for i in np.flatnonzero(is_last):
            counters["episodes"] += 1
            counters["train_history"].append((counters["env_steps"], float(ep_return[i])))
            log.scalars(
                {"train/episode_task_return": ep_return[i], "train/episode_length": ep_length[i]}, counters["env_steps"]
            )
        for _, total, steps in inserter.finished:
            # The optimised reward's return of a finished training episode (VIPER: sum of its inserted rewards).
            log.scalars(
                {"train/episode_viper_return": total, "train/episode_viper_steps": steps}, counters["env_steps"]
            )
        inserter.finished.clear()
        with phases("env"):
            obs, reward, is_first, is_last, is_terminal = envs.step(action)
        counters["env_steps"] += count
        step = counters["env_steps"]
        if _can_train(replay, batch_steps, length):
            if counters["train_start"] < 0:
                counters["train_start"] = step
            _train(agent, replay, acfg, counters, stretch, length, ratio, stop)
        now = time.time()
        counters["wall_s"] += now - clock
        clock = now
        log.advance(step)
        if step >= counters["next_log"]:
            counters["next_log"] += acfg.log_every_env_steps
            stretch.write(step)
        _evaluate_if_due(acfg, agent, evaluator, counters, log, stop, phases)
        if step >= counters["next_checkpoint"]:
            # Past the final step too, so that a longer env_steps does not save again at once on resume.
            while counters["next_checkpoint"] <= step:
                counters["next_checkpoint"] += acfg.checkpoint_every_env_steps
            if step < acfg.env_steps:
                with phases("checkpoint"):
                    save()
        if stop.signum is not None:
            break
    # The stretch since the last row: a stop (or an env_steps off the log cadence) would otherwise drop its metrics.
    if counters["env_steps"] > stretch.logged_at:
        stretch.write(counters["env_steps"])
