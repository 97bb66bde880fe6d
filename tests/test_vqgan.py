"""VQ-GAN model parts against slow reference computations: quantizer, discriminator, R1, LPIPS, shapes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from viper import config
from viper.errors import ViperError
from viper.models.discriminator import Discriminator, minibatch_stddev, r1_penalty
from viper.models.lpips import LPIPS, build_perceptual, load_lpips
from viper.models.quantizer import VectorQuantizer
from viper.models.vqgan import VQGAN, Tokenizer, weights_hash


def tokenizer_cfg(preset: str, *overrides: str) -> config.TokenizerConfig:
    return config.load(preset, list(overrides), params_path=None).tokenizer


@pytest.mark.parametrize(
    ("preset", "grid", "codebook"),
    [("paper_dmc", (8, 8), 256), ("paper_atari", (16, 16), 1024)],
)
def test_published_grids_at_tiny_width(preset, grid, codebook):
    cfg = tokenizer_cfg(preset, "tokenizer.base_channels=8", "tokenizer.embed_dim=8")
    torch.manual_seed(0)
    tok = Tokenizer(VQGAN.from_config(cfg), hash="test")
    frames = torch.randint(0, 256, (3, 64, 64, 3), dtype=torch.uint8)
    tokens = tok.encode(frames)
    assert tok.grid == grid and tok.codebook_size == codebook
    assert tokens.shape == (3, *grid) and tokens.dtype == torch.long
    assert int(tokens.min()) >= 0 and int(tokens.max()) < codebook
    assert tok.codebook.shape == (codebook, 8)
    decoded = tok.decode(tokens)
    assert decoded.shape == (3, 64, 64, 3) and decoded.dtype == torch.uint8
    # Decoding is deterministic and batch-independent (eval mode, GroupNorm only).
    assert torch.equal(tok.decode(tokens[:1]), decoded[:1])


def reference_quantize(z: torch.Tensor, codebook: torch.Tensor, beta: float):
    """Slow loop: nearest code per latent position, the loss and its gradients written out by hand."""
    b, d, h, w = z.shape
    k = codebook.shape[0]
    codes = torch.zeros(b, h, w, dtype=torch.long)
    grad_z = torch.zeros_like(z)
    grad_e = torch.zeros_like(codebook)
    loss = 0.0
    n = z.numel()
    for i in range(b):
        for y in range(h):
            for x in range(w):
                v = z[i, :, y, x]
                dists = [float(((v - codebook[j]) ** 2).sum()) for j in range(k)]
                j = int(np.argmin(dists))
                codes[i, y, x] = j
                loss += (1 + beta) * dists[j] / n
                # d/dz of beta*||z - sg(e)||^2 / n, plus the straight-through identity for an upstream
                # gradient of ones on z_q; d/de of ||sg(z) - e||^2 / n.
                grad_z[i, :, y, x] = 2 * beta * (v - codebook[j]) / n + 1.0
                grad_e[j] += 2 * (codebook[j] - v) / n
    return codes, loss, grad_z, grad_e


def test_quantizer_matches_slow_reference(monkeypatch):
    """In chunks of 5 rows (32 rows here): tokenising a paper_atari batch runs several of NEAREST_CHUNK_ROWS."""
    from viper.models import quantizer

    monkeypatch.setattr(quantizer, "NEAREST_CHUNK_ROWS", 5)
    torch.manual_seed(0)
    vq = VectorQuantizer(codebook_size=7, dim=3, commitment_weight=0.25)
    vq.codebook.data.normal_()
    z = torch.randn(2, 3, 4, 4, requires_grad=True)
    out = vq(z)
    (out.loss + out.z_q.sum()).backward()
    codes, loss, grad_z, grad_e = reference_quantize(z.detach(), vq.codebook.detach(), 0.25)
    assert torch.equal(out.codes, codes)
    assert out.loss.item() == pytest.approx(loss, rel=1e-5)
    # Forward value of z_q is the chosen code vector.
    assert torch.allclose(out.z_q, vq.lookup(codes), atol=1e-6)
    assert torch.allclose(z.grad, grad_z, atol=1e-6)
    assert torch.allclose(vq.codebook.grad, grad_e, atol=1e-6)
    counts = torch.bincount(codes.flatten(), minlength=7).float()
    p = counts / counts.sum()
    expected_ppl = float(torch.exp(-(p[p > 0] * p[p > 0].log()).sum()))
    assert out.perplexity.item() == pytest.approx(expected_ppl, rel=1e-5)
    assert out.usage.item() == pytest.approx(float((counts > 0).float().mean()))


def test_published_codebook_init_is_uniform_within_one_over_k():
    vq = VectorQuantizer(codebook_size=64, dim=16)
    assert float(vq.codebook.detach().abs().max()) <= 1 / 64
    assert float(vq.codebook.detach().std()) > 0.5 / 64 / np.sqrt(3)


def clustered_latents(n_clusters: int = 5, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(n_clusters, 4, generator=g) * 5
    which = torch.randint(0, n_clusters, (6 * 8 * 8,), generator=g)
    flat = centers[which] + 0.01 * torch.randn(6 * 8 * 8, 4, generator=g)
    return flat.view(6, 8, 8, 4).permute(0, 3, 1, 2).contiguous()


def test_conv_and_dense_layers_start_as_flax_defaults_as_released():
    """LeCun-normal kernels (variance 1 / fan_in, cut at 2 sigma), zero biases; the discriminator's block convs
    N(0, 0.01). Checked on the published DMC widths, where each kernel has enough entries to measure."""
    from torch import nn

    from viper.models.vqgan import VQGANArch

    torch.manual_seed(0)
    model = VQGAN(VQGANArch.from_config(config.load("paper_dmc", [], params_path=None).tokenizer))
    disc = Discriminator()
    default = [disc.from_rgb, disc.final_conv, disc.fc, disc.out]
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))] + default
    for layer in layers:
        w, fan_in = layer.weight.detach(), layer.weight[0].numel()
        assert torch.all(layer.bias == 0)
        assert w.abs().max() <= 2 / fan_in**0.5 / 0.87962566103423978 + 1e-6  # truncated at 2 sigma
        if w.numel() >= 4096:
            assert abs(w.std().item() * fan_in**0.5 - 1.0) < 0.05, (layer, w.std().item() * fan_in**0.5)
    blocks = [m for m in disc.blocks.modules() if isinstance(m, nn.Conv2d)]
    assert blocks and all(abs(b.weight.std().item() - 0.01) < 0.002 and torch.all(b.bias == 0) for b in blocks)


def test_kmeans_init_uses_the_data_clusters():
    torch.manual_seed(0)
    z = clustered_latents()
    plain = VectorQuantizer(16, 4).train()
    km = VectorQuantizer(16, 4, kmeans_init=True).train()
    # Uniform +-1/K init sits at the origin, far from every cluster; k-means puts a code on each cluster.
    assert plain(z).commitment.item() > 1.0
    out = km(z)
    assert bool(km.initialized)
    assert out.usage.item() * 16 >= 5
    assert out.commitment.item() < 0.1
    # Initialised once: a second batch does not re-run k-means.
    before = km.codebook.detach().clone()
    km(clustered_latents(seed=1))
    assert torch.equal(before, km.codebook.detach())


def test_dead_code_restart_reseeds_unused_codes_from_encoder_outputs():
    torch.manual_seed(0)
    vq = VectorQuantizer(16, 4, dead_code_restart=True, restart_every=2).train()
    z = clustered_latents()
    used = set(vq(z).codes.unique().tolist())
    vq(z)  # the second step closes the window and restarts the codes unused in both steps
    rows = z.permute(0, 2, 3, 1).reshape(-1, 4)
    for j in set(range(16)) - used:
        assert (rows - vq.codebook[j]).abs().sum(1).min() < 1e-6, f"code {j} not re-seeded at an encoder output"
    assert int(vq.window_steps) == 0 and float(vq.window_counts.sum()) == 0
    assert vq(z).usage.item() > len(used) / 16


def test_minibatch_stddev_matches_loop_and_keeps_groups_apart():
    torch.manual_seed(0)
    x = torch.randn(8, 5, 4, 4)
    y = minibatch_stddev(x, group=4)
    for i in range(8):
        group = x[(i // 4) * 4 : (i // 4) * 4 + 4]
        std = ((group - group.mean(0)).pow(2).mean(0) + 1e-8).sqrt().mean()
        assert torch.allclose(y[i, 5], std.expand(4, 4), atol=1e-6)
    assert torch.equal(y[:, :5], x)
    # Changing the second half (fakes) leaves the first half's (reals') feature unchanged.
    x2 = x.clone()
    x2[4:] += 3.0
    assert torch.equal(minibatch_stddev(x2)[:4], y[:4])


def test_discriminator_published_widths_and_logits():
    d = Discriminator(32, 512)
    assert [b.down.conv.out_channels for b in d.blocks] == [64, 128, 256, 512]
    assert d(torch.randn(4, 3, 64, 64)).shape == (4,)


def test_r1_penalty_matches_analytic_gradient_and_published_scale():
    torch.manual_seed(0)
    x = torch.randn(8, 3, 64, 64, requires_grad=True)
    logits = (x**2).sum(dim=(1, 2, 3))  # grad = 2x per sample, no coupling between samples
    gamma = 0.7
    ours = r1_penalty(logits, x, gamma)
    expected = gamma / 2 * (2 * x.detach()).pow(2).sum(dim=(1, 2, 3)).mean()
    assert ours.item() == pytest.approx(expected.item(), rel=1e-5)
    # Published: 1e8 * mean over elements of (grad of the batch-mean logit)^2 == our gamma = 2e8 / (B^2 HWC).
    b, hwc = x.shape[0], 64 * 64 * 3
    (g,) = torch.autograd.grad(logits.mean(), x, retain_graph=True)
    published = 1e8 * g.pow(2).mean()
    assert r1_penalty(logits, x, 2e8 / (b**2 * hwc)).item() == pytest.approx(published.item(), rel=1e-5)


def random_lpips_file(path, naming: str) -> LPIPS:
    torch.manual_seed(0)
    model = LPIPS()
    for p in model.parameters():
        p.data.normal_(0, 0.05)
    for lin in model.lins:
        lin.weight.data.abs_()
    state = {k: v for k, v in model.state_dict().items() if k.startswith("features.")}
    for i, lin in enumerate(model.lins):
        state[f"lin{i}.model.1.weight" if naming == "lpips" else f"lins.{i}.weight"] = lin.weight.data.clone()
    torch.save(state, path)
    return model


@pytest.mark.parametrize("naming", ["lpips", "ours"])
def test_lpips_loads_local_weights_and_matches_reference(tmp_path, naming):
    ref = random_lpips_file(tmp_path / "w.pt", naming)
    model = load_lpips(tmp_path / "w.pt")
    x, y = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    assert torch.allclose(model(x, x), torch.zeros(2), atol=1e-7)
    # Reference: the LPIPS formula written out layer by layer.
    expected = torch.zeros(2)
    fx, fy = (x - ref.shift) / ref.scale, (y - ref.shift) / ref.scale
    taps = iter(ref.lins)
    for i, layer in enumerate(ref.features):
        fx, fy = layer(fx), layer(fy)
        if i in (3, 8, 15, 22, 29):
            w = next(taps).weight.view(-1)
            nx = fx / (fx.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            ny = fy / (fy.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            expected += ((nx - ny).pow(2) * w[None, :, None, None]).sum(1).mean(dim=(1, 2))
    assert torch.allclose(model(x, y), expected, rtol=1e-4)
    assert not any(p.requires_grad for p in model.parameters())


def test_perceptual_term_off_with_one_log_line_or_clear_error(tmp_path):
    lines: list[str] = []
    assert build_perceptual(0.1, "", lines.append) is None
    assert len(lines) == 1 and "OFF" in lines[0] and "lpips_weights_path" in lines[0]
    with pytest.raises(ViperError, match="lpips_weights_path"):
        build_perceptual(0.1, str(tmp_path / "missing.pt"), lines.append)
    torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3)}, tmp_path / "partial.pt")
    with pytest.raises(ViperError, match="lacks"):
        load_lpips(tmp_path / "partial.pt")


def test_weights_hash_changes_with_any_weight():
    torch.manual_seed(0)
    model = VQGAN.from_config(tokenizer_cfg("tiny"))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    h = weights_hash(state)
    assert len(h) == 16 and h == weights_hash(model.state_dict())
    state["quantizer.codebook"][3, 1] += 1e-6
    assert weights_hash(state) != h


def test_a_loaded_quantizer_keeps_its_kmeans_init_and_restart_window():
    """The training forward reads host copies of ``initialized`` and ``window_steps`` (no device read per update):
    loading a state must refresh them, or a resumed run would run k-means over its trained codebook again, or
    restart dead codes at another step than an uninterrupted run."""
    torch.manual_seed(0)
    trained = VectorQuantizer(16, 4, kmeans_init=True, dead_code_restart=True, restart_every=3).train()
    trained(clustered_latents())  # k-means, then step 1 of the restart window
    resumed = VectorQuantizer(16, 4, kmeans_init=True, dead_code_restart=True, restart_every=3).train()
    resumed.load_state_dict(trained.state_dict())
    before = resumed.codebook.detach().clone()
    z = clustered_latents(seed=1)
    resumed(z)
    trained(z)
    assert torch.equal(resumed.codebook.detach(), before), "k-means ran again on a loaded, initialised codebook"
    assert int(resumed.window_steps) == int(trained.window_steps) == 2
    resumed(z)  # step 3: both close the window (and reset it) at the same update
    trained(z)
    assert int(resumed.window_steps) == int(trained.window_steps) == 0
    torch.testing.assert_close(resumed.codebook, trained.codebook, rtol=0, atol=0)


def test_kmeans_matches_lloyds_loop():
    """Same starting picks (the torch RNG), then Lloyd's iterations by hand: assign to the nearest centroid,
    move each to its points' mean, an empty cluster keeping its place."""
    from viper.models.quantizer import kmeans

    torch.manual_seed(3)
    x = torch.randn(40, 2) + torch.tensor([[4.0, 0.0]]) * (torch.arange(40)[:, None] % 3)
    torch.manual_seed(7)
    ours = kmeans(x, 5, iters=4)
    torch.manual_seed(7)
    centroids = [x[i].clone() for i in torch.randperm(40)[:5].tolist()]
    for _ in range(4):
        members = [[] for _ in centroids]
        for row in x:
            distances = [float(((row - c) ** 2).sum()) for c in centroids]
            members[distances.index(min(distances))].append(row)
        centroids = [torch.stack(m).mean(0) if m else c for m, c in zip(members, centroids, strict=True)]
    torch.testing.assert_close(ours, torch.stack(centroids), rtol=1e-5, atol=1e-5)


