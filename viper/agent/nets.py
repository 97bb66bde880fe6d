"""Network blocks of DreamerV3 (2023 release): LayerNorm + SiLU MLPs and the strided CNN encoder/decoder.

Conventions taken from the published code: every hidden layer is ``linear (no bias) -> LayerNorm(eps 1e-3)
-> SiLU``; weights are truncated-normal with variance-scaling over the average fan (``winit: normal, fan:
avg``); output layers have a bias and an ``outscale`` (0 zero-initialises reward and critic outputs).
Images are handled channels-last (B H W C) so that the per-pixel LayerNorm over channels is a plain
``layer_norm`` on a contiguous last axis and the oneDNN convolutions stay in NHWC on the CPU.

Layers whose input width is a ``OneHotWidth`` (the RSSM features, the prior's input) know that a span of
their input holds one-hot latents: on the CPU their forward gathers and sums weight rows instead of
multiplying by the one-hots (``OneHotLinear``), which is the same affine map at a fraction of the cost.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

LN_EPS = 1e-3
"""LayerNorm epsilon of the published code (``jax.nn.standardize(epsilon=1e-3)``)."""


def init_weight(weight: Tensor, fan_in: int, fan_out: int, scale: float = 1.0) -> None:
    """Variance scaling over the average fan with a truncated normal (the published ``normal``/``avg``)."""
    if scale == 0.0:
        nn.init.zeros_(weight)
        return
    # 0.8796... is the std of a unit normal truncated to [-2, 2]; dividing keeps the target variance.
    std = math.sqrt(scale / ((fan_in + fan_out) / 2)) / 0.87962566103423978
    nn.init.trunc_normal_(weight, std=std, a=-2 * std, b=2 * std)


class OneHotWidth(int):
    """An input width (an ``int``) whose columns ``[start, start + groups * classes)`` always hold ``groups``
    one-hot vectors of ``classes`` entries (DreamerV3's straight-through latent samples); the other columns
    are dense. ``Dense``, ``MLP`` and ``ConvDecoder`` built on such a width use ``OneHotLinear``."""

    start: int
    groups: int
    classes: int

    def __new__(cls, width: int, start: int, groups: int, classes: int) -> OneHotWidth:
        assert start >= 0 and start + groups * classes <= width, "one-hot span must lie inside the width"
        self = super().__new__(cls, width)
        self.start, self.groups, self.classes = start, groups, classes
        return self

    def __reduce__(self):
        return (OneHotWidth, (int(self), self.start, self.groups, self.classes))


class _OneHotLinearFn(torch.autograd.Function):
    """``x @ weight.T + bias`` where ``x[:, start:end]`` is one-hot: forward gathers the weight rows named by
    ``index`` (N, S) (flat positions inside the span); backward is the plain linear map's (the one-hot
    columns need their full input gradient for the straight-through estimator)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, index: Tensor, start: int, end: int):
        # (U, S*K) one-hot block -> (S*K, U) rows; embedding_bag sums the S rows of each sample: (N, U).
        out = F.embedding_bag(index, weight[:, start:end].t().contiguous(), mode="sum")
        # In place: ``out`` is this function's own tensor, and a fresh one per term costs a copy of it each.
        if bias is not None:
            out.add_(bias)
        if start > 0:
            out.addmm_(x[:, :start], weight[:, :start].t())
        if end < x.shape[1]:
            out.addmm_(x[:, end:], weight[:, end:].t())
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        grad_x = grad @ weight if _engine_needs(ctx, 0) else None
        # A scatter-add over the one-hot rows was slower on the CPU than this dense product.
        grad_w = grad.t() @ x if _engine_needs(ctx, 1) else None
        grad_b = grad.sum(0) if ctx.has_bias and _engine_needs(ctx, 2) else None
        return grad_x, grad_w, grad_b, None, None, None


def _engine_needs(ctx, i: int) -> bool:
    """Whether this backward pass needs the gradient of a custom Function's ``i``-th input.

    ``ctx.needs_input_grad`` only says whether the input required grad in the forward; a ``backward(inputs=...)``
    that trains one module (the agent's actor and critic passes) needs far fewer gradients, and built-in ops skip
    the others. This asks the engine whether it will run the node the gradient would flow into (the check that
    ``torch.autograd.graph.register_multi_grad_hook`` uses). ``i`` counts tensor inputs only (non-tensor
    arguments have no edge), so the tensor inputs must come first.
    """
    if not ctx.needs_input_grad[i]:
        return False
    node = ctx.next_functions[i][0]
    try:
        return node is not None and torch._C._will_engine_execute_node(node)
    except RuntimeError:
        # ``torch.autograd.grad`` with a leaf among its inputs: the engine cannot say, so compute it.
        return True


