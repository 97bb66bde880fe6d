"""Agent layers against their plain counterparts: the one-hot gather layer vs a dense linear map, the RSSM's
reset and features, compiled loop steps vs eager ones."""

from __future__ import annotations

import pytest
import torch

from viper.agent.rssm import RSSM


def _straight_through_features(gen, rows, deter, groups, classes, trailing=0):
    """[dense (rows, deter), straight-through one-hots (rows, groups*classes), dense (rows, trailing)]."""
    logits = torch.randn(rows, groups, classes, generator=gen, dtype=torch.float64).requires_grad_()
    probs = torch.softmax(logits, -1)
    index = torch.randint(0, classes, (rows, groups), generator=gen)
    onehot = torch.nn.functional.one_hot(index, classes).to(probs.dtype) + probs - probs.detach()
    dense = torch.randn(rows, deter, generator=gen, dtype=torch.float64, requires_grad=True)
    tail = torch.randn(rows, trailing, generator=gen, dtype=torch.float64, requires_grad=True)
    return torch.cat([dense, onehot.flatten(1), tail], 1), (logits, dense, tail)


@pytest.mark.parametrize("deter,trailing,bias", [(5, 0, True), (0, 3, False), (4, 2, True)])
def test_onehot_linear_matches_dense_linear_values_and_gradients(deter, trailing, bias):
    from viper.agent.nets import OneHotLinear, OneHotWidth

    groups, classes, units = 3, 4, 6
    width = OneHotWidth(deter + groups * classes + trailing, deter, groups, classes)
    layer = OneHotLinear(width, units, bias=bias).double()
    gen = torch.Generator().manual_seed(0)
    feat, leaves = _straight_through_features(gen, 2 * 7, deter, groups, classes, trailing)
    # Leading batch axes (2, 7, F) as the heads see them.
    feat = feat.unflatten(0, (2, 7))
    out = layer(feat)
    ref = feat @ layer.weight.T + (layer.bias if bias else 0.0)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    weights = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    params = [layer.weight] + ([layer.bias] if bias else [])
    got = torch.autograd.grad((out * weights).sum(), [*leaves, *params], retain_graph=True)
    want = torch.autograd.grad((ref * weights).sum(), [*leaves, *params])
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)


def test_onehot_linear_backward_with_inputs_computes_only_the_requested_gradients():
    # The agent's actor and critic passes call backward(inputs=...): the layer must give the requested
    # gradients exactly and skip the products nobody asked for (one matmul each, not two).
    from torch.profiler import ProfilerActivity, profile

    from viper.agent.nets import OneHotLinear, OneHotWidth

    width = OneHotWidth(4 + 3 * 5, 4, 3, 5)
    layer = OneHotLinear(width, 6).double()
    gen = torch.Generator().manual_seed(1)
    weights = torch.randn(9, 6, generator=gen, dtype=torch.float64)
    for target in ("weight", "input"):
        feat, (logits, dense, _) = _straight_through_features(gen, 9, 4, 3, 5, 0)
        layer.zero_grad(set_to_none=True)
        inputs = [layer.weight] if target == "weight" else [logits, dense]
        if target == "weight":
            want = (weights.T @ feat.detach(),)
        else:
            want = torch.autograd.grad((feat @ layer.weight.detach().T * weights).sum(), inputs, retain_graph=True)
        loss = (layer(feat) * weights).sum()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            loss.backward(inputs=inputs)
        for tensor, w in zip(inputs, want, strict=True):
            torch.testing.assert_close(tensor.grad, w, rtol=1e-12, atol=1e-12)
        others = [logits, dense] if target == "weight" else [layer.weight, layer.bias]
        assert all(t.grad is None for t in others)
        matmuls = [e for e in prof.events() if e.name == "aten::mm"]
        assert len(matmuls) == 1, f"{target}: {len(matmuls)} matmuls in the backward, expected 1"


def test_onehot_linear_falls_back_to_dense_for_inputs_that_are_not_one_hot():
    from viper.agent.nets import OneHotLinear, OneHotWidth

    layer = OneHotLinear(OneHotWidth(2 + 2 * 3, 2, 2, 3), 4)
    soft = torch.softmax(torch.randn(5, 2, 3), -1).flatten(1)
    for x in (torch.cat([torch.randn(5, 2), soft], 1), torch.zeros(5, 8), torch.randn(5, 8)):
        torch.testing.assert_close(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias))


