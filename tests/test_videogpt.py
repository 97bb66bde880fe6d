"""VideoGPT prior math: causality, per-frame likelihoods, conditioning, KV-cache sampling, learning dynamics.

These tests are about the prior alone, so they use a small random codebook tensor and token arrays directly.
"""

from __future__ import annotations

import pytest
import torch

from viper.models.videogpt import PriorInputError, PriorSpec, VideoGPT
from viper.train.prior import EMA, PriorLoss, train_step


def make_prior(num_classes: int = 3, seed: int = 0, **overrides) -> VideoGPT:
    torch.manual_seed(seed)
    values = dict(
        d_model=32,
        layers=2,
        heads=2,
        mlp_dim=64,
        dropout=0.0,
        seq_len=4,
        grid=(3, 2),
        codebook_size=7,
        embed_dim=5,
        num_classes=num_classes,
    )
    values.update(overrides)
    spec = PriorSpec(**values)
    model = VideoGPT(spec, torch.randn(spec.codebook_size, spec.embed_dim))
    # Larger random weights than the init (conditional-LN weights start at zero): every path matters.
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return model.eval()


def tokens_for(model: VideoGPT, batch: int, frames: int | None = None, seed: int = 1) -> torch.Tensor:
    spec = model.spec
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, spec.codebook_size, (batch, frames or spec.seq_len, *spec.grid), generator=g)


def slow_token_log_probs(model: VideoGPT, tokens: torch.Tensor, task_ids: torch.Tensor) -> torch.Tensor:
    """log p of every token from a separate forward pass that sees its prefix only (T, h, w per window): the
    token itself and everything after it are replaced by other tokens, so a model that peeks at the token it
    predicts (an unshifted input) disagrees with this reference."""
    spec = model.spec
    flat = tokens.reshape(tokens.shape[0], -1)
    out = torch.zeros(flat.shape, dtype=torch.float64)
    per_frame = spec.tokens_per_frame
    for i in range(flat.shape[1]):
        # Pad the prefix to whole frames with other tokens: a causal model must not look at position i or later.
        frames = i // per_frame + 1
        window = torch.zeros(flat.shape[0], frames * per_frame, dtype=torch.long)
        window[:, :i] = flat[:, :i]
        window[:, i:] = (flat[:, i : frames * per_frame] + 3) % spec.codebook_size
        logits = model(window.reshape(-1, frames, *spec.grid), task_ids).reshape(flat.shape[0], -1, spec.codebook_size)
        out[:, i] = logits[:, i].log_softmax(-1).gather(-1, flat[:, i : i + 1])[:, 0].double()
    return out


def test_frame_log_probs_match_a_prefix_by_prefix_reference():
    model = make_prior()
    tokens = tokens_for(model, 2)
    ids = torch.tensor([0, 2])
    with torch.no_grad():
        fast = model.frame_log_probs(tokens, ids)
        slow = slow_token_log_probs(model, tokens, ids).reshape(2, 4, -1).sum(-1)
    torch.testing.assert_close(fast.double(), slow, atol=1e-4, rtol=0)
    assert fast.dtype == torch.float32 and fast.shape == (2, 4)
    assert (fast < 0).all()


def naive_logits(model: VideoGPT, tokens: torch.Tensor, task_ids: torch.Tensor) -> torch.Tensor:
    """Slow reference forward, position by position in float64 from the modules' weights: right-shifted inputs
    plus per-axis position tables side by side, pre-LN blocks with task-conditioned LayerNorm (LN(x) * (1 + W_s c)
    + W_b c), attention of each query over the keys at or before it, x * sigmoid(1.702 x) MLP, final LN, head."""
    from viper.models.videogpt import LN_EPS

    def w(linear):
        return linear.weight.detach().double(), (None if linear.bias is None else linear.bias.detach().double())

    def dense(linear, x):
        weight, bias = w(linear)
        return x @ weight.T + (0 if bias is None else bias)

    def cond_ln(norm, x, c):
        mean, var = x.mean(), ((x - x.mean()) ** 2).mean()
        y = (x - mean) / torch.sqrt(var + LN_EPS)
        return y * (1 + w(norm.scale)[0] @ c) + w(norm.bias)[0] @ c

    spec = model.spec
    (gh, gw), heads = spec.grid, spec.heads
    out = []
    for b in range(tokens.shape[0]):
        c = torch.nn.functional.one_hot(task_ids[b], spec.num_classes).double()
        flat = tokens[b].reshape(-1)
        xs = []
        for i in range(flat.numel()):
            t, y, x = i // (gh * gw), i % (gh * gw) // gw, i % gw
            inp = (
                model.start.detach().double() if i == 0 else dense(model.proj_in, model.codebook[flat[i - 1]].double())
            )
            pos = torch.cat([model.pos_t[t], model.pos_h[y], model.pos_w[x]]).detach().double()
            xs.append(inp + pos)
        for block in model.blocks:
            normed = [cond_ln(block.ln1, x, c) for x in xs]
            qkv = [dense(block.attn.qkv, x) for x in normed]
            d, dh = spec.d_model, spec.d_model // heads
            attended = []
            for i in range(len(xs)):
                parts = []
                for g in range(heads):
                    q = qkv[i][g * dh : (g + 1) * dh]
                    keys = [qkv[j][d + g * dh : d + (g + 1) * dh] for j in range(i + 1)]
                    values = [qkv[j][2 * d + g * dh : 2 * d + (g + 1) * dh] for j in range(i + 1)]
                    scores = torch.stack([q @ k / dh**0.5 for k in keys])
                    weights = torch.softmax(scores, 0)
                    parts.append(sum(a * v for a, v in zip(weights, values, strict=True)))
                attended.append(dense(block.attn.out, torch.cat(parts)))
            xs = [x + a for x, a in zip(xs, attended, strict=True)]
            first, last = block.mlp[0], block.mlp[3]
            hidden = [dense(first, cond_ln(block.ln2, x, c)) for x in xs]
            xs = [x + dense(last, h * torch.sigmoid(1.702 * h)) for x, h in zip(xs, hidden, strict=True)]
        out.append(torch.stack([dense(model.head, cond_ln(model.ln_f, x, c)) for x in xs]))
    return torch.stack(out)