def onehot_index(block: Tensor) -> Tensor | None:
    """Class index (N, S) of one-hot vectors ``block`` (N, S, K), or None if any vector is not one-hot (its
    largest entry or its sum differs from 1; straight-through samples are one-hot up to rounding)."""
    top, index = block.detach().max(-1)
    total = block.detach().sum(-1)
    if bool(((top - 1.0).abs().max() > 1e-4) | ((total - 1.0).abs().max() > 1e-4)):
        return None
    return index


class OneHotLinear(nn.Linear):
    """``nn.Linear`` over an input of width ``OneHotWidth``: the same parameters and result, but on the CPU
    the one-hot span costs one gathered row per latent instead of a dense product (3x faster forward for the
    16k x 1280 -> 256 first layers of the heads at size XS). Inputs whose span is not one-hot, CUDA tensors
    (where the dense product is fast and the check would synchronise) and compiled code take the dense path."""

    def __init__(self, d_in: OneHotWidth, d_out: int, bias: bool = True) -> None:
        super().__init__(int(d_in), d_out, bias=bias)
        self.span = (d_in.start, d_in.groups, d_in.classes)

    def forward(self, x: Tensor) -> Tensor:
        start, groups, classes = self.span
        end = start + groups * classes
        dense = x.device.type != "cpu" or x.dtype != self.weight.dtype or x.numel() == 0
        # Under torch.compile the data-dependent one-hot check would break the graph: the compiler fuses the
        # dense product instead.
        if dense or torch.compiler.is_compiling():
            return super().forward(x)
        # (..., F) -> (N, F): the gather works on rows.
        flat = x.reshape(-1, x.shape[-1])
        index = onehot_index(flat[:, start:end].unflatten(-1, (groups, classes)))
        if index is None:
            return super().forward(x)
        # Flat weight-column positions of each latent's class: (N, S).
        index = index + torch.arange(groups, device=x.device) * classes
        out = _OneHotLinearFn.apply(flat, self.weight, self.bias, index, start, end)
        return out.reshape(*x.shape[:-1], out.shape[-1])


def linear(d_in: int, d_out: int, bias: bool = True) -> nn.Linear:
    """``OneHotLinear`` when ``d_in`` is a ``OneHotWidth``, else ``nn.Linear``."""
    if isinstance(d_in, OneHotWidth):
        return OneHotLinear(d_in, d_out, bias=bias)
    return nn.Linear(d_in, d_out, bias=bias)


class Dense(nn.Module):
    """``Linear -> LayerNorm -> SiLU`` (``norm=True``) or a plain affine output layer (``norm=False``)."""

    def __init__(self, d_in: int, d_out: int, norm: bool = True, act: bool = True, outscale: float = 1.0):
        super().__init__()
        self.linear = linear(d_in, d_out, bias=not norm)
        init_weight(self.linear.weight, d_in, d_out, outscale)
        if self.linear.bias is not None:
            nn.init.zeros_(self.linear.bias)
        self.norm = nn.LayerNorm(d_out, eps=LN_EPS) if norm else None
        self.act = act

    def forward(self, x: Tensor) -> Tensor:
        x = self.linear(x)
        if self.norm is not None:
            x = self.norm(x)
        return F.silu(x) if self.act else x


class MLP(nn.Module):
    """``layers`` hidden Dense blocks of ``units``, then an affine output of ``d_out`` (initialised with
    ``outscale``). ``d_out=0`` returns the last hidden features."""

    def __init__(self, d_in: int, d_out: int, layers: int, units: int, outscale: float = 1.0) -> None:
        super().__init__()
        dims = [d_in] + [units] * layers
        self.hidden = nn.Sequential(*[Dense(a, b) for a, b in zip(dims[:-1], dims[1:], strict=True)])
        self.out = Dense(dims[-1], d_out, norm=False, act=False, outscale=outscale) if d_out else None

    def forward(self, x: Tensor) -> Tensor:
        x = self.hidden(x)
        return self.out(x) if self.out is not None else x