def test_rssm_features_and_prior_input_use_the_gather_layer():
    from viper.agent.nets import MLP, OneHotLinear

    rssm = RSSM(deter=8, stoch=4, classes=5, units=8, action_dim=2, embed_dim=4)
    assert isinstance(rssm.img_in.linear, OneHotLinear)
    head = MLP(rssm.feat_dim, 3, 1, 8)
    assert isinstance(head.hidden[0].linear, OneHotLinear) and rssm.feat_dim == 8 + 4 * 5
    # Plan2Explore's heads read [feat, action]: the latents keep their span, the action columns come after it.
    from viper.agent.exploration import Disagreement

    disag = Disagreement(rssm.feat_dim, 2, 20, 1, 8, members=2)
    first = disag.heads[0].hidden[0].linear
    assert isinstance(first, OneHotLinear) and first.span == (8, 4, 5) and first.in_features == 8 + 20 + 2


def test_unknown_compile_mode_is_refused_naming_the_key():
    from viper.agent.agent import Agent
    from viper.config import AgentConfig
    from viper.errors import ViperError

    with pytest.raises(ViperError, match=r"agent.compile_mode='fast'.*reduce-overhead"):
        Agent(AgentConfig(size="tiny", compile_loops=True, compile_mode="fast"), 1, False, "reward", "cpu")


def test_compiled_loop_steps_match_eager_values_and_gradients():
    """``agent.compile_loops``: the observe and imagination steps traced by torch.compile (graph capture and
    autograd; the ``aot_eager`` backend keeps the test fast and draws random numbers as eager code does, so
    both runs see the same samples) compute what the eager steps do, values and gradients."""
    from viper.agent.world_model import ModelSize, WorldModel

    size = ModelSize(deter=16, units=16, cnn_depth=4, layers=1, stoch=4, classes=4)
    wm = WorldModel(size, 2, {"reward": True})
    gen = torch.Generator().manual_seed(0)
    embed = torch.randn(3, 5, wm.encoder.out_dim, generator=gen)
    prev_action = torch.rand(3, 5, 2, generator=gen) * 2 - 1
    is_first = torch.zeros(3, 5, dtype=torch.bool)
    is_first[:, 0] = is_first[1, 3] = True

    def policy(feat):
        action = torch.tanh(feat[..., :2] * 3.0)
        return action, action

    def run(compiled: bool):
        torch.manual_seed(1)
        post, prior_logits = wm.rssm.observe(embed, prev_action, is_first)
        start = post.map(lambda x: x.flatten(0, 1))
        step = None
        if compiled:
            step = torch.compile(lambda s: wm.imagine_step(policy, s), backend="aot_eager", dynamic=False)
        traj, actions, _ = wm.imagine(policy, start, 3, step)
        loss = post.deter.square().sum() + prior_logits.exp().mul(post.logits).sum() + traj.deter.sum()
        grads = torch.autograd.grad(loss, list(wm.rssm.parameters()), allow_unused=True)
        return [post.deter, post.stoch, post.logits, traj.deter, traj.stoch, actions], grads

    eager_values, eager_grads = run(False)
    from torch._dynamo.utils import counters

    counters.clear()
    wm.rssm.compile_steps(backend="aot_eager", dynamic=False)
    values, grads = run(True)
    assert counters["frames"]["ok"] >= 2, "both steps must have been compiled, not run eagerly"
    for got, want in zip(values, eager_values, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    for got, want in zip(grads, eager_grads, strict=True):
        if want is not None:
            torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-4)


def test_observe_resets_state_and_previous_action_at_is_first():
    """At an ``is_first`` step inside a sequence the RSSM restarts from its learned initial state with a zero
    previous action, so the step's deterministic state equals the sequence's first step, exactly, whatever
    action and state came before; the learned initial state gets gradient from both restarts."""
    torch.manual_seed(0)
    rssm = RSSM(deter=8, stoch=3, classes=4, units=8, action_dim=2, embed_dim=5)
    embed = torch.randn(2, 6, 5)
    prev_action = torch.rand(2, 6, 2) + 0.5  # never zero: a restart that kept the action would differ
    is_first = torch.zeros(2, 6, dtype=torch.bool)
    is_first[:, 0] = is_first[0, 4] = True
    post, _ = rssm.observe(embed, prev_action, is_first)
    torch.testing.assert_close(post.deter[0, 4], post.deter[0, 0], rtol=0, atol=0)
    torch.testing.assert_close(post.deter[1, 0], post.deter[0, 0], rtol=0, atol=0)
    assert not torch.allclose(post.deter[1, 4], post.deter[0, 0]), "no restart without is_first"
    # The same step by hand: the initial state fed through the prior's GRU with a zero action.
    init = rssm.initial(1)
    x = rssm.img_in(torch.cat([init.stoch.flatten(-2), torch.zeros(1, 2)], -1))
    torch.testing.assert_close(post.deter[0, 4], rssm._gru_step(x, init.deter)[0])
    (grad,) = torch.autograd.grad(post.deter[0, 4].sum(), [rssm.initial_deter])
    assert grad.abs().sum() > 0
