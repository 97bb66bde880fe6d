"""DreamerV3 numerics against slow, obviously-correct reference loops (no environments involved)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from viper.agent.actor_critic import PercentileNorm, lambda_returns
from viper.agent.dists import (
    NormalActor,
    OneHotDist,
    TwoHot,
    categorical_index,
    straight_through,
    symexp,
    symlog,
    twohot_encode,
    unimix_logits,
)
from viper.agent.replay import Replay
from viper.agent.rssm import RSSM, mode_onehot, sample_onehot


def test_symlog_symexp_match_formula_and_invert():
    x = torch.linspace(-1e4, 1e4, 2001, dtype=torch.float64)
    ref = torch.tensor([math.copysign(math.log(1 + abs(v)), v) for v in x.tolist()], dtype=torch.float64)
    torch.testing.assert_close(symlog(x), ref)
    torch.testing.assert_close(symexp(symlog(x)), x, rtol=1e-9, atol=1e-9)


def _twohot_slow(y: float, bins: list[float]) -> list[float]:
    """Linear interpolation between the two neighbouring bins; all mass on an end bin outside the range."""
    out = [0.0] * len(bins)
    if y <= bins[0]:
        out[0] = 1.0
        return out
    if y >= bins[-1]:
        out[-1] = 1.0
        return out
    for k in range(len(bins) - 1):
        if bins[k] <= y < bins[k + 1]:
            frac = (y - bins[k]) / (bins[k + 1] - bins[k])
            out[k] += 1.0 - frac
            out[k + 1] += frac
            return out
    raise AssertionError("unreachable")


def test_twohot_encode_matches_slow_reference_and_round_trips():
    bins = torch.linspace(-20.0, 20.0, 255, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    y = torch.cat([torch.randn(300, generator=gen, dtype=torch.float64) * 8, bins[:5], torch.tensor([-25.0, 30.0])])
    got = twohot_encode(y, bins)
    ref = torch.tensor([_twohot_slow(v, bins.tolist()) for v in y.tolist()], dtype=torch.float64)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-9)
    # Decoding the encoding gives the value back (clipped to the bin range).
    torch.testing.assert_close((got * bins).sum(-1), y.clamp(-20, 20), rtol=0, atol=1e-9)


def test_twohot_distribution_round_trip_in_raw_units():
    x = torch.tensor([-300.0, -2.5, 0.0, 0.7, 12.0, 1000.0])
    bins = torch.linspace(-20.0, 20.0, 255)
    target = twohot_encode(symlog(x), bins)
    dist = TwoHot(torch.log(target + 1e-12))
    torch.testing.assert_close(dist.mean(), x, rtol=1e-4, atol=1e-4)
    # The log-probability of its own target is the target's negative entropy (max of the cross-entropy).
    ent = (target * torch.log(target + 1e-12)).sum(-1)
    torch.testing.assert_close(dist.log_prob(x), ent, rtol=1e-4, atol=1e-4)


def test_unimix_mixes_one_percent_uniform():
    logits = torch.randn(4, 32, 32) * 10
    probs = unimix_logits(logits, 0.01).exp()
    ref = 0.99 * torch.softmax(logits, -1) + 0.01 / 32
    torch.testing.assert_close(probs, ref)
    assert probs.min() >= 0.01 / 32 - 1e-7
    torch.testing.assert_close(probs.sum(-1), torch.ones(4, 32))


def test_straight_through_sample_is_onehot_with_probability_gradient_and_right_frequencies():
    logits = torch.log(torch.tensor([[0.1, 0.2, 0.7]])).requires_grad_()
    torch.manual_seed(0)
    samples = sample_onehot(logits.expand(20000, 3))
    assert torch.equal(samples.detach().sum(-1), torch.ones(20000))
    assert set(samples.detach().unique().tolist()) == {0.0, 1.0}
    freq = samples.detach().mean(0)
    torch.testing.assert_close(freq, torch.tensor([0.1, 0.2, 0.7]), rtol=0, atol=0.015)
    # Straight-through: d sample / d logits equals d softmax / d logits.
    weights = torch.tensor([1.0, -2.0, 3.0])
    (sample_onehot(logits) * weights).sum().backward()
    ref_logits = logits.detach().clone().requires_grad_()
    (torch.softmax(ref_logits, -1) * weights).sum().backward()
    torch.testing.assert_close(logits.grad, ref_logits.grad)


def test_categorical_index_is_the_inverse_cdf_of_its_uniform_draw_and_onehotdist_samples_the_right_frequencies():
    probs = torch.softmax(torch.randn(6, 5, 7, generator=torch.Generator().manual_seed(1)), -1)
    index = categorical_index(probs, torch.Generator().manual_seed(2))
    uniform = torch.rand(6, 5, 1, generator=torch.Generator().manual_seed(2))
    for i in range(6):  # slow reference: the first class whose running sum exceeds the uniform number
        for j in range(5):
            total, expected = 0.0, 6
            for k in range(7):
                total += float(probs[i, j, k])
                if total >= float(uniform[i, j, 0]):
                    expected = k
                    break
            assert int(index[i, j]) == expected
    target = torch.tensor([0.05, 0.15, 0.3, 0.5])
    dist = OneHotDist(torch.log(target).expand(40000, 4))
    samples = dist.sample(torch.Generator().manual_seed(0))
    # Exactly one-hot (the replay stores the actor's samples as the discrete actions), the mode too.
    assert torch.equal(samples.sum(-1), torch.ones(40000)) and set(samples.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(dist.mode(), torch.eye(4)[torch.full((40000,), 3)])
    torch.testing.assert_close(samples.mean(0), target, rtol=0, atol=0.01)


def test_straight_through_values_are_exactly_the_hard_one_hots_and_carry_the_probability_gradient():
    logits = torch.randn(1000, 7, generator=torch.Generator().manual_seed(0), requires_grad=True)
    probs = torch.softmax(logits, -1)
    hard = torch.eye(7)[probs.argmax(-1)]
    # Left to right, hard + probs - sg(probs) rounds 1 + p - p for about one row in eight of these.
    assert torch.equal(straight_through(hard, probs), hard)
    assert torch.equal(mode_onehot(logits), hard)
    weights = torch.randn(7, generator=torch.Generator().manual_seed(1))
    (straight_through(hard, probs) * weights).sum().backward()
    ref = logits.detach().clone().requires_grad_()
    (torch.softmax(ref, -1) * weights).sum().backward()
    torch.testing.assert_close(logits.grad, ref.grad)


def _lambda_slow(reward, value, disc, lam):
    """Definition by forward sums: R_t = r + d((1-lam) v' + lam R_{t+1}), written out per t with a loop."""
    horizon, n = reward.shape
    out = np.zeros((horizon, n))
    for i in range(n):
        for t in range(horizon):
            ret = value[horizon, i]
            for k in reversed(range(t, horizon)):
                ret = reward[k, i] + disc[k, i] * ((1 - lam) * value[k + 1, i] + lam * ret)
            out[t, i] = ret
    return out


def test_lambda_returns_match_slow_loop_and_limits():
    rng = np.random.default_rng(0)
    reward, value = rng.normal(size=(15, 6)), rng.normal(size=(16, 6))
    disc = 0.997 * (rng.random((15, 6)) > 0.1)
    got = lambda_returns(torch.tensor(reward), torch.tensor(value), torch.tensor(disc), 0.95).numpy()
    np.testing.assert_allclose(got, _lambda_slow(reward, value, disc, 0.95), rtol=1e-10)
    # lambda = 0: one-step TD targets; lambda = 1: discounted Monte-Carlo sum bootstrapped at the end.
    td = lambda_returns(torch.tensor(reward), torch.tensor(value), torch.tensor(disc), 0.0).numpy()
    np.testing.assert_allclose(td, reward + disc * value[1:], rtol=1e-10)
    mc = lambda_returns(torch.tensor(reward), torch.tensor(value), torch.tensor(disc), 1.0).numpy()
    ret = value[-1]
    for t in reversed(range(15)):
        ret = reward[t] + disc[t] * ret
    np.testing.assert_allclose(mc[0], ret, rtol=1e-10)


def test_percentile_normaliser_matches_reference_ema():
    norm = PercentileNorm(decay=0.99, max_inv=1.0, low=5.0, high=95.0)
    low = high = 0.0
    rng = np.random.default_rng(1)
    for step in range(30):
        x = rng.normal(scale=1.0 + step, size=500)
        norm.update(torch.tensor(x, dtype=torch.float32))
        low = 0.99 * low + 0.01 * np.percentile(x, 5)
        high = 0.99 * high + 0.01 * np.percentile(x, 95)
        offset, scale = norm.stats()
        np.testing.assert_allclose(float(offset), low, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(float(scale), max(1.0, high - low), rtol=1e-4, atol=1e-5)
    # Small return ranges are not scaled up: the scale never drops below 1.
    tiny = PercentileNorm()
    tiny.update(torch.full((100,), 0.01))
    assert float(tiny.stats()[1]) == 1.0


def _kl_slow(p_logits, q_logits):
    p, q = np.exp(p_logits), np.exp(q_logits)
    out = np.zeros(p.shape[:-2])
    for idx in np.ndindex(*p.shape[:-2]):
        out[idx] = sum(
            p[idx][s, k] * (math.log(p[idx][s, k]) - math.log(q[idx][s, k]))
            for s in range(p.shape[-2])
            for k in range(p.shape[-1])
        )
    return out


def test_kl_balancing_with_free_bits_values_and_gradient_routing():
    rssm = RSSM(deter=8, stoch=4, classes=5, units=8, action_dim=1, embed_dim=4)
    gen = torch.Generator().manual_seed(0)
    raw = torch.randn(3, 2, 4, 5, generator=gen) * 3
    # Priors close to the posterior on some steps (KL < 1 nat) and far on others.
    spread = torch.tensor([0.05, 0.2, 3.0]).view(3, 1, 1, 1)
    post = unimix_logits(raw, 0.01).requires_grad_()
    prior = unimix_logits(raw + spread * torch.randn(3, 2, 4, 5, generator=gen), 0.01).requires_grad_()
    dyn, rep, kl = rssm.kl_losses(post, prior, free_nats=1.0)
    ref = _kl_slow(post.detach().double().numpy(), prior.detach().double().numpy())
    np.testing.assert_allclose(kl.numpy(), ref, rtol=1e-4)
    np.testing.assert_allclose(dyn.detach().numpy(), np.maximum(ref, 1.0), rtol=1e-4)
    np.testing.assert_allclose(rep.detach().numpy(), np.maximum(ref, 1.0), rtol=1e-4)
    # dyn trains only the prior, rep only the posterior.
    (g_post,) = torch.autograd.grad(dyn.sum(), [post], allow_unused=True, retain_graph=True)
    assert g_post is None or g_post.abs().max() == 0
    (g_prior,) = torch.autograd.grad(rep.sum(), [prior], allow_unused=True, retain_graph=True)
    assert g_prior is None or g_prior.abs().max() == 0
    # Free bits: steps with KL below 1 nat get no gradient at all.
    below = torch.as_tensor(ref < 1.0)
    (g_prior,) = torch.autograd.grad(dyn.sum(), [prior])
    assert below.any() and (~below).any(), "fixture should cover both sides of the free-bits threshold"
    assert g_prior[below].abs().max() == 0 and g_prior[~below].abs().max() > 0


def test_normal_actor_matches_torch_distributions():
    mean_raw, std_raw = torch.randn(5, 3), torch.randn(5, 3)
    dist = NormalActor(mean_raw, std_raw)
    ref = torch.distributions.Normal(torch.tanh(mean_raw), 0.9 * torch.sigmoid(std_raw + 2.0) + 0.1)
    x = torch.randn(5, 3)
    torch.testing.assert_close(dist.log_prob(x), ref.log_prob(x).sum(-1))
    torch.testing.assert_close(dist.entropy(), ref.entropy().sum(-1))
    assert float(dist.std.min()) >= 0.1 and float(dist.std.max()) <= 1.0


def _filled_replay(capacity, streams, steps, seed=0):
    spec = {"image": ((2, 2, 3), np.uint8), "step": ((), np.int64), "is_first": ((), bool)}
    replay = Replay(capacity, streams, spec, seed)
    for t in range(steps):
        replay.add(
            {
                "image": np.full((streams, 2, 2, 3), t % 256, np.uint8),
                "step": np.array([100_000 * s + t for s in range(streams)]),
                "is_first": np.array([t % 50 == 0] * streams),
            }
        )
    return replay


def test_replay_sequences_are_contiguous_within_one_stream_and_start_fresh():
    replay = _filled_replay(capacity=3000, streams=3, steps=700)
    assert len(replay) == 2100
    batch = replay.sample(64, 20)
    steps = batch["step"]
    assert steps.shape == (64, 20) and batch["image"].shape == (64, 20, 2, 2, 3)
    assert (np.diff(steps, axis=1) == 1).all(), "sequences are consecutive steps"
    assert (steps // 100_000 == steps[:, :1] // 100_000).all(), "one stream per sequence"
    assert batch["is_first"][:, 0].all()
    np.testing.assert_array_equal(batch["image"][..., 0, 0, 0], (steps % 100_000) % 256)


def test_replay_draws_every_stored_window_equally_often():
    """Uniform over all stored windows, whatever the streams' sizes: streams of 30 and 12 steps hold 27 and 9
    windows of 4 steps; each of the 36 starts is drawn 1/36 of the time (within 5 sigma of 72k draws)."""
    spec = {"step": ((), np.int64), "is_first": ((), bool)}
    replay = Replay(1000, 2, spec, seed=0)
    for t in range(30):
        streams = np.array([0, 1]) if t < 12 else np.array([0])
        replay.add({"step": 100_000 * streams + t, "is_first": np.zeros(len(streams), bool)}, streams)
    counts: dict[int, int] = {}
    for _ in range(36):
        for first in replay.sample(2000, 4)["step"][:, 0].tolist():
            counts[first] = counts.get(first, 0) + 1
    legal = [t for t in range(27)] + [100_000 + t for t in range(9)]
    assert sorted(counts) == legal  # every window reachable, nothing else drawn
    n, p = 72_000, 1 / 36
    sigma = (n * p * (1 - p)) ** 0.5
    assert all(abs(c - n * p) < 5 * sigma for c in counts.values()), counts


def test_replay_ring_overwrites_oldest_and_save_load_round_trips(tmp_path):
    replay = _filled_replay(capacity=3000, streams=2, steps=4000, seed=3)
    assert len(replay) == 3000 and replay.sizes().tolist() == [1500, 1500]
    # Only the newest 1500 steps of each stream remain; windows across the ring's seam stay consecutive.
    steps = replay.sample(2000, 30)["step"]
    assert (steps % 100_000).min() >= 2500 and (steps % 100_000).max() == 3999
    assert (np.diff(steps, axis=1) == 1).all()
    replay.save(tmp_path / "replay")
    other = _filled_replay(capacity=3000, streams=2, steps=10, seed=99)
    other.load(tmp_path / "replay")
    assert len(other) == len(replay)
    a, b = replay.sample(32, 16), other.sample(32, 16)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])


@pytest.mark.parametrize("discrete", [False, True])
def test_one_update_runs_and_improves_world_model_loss(discrete):
    from viper.agent.agent import Agent
    from viper.config import AgentConfig

    torch.manual_seed(0)
    agent = Agent(AgentConfig(size="tiny", imag_horizon=4), 3, discrete, "reward", "cpu")
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.integers(0, 255, (2, 8, 64, 64, 3), dtype=np.uint8),
        "action": np.eye(3, dtype=np.float32)[rng.integers(3, size=(2, 8))]
        if discrete
        else rng.uniform(-1, 1, (2, 8, 3)).astype(np.float32),
        "reward": rng.normal(size=(2, 8)).astype(np.float32),
        "is_first": np.eye(1, 8, dtype=bool).repeat(2, 0),
        "is_terminal": np.zeros((2, 8), bool),
    }
    tensors = agent.to_tensors(batch)
    actor_before = [p.detach().clone() for p in agent.actor_params]
    first = agent.update(tensors)
    for _ in range(4):
        last = agent.update(tensors)
    assert float(last["loss/model"]) < float(first["loss/model"])
    assert all(math.isfinite(float(v)) for v in last.values())
    assert any(not torch.equal(a, b) for a, b in zip(actor_before, agent.actor_params, strict=True))