def _channel_norm(x: Tensor, norm: nn.LayerNorm) -> Tensor:
    """LayerNorm over channels of an NCHW tensor stored channels-last (the permutes are free views)."""
    return norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvEncoder(nn.Module):
    """64x64 images -> flat features: ``stages`` convs (kernel 4, stride 2) down to ``min_res``, doubling the
    depth each stage, each followed by LayerNorm over channels and SiLU (the 2023 ``ImageEncoderResnet`` with
    ``blocks=0, resize=stride``).

    Input uint8 (N, H, W, C) -> float (N, out_dim) with out_dim = depth * 2**(stages-1) * min_res**2.
    """

    def __init__(self, depth: int, image_shape: tuple[int, int, int] = (64, 64, 3), min_res: int = 4) -> None:
        super().__init__()
        height, width, channels = image_shape
        assert height == width and height % min_res == 0, f"square image divisible by {min_res} expected"
        stages = int(round(math.log2(height // min_res)))
        self.convs = nn.ModuleList()
        self.norms = nn.ModuleList()
        d_in, d_out = channels, depth
        for _ in range(stages):
            conv = nn.Conv2d(d_in, d_out, 4, 2, padding=1, bias=False)
            init_weight(conv.weight, d_in * 16, d_out * 16)
            self.convs.append(conv)
            self.norms.append(nn.LayerNorm(d_out, eps=LN_EPS))
            d_in, d_out = d_out, d_out * 2
        self.out_dim = d_in * min_res * min_res
        self.image_shape = image_shape

    def forward(self, images: Tensor) -> Tensor:
        assert images.shape[-3:] == self.image_shape, f"images (N,H,W,C)={self.image_shape} expected"
        # (N, H, W, C) uint8 -> (N, C, H, W) float in [-0.5, 0.5], channels-last in memory.
        x = images.float().div_(255.0).sub_(0.5).permute(0, 3, 1, 2)
        for conv, norm in zip(self.convs, self.norms, strict=True):
            x = F.silu(_channel_norm(conv(x), norm))
        # Flatten in (h, w, c) order, as the channels-last JAX original does.
        return rearrange(x, "n c h w -> n (h w c)")


class ConvDecoder(nn.Module):
    """Features -> 64x64 images: a linear map to (min_res, min_res, depth * 2**(stages-1)), then transposed
    convs (kernel 4, stride 2) halving the depth, LayerNorm + SiLU except on the last (RGB) layer; the output
    is offset by +0.5 so that zero means mid-grey (2023 ``ImageDecoderResnet``, ``sigmoid=False``).

    Input float (N, d_in) -> float (N, H, W, C), targets are images scaled to [0, 1].
    """

    def __init__(
        self, d_in: int, depth: int, image_shape: tuple[int, int, int] = (64, 64, 3), min_res: int = 4
    ) -> None:
        super().__init__()
        height, _, channels = image_shape
        stages = int(round(math.log2(height // min_res)))
        self.min_res = min_res
        self.d_top = depth * 2 ** (stages - 1)
        self.linear = linear(d_in, min_res * min_res * self.d_top)
        init_weight(self.linear.weight, d_in, min_res * min_res * self.d_top)
        nn.init.zeros_(self.linear.bias)
        self.convs = nn.ModuleList()
        self.norms = nn.ModuleList()
        d = self.d_top
        for i in range(stages):
            last = i == stages - 1
            d_out = channels if last else d // 2
            conv = nn.ConvTranspose2d(d, d_out, 4, 2, padding=1, bias=last)
            init_weight(conv.weight, d * 16, d_out * 16)
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)
            self.convs.append(conv)
            self.norms.append(None if last else nn.LayerNorm(d_out, eps=LN_EPS))
            d = d_out
        self.image_shape = image_shape

    def forward(self, feat: Tensor) -> Tensor:
        x = self.linear(feat)
        # (N, h*w*c) -> (N, c, h, w) channels-last in memory (the (h w c) order matches the encoder's).
        x = rearrange(x, "n (h w c) -> n h w c", h=self.min_res, w=self.min_res).permute(0, 3, 1, 2)
        for conv, norm in zip(self.convs, self.norms, strict=True):
            x = conv(x)
            if norm is not None:
                x = F.silu(_channel_norm(x, norm))
        return x.permute(0, 2, 3, 1) + 0.5