def test_forward_matches_a_naive_position_by_position_reference():
    model = make_prior()
    tokens, ids = tokens_for(model, 2, frames=3), torch.tensor([1, 2])
    with torch.no_grad():
        fast = model(tokens, ids).reshape(2, -1, model.spec.codebook_size)
        slow = naive_logits(model, tokens, ids)
    torch.testing.assert_close(fast.double(), slow, atol=1e-4, rtol=1e-4)


def test_joint_equals_sum_of_per_frame_conditionals_and_last_frames_matches():
    model = make_prior()
    tokens = tokens_for(model, 3)
    ids = torch.tensor([1, 1, 0])
    with torch.no_grad():
        joint = model.frame_log_probs(tokens, ids).sum(1)
        # log p(frame j | frames < j) from a window that holds only frames 0..j.
        conditionals = [model.frame_log_probs(tokens[:, : j + 1], ids)[:, -1] for j in range(4)]
        last = model.frame_log_probs(tokens, ids, last_frames=1)[:, 0]
    torch.testing.assert_close(joint, torch.stack(conditionals, 1).sum(1), atol=1e-4, rtol=0)
    torch.testing.assert_close(last, conditionals[-1], atol=1e-4, rtol=0)


def test_task_conditioning_changes_likelihoods_and_bad_ids_raise():
    model = make_prior()
    tokens = tokens_for(model, 1).expand(3, -1, -1, -1)
    with torch.no_grad():
        per_task = model.frame_log_probs(tokens, torch.tensor([0, 1, 2])).sum(1)
    assert len(set(per_task.tolist())) == 3, "each task's LayerNorm scale/bias must change the likelihood"
    with pytest.raises(PriorInputError, match="task ids 0..2"):
        model.frame_log_probs(tokens[:1], torch.tensor([3]))
    with pytest.raises(PriorInputError, match="task_ids required"):
        model.frame_log_probs(tokens[:1], None)
    with pytest.raises(PriorInputError, match="expected 1 ids"):
        model.frame_log_probs(tokens[:1], torch.tensor([0, 1]))


def test_unconditional_prior_ignores_task_ids():
    model = make_prior(num_classes=0)
    tokens = tokens_for(model, 2)
    with torch.no_grad():
        a = model.frame_log_probs(tokens, None)
        b = model.frame_log_probs(tokens, torch.tensor([5, 9]))
    torch.testing.assert_close(a, b)


def test_bad_tokens_raise_clear_errors():
    model = make_prior()
    ids = torch.tensor([0])
    with pytest.raises(PriorInputError, match=r"expected \(B, T<=4, 3, 2\)"):
        model.frame_log_probs(torch.zeros(1, 5, 3, 2, dtype=torch.long), ids)
    with pytest.raises(PriorInputError, match=r"expected \(B, T<=4, 3, 2\)"):
        model.frame_log_probs(torch.zeros(1, 2, 2, 3, dtype=torch.long), ids)
    with pytest.raises(PriorInputError, match=r"\[0, 7\)"):
        model.frame_log_probs(torch.full((1, 2, 3, 2), 7), ids)
    with pytest.raises(PriorInputError, match="integer"):
        model.frame_log_probs(torch.zeros(1, 2, 3, 2), ids)