def test_blur_and_gan_losses_match_their_formulas():
    """blur: the [1, 3, 3, 1] / 8 filter over H and W by a loop (and a depthwise conv, as its docstring says);
    the non-saturating generator loss and the discriminator's loss per logit, by hand."""
    import math

    import torch.nn.functional as F

    from viper.models.discriminator import blur, discriminator_loss, generator_loss

    torch.manual_seed(0)
    x = torch.randn(2, 3, 7, 6)
    taps = [1 / 8, 3 / 8, 3 / 8, 1 / 8]
    expected = torch.zeros(2, 3, 4, 3)
    for y in range(4):
        for c in range(3):
            expected[..., y, c] = sum(taps[i] * taps[j] * x[..., y + i, c + j] for i in range(4) for j in range(4))
    torch.testing.assert_close(blur(x), expected, rtol=1e-5, atol=1e-6)
    kernel = torch.outer(torch.tensor(taps), torch.tensor(taps)).expand(3, 1, 4, 4)
    torch.testing.assert_close(blur(x), F.conv2d(x, kernel, groups=3), rtol=1e-5, atol=1e-6)
    real, fake = torch.tensor([2.0, -1.0, 0.5]), torch.tensor([-3.0, 0.2, 1.5])

    def sigmoid(v: float) -> float:
        return 1 / (1 + math.exp(-v))

    gen = sum(-math.log(sigmoid(f)) for f in fake.tolist()) / 3
    pairs = zip(real.tolist(), fake.tolist(), strict=True)
    disc = sum(-math.log(1 - sigmoid(f)) - math.log(sigmoid(r)) for r, f in pairs) / 3
    assert generator_loss(fake).item() == pytest.approx(gen, rel=1e-6)
    assert discriminator_loss(real, fake).item() == pytest.approx(disc, rel=1e-6)
