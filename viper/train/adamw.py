"""AdamW with the decay applied in optax's order, as the released VIPER code's ``optax.adamw`` applies it.

``torch.optim.AdamW`` decays first, ``p *= 1 - lr * wd``, then adds the Adam step. At the published lr 1e-4 and
weight decay 1e-4 the factor ``1 - 1e-8`` rounds to 1.0 in float32, so the decay never happens: a prior trained
with weight decay 0 comes out bit-identical (benchmarks/results/reward.md, nineteenth session). optax instead adds
``wd * p`` to the Adam direction and then scales the sum by the learning rate:

    m = b1 m + (1 - b1) g          v = b2 v + (1 - b2) g^2
    u = (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps) + wd p
    p = p - lr u

so the decay moves the rounding of every step's update instead of vanishing. The state keys (``step``,
``exp_avg``, ``exp_avg_sq``) are torch AdamW's, so checkpoints of runs from before load into it and continue.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


class OptaxAdamW(torch.optim.Optimizer):
    """``optax.adamw(lr, b1, b2, eps, weight_decay)``; the learning rate can change per update (``param_groups``).

    ``foreach`` (default: whether every parameter is on a GPU) runs each op over a whole group as one multi-tensor
    kernel, one launch per op instead of one per parameter and op, at the cost of holding two update-sized
    temporaries for the whole group at once. On the CPU it goes parameter by parameter, which keeps each one's
    temporaries in cache: faster for the paper presets' models, slower for the demo's small ones, and small beside a
    training step either way (``benchmarks/bench_adamw.py``). Both paths give the same bits. On the CPU they also
    match a plain loop of per-parameter tensor ops bit for bit; on CUDA such a loop's ``m / c`` multiplies by
    ``1 / c`` while the multi-tensor division divides, so the two can differ in the last bit.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor],
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-4,
        foreach: bool | None = None,
    ) -> None:
        defaults = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay, "foreach": foreach}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            for p in params:
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)  # on the CPU: no device sync to read it
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
            foreach = group.get("foreach")
            if foreach is None:
                foreach = bool(params) and all(p.device.type != "cpu" for p in params)
            for chunk in [params] if foreach else [[p] for p in params]:
                if chunk:
                    self._update(chunk, group)
        return loss

    def _update(self, params: list[torch.Tensor], group: dict) -> None:
        """One optax AdamW step of ``params`` (their step counts already advanced), each op over the whole list."""
        b1, b2 = group["betas"]
        grads = [p.grad for p in params]
        ms = [self.state[p]["exp_avg"] for p in params]
        vs = [self.state[p]["exp_avg_sq"] for p in params]
        steps = [float(self.state[p]["step"]) for p in params]  # a parameter's first gradient may come later
        torch._foreach_lerp_(ms, grads, 1 - b1)
        torch._foreach_mul_(vs, b2)
        torch._foreach_addcmul_(vs, grads, grads, value=1 - b2)
        update = torch._foreach_div(ms, [1 - b1**t for t in steps])
        denom = torch._foreach_div(vs, [1 - b2**t for t in steps])
        torch._foreach_sqrt_(denom)
        torch._foreach_add_(denom, group["eps"])
        torch._foreach_div_(update, denom)
        torch._foreach_add_(update, params, alpha=group["weight_decay"])
        torch._foreach_add_(params, update, alpha=-group["lr"])