def test_a_cuda_graph_runs_optimizer_state_resumes_on_the_cpu():
    """``device`` and ``cuda_graph`` may change on resume; a CUDA-graph run saves capturable Adam states."""
    from viper.agent.agent import Agent
    from viper.config import AgentConfig

    torch.manual_seed(0)
    cfg = AgentConfig(size="tiny", imag_horizon=4)
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.integers(0, 255, (2, 8, 64, 64, 3), dtype=np.uint8),
        "action": rng.uniform(-1, 1, (2, 8, 1)).astype(np.float32),
        "reward": rng.normal(size=(2, 8)).astype(np.float32),
        "is_first": np.eye(1, 8, dtype=bool).repeat(2, 0),
        "is_terminal": np.zeros((2, 8), bool),
    }
    agent = Agent(cfg, 1, False, "reward", "cpu")
    agent.update(agent.to_tensors(batch))
    saved = agent.optimizer_state()
    for opt in saved.values():  # what the same run writes with agent.cuda_graph on CUDA
        for group in opt["param_groups"]:
            group["capturable"] = True
    resumed = Agent(cfg, 1, False, "reward", "cpu")
    resumed.load_state_dict(agent.state_dict())
    resumed.load_optimizer_state(saved)
    assert not any(g["capturable"] for opt in (resumed.model_opt, resumed.actor_opt) for g in opt.param_groups)
    metrics = resumed.update(resumed.to_tensors(batch))  # a capturable Adam on CPU tensors raises here
    assert all(math.isfinite(float(v)) for v in metrics.values())
    steps = {float(s["step"]) for s in resumed.model_opt.state.values()}
    assert steps == {2.0}  # the saved step count continued


def test_onehot_and_twohot_scatter_match_reference_loops():
    from viper.agent.dists import onehot

    index = torch.tensor([[0, 3], [2, 2]])
    want = torch.zeros(2, 2, 4, dtype=torch.float64)
    for i in range(2):
        for j in range(2):
            want[i, j, index[i, j]] = 1.0
    got = onehot(index, 4, torch.float64)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    # Two-hot at the ends and on a bin: all the mass on one bin, weights still sum to 1.
    bins = torch.linspace(-2.0, 2.0, 5)
    weights = twohot_encode(torch.tensor([-5.0, 2.0, 0.0, 0.25, 7.0]), bins)
    want = torch.zeros(5, 5)
    want[0, 0] = want[1, 4] = want[2, 2] = want[4, 4] = 1.0
    want[3, 2], want[3, 3] = 0.75, 0.25
    torch.testing.assert_close(weights, want)