def test_kv_cache_sampling_matches_sampling_by_recomputation():
    model = make_prior()
    tokens = tokens_for(model, 2)
    ids = torch.tensor([2, 0])
    fast = model.sample(tokens[:, :1], ids, 3, generator=torch.Generator().manual_seed(5))
    # Reference: recompute the full forward for every token, drawing from the same generator stream.
    g = torch.Generator().manual_seed(5)
    spec = model.spec
    flat = tokens[:, :1].reshape(2, -1).clone()
    with torch.no_grad():
        for i in range(spec.tokens_per_frame, 4 * spec.tokens_per_frame):
            frames = i // spec.tokens_per_frame + 1
            padded = torch.cat([flat, torch.zeros(2, frames * spec.tokens_per_frame - i, dtype=torch.long)], 1)
            logits = model(padded.reshape(2, frames, *spec.grid), ids).reshape(2, -1, spec.codebook_size)[:, i]
            flat = torch.cat([flat, torch.multinomial(logits.softmax(-1), 1, generator=g)], 1)
    assert torch.equal(fast, flat.reshape(2, 4, *spec.grid))
    assert torch.equal(fast[:, :1], tokens[:, :1])


def test_sampling_no_frames_returns_the_context_and_empty_batches_pass_the_checks():
    """``prior.seq_len=1`` asks the open-loop picture for 0 sampled frames; an empty batch is not an error."""
    model = make_prior()
    tokens = tokens_for(model, 2)
    assert torch.equal(model.sample(tokens, torch.tensor([0, 1]), 0), tokens)
    assert model.frame_log_probs(tokens[:0], torch.tensor([], dtype=torch.long)).shape == (0, 4)


def test_logits_are_float32_under_bf16_autocast():
    """Rewards sum log-probabilities over tokens: the head runs in float32, not only the cross entropy."""
    model = make_prior()
    tokens, ids = tokens_for(model, 2), torch.tensor([0, 1])
    with torch.no_grad():
        with torch.autocast("cpu", torch.bfloat16):
            hidden = model.hidden(tokens, ids)
            logits = model.logits(hidden)
            under = model.frame_log_probs(tokens, ids)
        exact = model.head(hidden.float())
    assert logits.dtype == torch.float32
    torch.testing.assert_close(logits, exact, rtol=1e-6, atol=1e-6)
    # The rewards themselves: per-frame sums of float32 log-probabilities of the exact logits.
    targets = tokens.reshape(2, -1, 1)
    per_token = torch.log_softmax(exact, -1).gather(-1, targets)[..., 0]
    torch.testing.assert_close(under, per_token.reshape(2, tokens.shape[1], -1).sum(-1), rtol=1e-6, atol=1e-5)


def moving_square(frames: int, size: int = 3) -> torch.Tensor:
    """A one-cell square walking through a size x size grid in raster order: long (frames, size, size)."""
    video = torch.zeros(frames, size, size, dtype=torch.long)
    for t in range(frames):
        video[t, (t % size**2) // size, t % size] = 1
    return video


def test_briefly_trained_prior_prefers_true_time_order_over_shuffled_frames():
    # Unconditional: with a single task the released LeCun init of the conditional LayerNorm scales each
    # channel by 1 + N(0, 1.3), which slows this short run down; conditioning is tested elsewhere.
    model = make_prior(num_classes=0, grid=(2, 2), codebook_size=3, embed_dim=4, layers=2)
    torch.manual_seed(0)
    model = VideoGPT(model.spec, torch.randn(3, 4))  # default init for training
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    loss_fn = PriorLoss(model)
    video = moving_square(40, size=2)
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        starts = torch.randint(0, 37, (32,), generator=g)
        batch = torch.stack([video[s : s + 4] for s in starts.tolist()])
        train_step(loss_fn, optimizer, batch, torch.zeros(32, dtype=torch.long))
    model.eval()
    windows = torch.stack([video[s : s + 4] for s in range(0, 36, 3)])
    shuffled = windows[:, [1, 3, 0, 2]]
    ids = torch.zeros(len(windows), dtype=torch.long)
    with torch.no_grad():
        true_order = model.frame_log_probs(windows, ids).sum(1)
        wrong_order = model.frame_log_probs(shuffled, ids).sum(1)
    # Once the motion is learnt only the first frame is uncertain (4 places: log 4 = 1.4 nats); shuffled
    # windows break the motion 2-3 times.
    gap = true_order - wrong_order
    assert true_order.mean() > -4.0, true_order
    assert gap.min() > 8.0, (true_order, wrong_order)
    assert gap.mean() > 12.0, (true_order, wrong_order)


def test_ema_update_is_the_exponential_average():
    model = make_prior()
    ema = EMA(model, decay=0.9)
    before = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model)
    for old, new, avg in zip(before, model.parameters(), ema.model.parameters(), strict=True):
        torch.testing.assert_close(avg, 0.9 * old + 0.1 * new)
    assert not any(p.requires_grad for p in ema.model.parameters())
    # The first update of a run (step 0) takes the weights whole, as released (decay 0 at step 0).
    fresh = EMA(model, decay=0.9)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    fresh.update(model, first=True)
    for new, avg in zip(model.parameters(), fresh.model.parameters(), strict=True):
        torch.testing.assert_close(avg, new)
