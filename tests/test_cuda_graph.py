"""``agent.cuda_graph``: the update replayed from one CUDA graph reads each new batch, updates the weights the
agent acts with, and learns like the eager update - for continuous actions, for the discrete (Atari) actor, and
with the observe / imagination steps compiled inside the graph (``agent.compile_loops``). Runs only where CUDA is
(a GPU session), skipped elsewhere."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from viper.agent.agent import Agent
from viper.config import AgentConfig
from viper.errors import ViperError

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="agent.cuda_graph needs a CUDA device")

B, T, ACTIONS, UPDATES = 4, 16, 2, 24


def _batch(images: np.ndarray, seed: int, discrete: bool, reward_name: str = "reward") -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    is_first = np.zeros((B, T), bool)
    is_first[:, 0] = True
    if discrete:
        actions = np.eye(ACTIONS, dtype=np.float32)[rng.integers(0, ACTIONS, (B, T))]
    else:
        actions = rng.uniform(-1, 1, (B, T, ACTIONS)).astype(np.float32)
    batch = {
        "image": images,
        "action": actions,
        "reward": rng.normal(size=(B, T)).astype(np.float32),
        "is_first": is_first,
        "is_terminal": np.zeros((B, T), bool),
    }
    if reward_name == "density":  # VIPER rewards: log-likelihoods of a few hundred nats per step
        batch["density"] = rng.normal(-300.0, 80.0, size=(B, T)).astype(np.float32)
    return batch


def train(
    graphed: bool, device: str, discrete: bool = False, compile_loops: bool = False, reward_name: str = "reward"
) -> tuple[Agent, dict[str, list[float]], list[bool]]:
    """UPDATES updates alternating a black-image batch and a noise-image batch; (agent, per-update losses by name,
    moved) where moved[i] says whether update i changed the encoder's first weight the agent acts with (and, with
    a disagreement ensemble, its first weight too)."""
    torch.manual_seed(0)
    cfg = AgentConfig(size="tiny", batch_size=B, batch_length=T, cuda_graph=graphed, compile_loops=compile_loops)
    agent = Agent(cfg, ACTIONS, discrete, reward_name, device)
    noise = np.random.default_rng(1).integers(0, 256, (B, T, 64, 64, 3), dtype=np.uint8)
    black = np.zeros_like(noise)
    batches = [
        agent.to_tensors(_batch(images, seed, discrete, reward_name)) for images, seed in ((black, 2), (noise, 3))
    ]
    weights = [next(agent.wm.encoder.parameters())]
    if agent.expl is not None:
        weights.append(next(agent.expl.parameters()))
    losses: dict[str, list[float]] = {"loss/image": [], f"loss/{reward_name}": []}
    moved = []
    for i in range(UPDATES):
        before = [w.detach().clone() for w in weights]
        metrics = agent.update(batches[i % 2])
        for key, values in losses.items():
            values.append(float(metrics[key]))
        moved.append(all(not torch.equal(b, w.detach()) for b, w in zip(before, weights, strict=True)))
    return agent, losses, moved


@needs_cuda
@pytest.mark.parametrize(
    "discrete, compile_loops, reward_name",
    [(False, False, "reward"), (True, False, "reward"), (False, True, "reward"), (False, True, "density")],
    ids=["continuous", "discrete", "fused", "viper_fused"],
)
def test_graphed_update_reads_each_batch_moves_the_weights_and_learns_like_eager(discrete, compile_loops, reward_name):
    """``viper_fused``: the VIPER agent's update (density head, disagreement ensemble, two critics) in the fused
    graph, as the GPU learning runs take it with ``LOOPS=true``."""
    graphed, g_all, g_moved = train(True, "cuda", discrete, compile_loops, reward_name)
    assert graphed.graphed.graph is not None and not graphed.graphed.failed
    _, e_all, _ = train(False, "cuda", discrete, reward_name=reward_name)
    assert all(g_moved), "a replay left the weights the agent acts with (or the disagreement ensemble) unchanged"
    g_losses, e_losses = g_all["loss/image"], e_all["loss/image"]
    replays = range(graphed.graphed.warmup + 1, UPDATES - 1)  # after the capture
    for i in replays:  # the two batches' losses differ by ~2x: a replay of a stale input would show no gap
        assert abs(np.log(g_losses[i] / g_losses[i + 1])) > np.log(1.5), (i, g_losses)
    for start in (0, 1):  # each batch's loss falls at least half as much as eagerly, and ends near it
        g, e = g_losses[start::2], e_losses[start::2]
        assert g[-1] / g[0] < 1 - 0.5 * (1 - e[-1] / e[0]), (g, e)
        assert 0.8 < g[-1] / e[-1] < 1.25, (g, e)
    # The reward head being optimised (VIPER: density, fed from its own batch key) learns in the graph as eagerly.
    g, e = g_all[f"loss/{reward_name}"], e_all[f"loss/{reward_name}"]
    assert g[-1] < g[0] and 0.8 < g[-1] / e[-1] < 1.25, (g, e)


@needs_cuda
def test_a_cpu_runs_optimizer_state_resumes_into_a_captured_cuda_graph():
    """``device`` may change on resume: Adam states saved without capturable still let the update be captured."""
    torch.manual_seed(0)
    cfg = AgentConfig(size="tiny", batch_size=B, batch_length=T)
    images = np.random.default_rng(1).integers(0, 256, (B, T, 64, 64, 3), dtype=np.uint8)
    cpu = Agent(replace(cfg, cuda_graph=False), ACTIONS, False, "reward", "cpu")
    cpu.update(cpu.to_tensors(_batch(images, 2, False)))
    gpu = Agent(cfg, ACTIONS, False, "reward", "cuda")
    gpu.load_state_dict(cpu.state_dict())
    optim = {
        k: {**v, "state": {i: {n: t.cuda() for n, t in s.items()} for i, s in v["state"].items()}}
        for k, v in cpu.optimizer_state().items()
    }
    gpu.load_optimizer_state(optim)
    batch = gpu.to_tensors(_batch(images, 2, False))
    for _ in range(gpu.graphed.warmup + 2):
        gpu.update(batch)
    assert gpu.graphed.graph is not None and not gpu.graphed.failed


@needs_cuda
def test_cuda_graph_by_default_refuses_compile_mode_reduce_overhead_and_names_the_switch():
    cfg = AgentConfig(size="tiny", compile_loops=True, compile_mode="reduce-overhead")
    with pytest.raises(ViperError, match="agent.cuda_graph=false"):
        Agent(cfg, ACTIONS, False, "reward", "cuda")
    Agent(replace(cfg, cuda_graph=False), ACTIONS, False, "reward", "cuda")  # the named switch works


@needs_cuda
def test_agent_compile_compiles_every_head_and_critic_not_only_their_containers():
    """``agent.compile``: the heads and critics are called one by one, so each must be compiled itself."""
    agent = Agent(AgentConfig(size="tiny", compile=True, cuda_graph=False), ACTIONS, False, "density", "cuda")
    modules = [agent.wm.encoder, agent.wm.decoder, *agent.wm.heads.values(), *agent.ac.critics.values()]
    assert all(m._compiled_call_impl is not None for m in modules)
