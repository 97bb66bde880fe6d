"""The tokenizer's and prior's optimiser: optax's AdamW (decay added to the Adam direction), against a slow loop."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from viper.train.adamw import OptaxAdamW


def _reference(p0, grads, lr, b1, b2, eps, wd):
    """optax.adamw written out per element and per step in float64."""
    p, m, v = [float(x) for x in p0], [0.0] * len(p0), [0.0] * len(p0)
    for t, g in enumerate(grads, 1):
        for i, gi in enumerate(g):
            m[i] = b1 * m[i] + (1 - b1) * float(gi)
            v[i] = b2 * v[i] + (1 - b2) * float(gi) ** 2
            u = (m[i] / (1 - b1**t)) / (math.sqrt(v[i] / (1 - b2**t)) + eps) + wd * p[i]
            p[i] -= lr * u
    return np.array(p)


def _run(cls, p0, grads, lrs, wd, **kw):
    p = torch.nn.Parameter(torch.tensor(p0, dtype=torch.float32))
    opt = cls([p], lr=lrs[0], weight_decay=wd, **kw)
    for g, lr in zip(grads, lrs, strict=True):
        for group in opt.param_groups:
            group["lr"] = lr
        p.grad = torch.tensor(g, dtype=torch.float32)
        opt.step()
    return p.detach().numpy(), opt


def test_optax_adamw_matches_a_slow_reference_loop_and_its_decay_survives_float32():
    rng = np.random.default_rng(0)
    p0 = rng.normal(size=64)
    grads = rng.normal(size=(20, 64)) * rng.uniform(0.01, 10, size=(20, 1))
    lr, wd = 1e-2, 0.1
    ours, _ = _run(OptaxAdamW, p0, grads, [lr] * 20, wd)
    np.testing.assert_allclose(ours, _reference(p0, grads, lr, 0.9, 0.999, 1e-8, wd), rtol=1e-5, atol=1e-6)

    # The published lr 1e-4 / weight decay 1e-4: torch's AdamW multiplies by 1 - 1e-8 == 1.0 in float32 and trains
    # exactly as with no decay; optax's order changes the weights (the released code's behaviour).
    grads = rng.normal(size=(50, 4096))
    p0 = rng.normal(size=4096)
    lrs = [1e-4] * 50
    torch_decay, _ = _run(torch.optim.AdamW, p0, grads, lrs, 1e-4, eps=1e-8)
    torch_none, _ = _run(torch.optim.AdamW, p0, grads, lrs, 0.0, eps=1e-8)
    assert np.array_equal(torch_decay, torch_none)
    ours_decay, _ = _run(OptaxAdamW, p0, grads, lrs, 1e-4)
    ours_none, _ = _run(OptaxAdamW, p0, grads, lrs, 0.0)
    assert (ours_decay != ours_none).sum() > 100
    # ...and in the decay's direction: toward zero, by about lr * wd * |p| per step on average.
    shrink = (np.abs(ours_none) - np.abs(ours_decay)).mean()
    assert 0 < shrink < 3 * 50 * 1e-8 * np.abs(p0).mean()


def test_a_torch_adamw_checkpoint_resumes_in_optax_adamw():
    rng = np.random.default_rng(1)
    p0, grads = rng.normal(size=16), rng.normal(size=(6, 16))
    _, old = _run(torch.optim.AdamW, p0, grads[:3], [1e-2] * 3, 0.0, eps=1e-8)
    p = torch.nn.Parameter(torch.tensor(old.param_groups[0]["params"][0].detach().numpy()))
    new = OptaxAdamW([p], lr=1e-2, weight_decay=0.0)
    new.load_state_dict(old.state_dict())
    for g in grads[3:]:
        p.grad = torch.tensor(g, dtype=torch.float32)
        new.step()
    ref, _ = _run(torch.optim.AdamW, p0, grads, [1e-2] * 6, 0.0, eps=1e-8)
    np.testing.assert_allclose(p.detach().numpy(), ref, rtol=1e-5, atol=1e-6)  # same moments, same step count


@pytest.mark.parametrize("foreach", [False, True], ids=["per_parameter", "multi_tensor"])
def test_every_parameter_of_a_group_steps_with_its_own_count_as_the_slow_loop(foreach):
    """Parameters of several shapes in one group, one without a gradient for its first steps and one skipping every
    third step (its moments and step count stand still then), each against the float64 loop on its own gradients;
    the multi-tensor path (the default on GPUs) and the per-parameter one (the CPU's) give the same bits."""
    rng = np.random.default_rng(2)
    shapes = [(7,), (3, 5), (16, 8), (1,)]
    p0 = [rng.normal(size=s) for s in shapes]
    params = [torch.nn.Parameter(torch.tensor(x, dtype=torch.float32)) for x in p0]
    twins = [torch.nn.Parameter(p.detach().clone()) for p in params]
    opt = OptaxAdamW(params, lr=3e-3, weight_decay=0.1, foreach=foreach)
    other = OptaxAdamW(twins, lr=3e-3, weight_decay=0.1, foreach=not foreach)
    seen = [[] for _ in shapes]
    for t in range(12):
        for i, (p, s) in enumerate(zip(params, shapes, strict=True)):
            if (i == 1 and t < 4) or (i == 3 and t % 3 == 0):
                p.grad = None
                continue
            g = rng.normal(size=s) * (i + 1)
            seen[i].append(g.ravel())
            p.grad = torch.tensor(g, dtype=torch.float32)
        for p, twin in zip(params, twins, strict=True):
            twin.grad = None if p.grad is None else p.grad.clone()
        opt.step()
        other.step()
    assert all(torch.equal(p, twin) for p, twin in zip(params, twins, strict=True))
    for i, p in enumerate(params):
        assert int(opt.state[p]["step"]) == len(seen[i])
        ref = _reference(p0[i].ravel(), seen[i], 3e-3, 0.9, 0.999, 1e-8, 0.1)
        np.testing.assert_allclose(p.detach().numpy().ravel(), ref, rtol=1e-5, atol=1e-6)


def test_a_state_saved_before_the_foreach_setting_resumes_and_continues_the_same_run():
    """OptaxAdamW checkpoints from before ``foreach`` existed have no such key in their param groups."""
    rng = np.random.default_rng(3)
    p0, grads = rng.normal(size=16), rng.normal(size=(6, 16))
    whole, _ = _run(OptaxAdamW, p0, grads, [1e-2] * 6, 0.1)
    first, old = _run(OptaxAdamW, p0, grads[:3], [1e-2] * 3, 0.1)
    saved = old.state_dict()
    for group in saved["param_groups"]:
        del group["foreach"]
    p = torch.nn.Parameter(torch.tensor(first))
    new = OptaxAdamW([p], lr=1e-2, weight_decay=0.1)
    new.load_state_dict(saved)
    for g in grads[3:]:
        p.grad = torch.tensor(g, dtype=torch.float32)
        new.step()
    assert np.array_equal(p.detach().numpy(), whole)
