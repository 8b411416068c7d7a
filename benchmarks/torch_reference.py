"""A plain PyTorch (eager, CPU) reference of the operations gpjax benchmarks.

Written the way a PyTorch user would, with masks multiplied into the weights as
``torch.nn.utils.prune`` does (the forward pass uses ``W * M``):

* :class:`MaskedMLP`: LeNet-300-100 (leaky ReLU 0.01) computed with ``W * M``;
  :meth:`MaskedMLP.train_step` runs forward, backward, the optimiser step, then re-masks;
* :meth:`MaskedMLP.loss_and_effective_grads`: the loss and ``dL/d(W*M)`` on one batch;
* :meth:`MaskedMLP.accumulate_gradients`: the epoch-mean ``dL/d(W*M)`` (growth's gradient);
* :func:`prune`, :func:`grow`: the mask updates of SPEC eq. 3 and eq. 1 with exact numpy
  ("linear") percentile semantics, via ``torch.kthvalue`` (the fastest exact selection in
  PyTorch on CPU), per tensor or over all tensors together, with gpjax's recoverable unit
  protection as an option.

Weights are kept in gpjax's layout (Flax: dense ``[in, out]``, conv ``[kh, kw, in, out]``) so
the same arrays go to both sides; ``x @ (W * M)`` is what ``F.linear(x, (W * M).T)`` computes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

LEAKY_SLOPE = 0.01


def to_torch(x) -> torch.Tensor:
    """A writable float/int/bool torch tensor copied from a numpy or JAX array."""
    return torch.from_numpy(np.array(x, copy=True))


class MaskedMLP:
    """LeNet-300-100-style MLP ``x -> leaky(x @ (W1*M1) + b1) -> ... -> logits``.

    Args:
      kernels: per layer ``[in, out]`` arrays (numpy/JAX), copied.
      biases: per layer ``[out]`` arrays, copied.
      masks: per layer boolean ``[in, out]`` arrays.
      optimizer: "sgd" or "adam".
      lr: learning rate.
    """

    def __init__(self, kernels: Sequence, biases: Sequence, masks: Sequence, *,
                 optimizer: str = "sgd", lr: float = 0.1):
        self.w = [to_torch(k).float().requires_grad_(True) for k in kernels]
        self.b = [to_torch(b).float().requires_grad_(True) for b in biases]
        self.m = [to_torch(m).float() for m in masks]
        params = self.w + self.b
        if optimizer == "sgd":
            self.opt = torch.optim.SGD(params, lr=lr)
        elif optimizer == "adam":
            self.opt = torch.optim.Adam(params, lr=lr)
        else:
            raise ValueError(f"optimizer must be 'sgd' or 'adam', got {optimizer!r}")

    @staticmethod
    def forward(weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor],
                x: torch.Tensor) -> torch.Tensor:
        """Logits from (effective) weights; ``x`` is flattened to ``[B, -1]``."""
        h = x.reshape(x.shape[0], -1)
        for i, (w, b) in enumerate(zip(weights, biases)):
            h = torch.addmm(b, h, w)
            if i < len(weights) - 1:
                h = F.leaky_relu(h, LEAKY_SLOPE)
        return h

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        eff = [w * m for w, m in zip(self.w, self.m)]
        return F.cross_entropy(self.forward(eff, self.b, x), y)

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One step: forward with ``W * M``, backward, optimiser step, re-mask. Returns loss."""
        loss = self.loss(x, y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        with torch.no_grad():
            for w, m in zip(self.w, self.m):
                w.mul_(m)
        return loss.detach()

    def train_epoch(self, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        """``train_step`` over stacked batches ``[steps, batch, ...]``; returns the last loss."""
        loss = None
        for x, y in zip(xs, ys):
            loss = self.train_step(x, y)
        return loss

    def loss_and_effective_grads(self, x: torch.Tensor, y: torch.Tensor):
        """``(loss, [dL/d(W_i*M_i)], [dL/db_i])`` on one batch, parameters unchanged."""
        eff = [(w * m).detach().requires_grad_(True) for w, m in zip(self.w, self.m)]
        b = [b.detach().requires_grad_(True) for b in self.b]
        loss = F.cross_entropy(self.forward(eff, b, x), y)
        gw = torch.autograd.grad(loss, eff + b)
        return loss.detach(), list(gw[: len(eff)]), list(gw[len(eff):])

    def accumulate_gradients(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]):
        """Epoch-mean ``dL/d(W*M)`` over mini-batches (dormant entries included)."""
        with torch.no_grad():
            eff = [(w * m) for w, m in zip(self.w, self.m)]
        eff = [e.requires_grad_(True) for e in eff]
        b = [b.detach() for b in self.b]
        acc = [torch.zeros_like(e) for e in eff]
        n = 0
        for x, y in batches:
            loss = F.cross_entropy(self.forward(eff, b, x), y)
            gs = torch.autograd.grad(loss, eff)
            for a, g in zip(acc, gs):
                a.add_(g)
            n += 1
        return [a / n for a in acc]


# --------------------------------------------------------------------------- mask updates

def _rank(percentile: float, n: int, upper: bool) -> int:
    """0-indexed order statistic bounding numpy's linear percentile set (as gpjax.select)."""
    q = percentile * (n - 1) / 100.0
    k = math.ceil(q) if upper else math.floor(q)
    return min(max(k, 0), max(n - 1, 0))


def _kth(values: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th smallest (0-indexed) of a 1-D tensor (``torch.kthvalue`` is 1-indexed)."""
    return torch.kthvalue(values, k + 1).values


def _unit_view(x: torch.Tensor) -> torch.Tensor:
    return x.reshape((-1,) + tuple(x.shape[-2:]))


def _keep_best(keep: torch.Tensor, mask: torch.Tensor, mag: torch.Tensor, axis: int) -> None:
    """In place: in each unit along ``axis`` (2: outputs, 1: inputs) that ``keep`` emptied,
    keep its largest active entry. Tensors are ``[spatial, in, out]``."""
    other = tuple(a for a in (0, 1, 2) if a != axis)
    emptied = mask.any(dim=other[1]).any(dim=other[0]) & ~keep.any(dim=other[1]).any(dim=other[0])
    units = torch.nonzero(emptied).flatten()
    if units.numel() == 0:
        return
    score = torch.where(mask, mag, torch.tensor(-1.0))
    s, i, o = score.shape
    if axis == 2:
        best = score.reshape(s * i, o)[:, units].argmax(dim=0)           # in (s, i) space
        keep.view(s * i, o)[best, units] = True
    else:
        sub = score[:, units, :].permute(0, 2, 1).reshape(s * o, units.numel())
        best = sub.argmax(dim=0)                                         # in (s, o) space
        keep[best // o, units, best % o] = True


def prune(weights: Sequence[torch.Tensor], masks: Sequence[torch.Tensor], percentile: float, *,
          scope: str = "layer", recoverable: bool = False,
          input_fed: Sequence[bool] | None = None):
    """Removes active connections with ``|w| <= P_beta(|W_active|)`` (SPEC eq. 3).

    Args:
      weights: float tensors (any rank >= 2, gpjax layout).
      masks: boolean tensors like ``weights``.
      percentile: beta in [0, 100].
      scope: "layer" or "global".
      recoverable: keep each emptied unit's largest active connection, as gpjax does.
      input_fed: per tensor, True where rows (input units) may empty.

    Returns:
      ``(weights, masks)``, new tensors.
    """
    mags = [w.abs() for w in weights]
    if scope == "global":
        active = torch.cat([a[m] for a, m in zip(mags, masks)])
        n = active.numel()
        t = _kth(active, _rank(percentile, n, False)) if n else torch.tensor(0.0)
        cuts, counts = [t] * len(weights), [n] * len(weights)
    else:
        cuts, counts = [], []
        for a, m in zip(mags, masks):
            active = a[m]
            n = active.numel()
            cuts.append(_kth(active, _rank(percentile, n, False)) if n else torch.tensor(0.0))
            counts.append(n)
    fed = input_fed or [False] * len(weights)
    new_w, new_m = [], []
    for w, m, a, t, n, f in zip(weights, masks, mags, cuts, counts, fed):
        keep = m & (a > t) if n else m.clone()
        if recoverable:
            k3, m3, a3 = _unit_view(keep), _unit_view(m), _unit_view(a)
            _keep_best(k3, m3, a3, axis=2)
            if not f:
                _keep_best(k3, m3, a3, axis=1)
        new_w.append(w * keep)
        new_m.append(keep)
    return new_w, new_m


def grow(weights: Sequence[torch.Tensor], masks: Sequence[torch.Tensor],
         grads: Sequence[torch.Tensor], percentile: float, learning_rate: float, *,
         scope: str = "layer"):
    """Activates dormant connections with ``|g| >= P_alpha(|G|)`` and ``g != 0`` (SPEC eq. 1),
    starting them at ``-learning_rate * g``. Returns new ``(weights, masks)``."""
    mags = [g.abs() for g in grads]
    if scope == "global":
        allg = torch.cat([a.flatten() for a in mags])
        t = _kth(allg, _rank(percentile, allg.numel(), True))
        cuts = [t] * len(grads)
    else:
        cuts = [_kth(a.flatten(), _rank(percentile, a.numel(), True)) for a in mags]
    new_w, new_m = [], []
    for w, m, g, a, t in zip(weights, masks, grads, mags, cuts):
        new = ~m & (a >= t) & (a > 0)
        new_w.append(torch.where(new, -learning_rate * g, w))
        new_m.append(m | new)
    return new_w, new_m


def kthvalue_only(values: Sequence[torch.Tensor], masks: Sequence[torch.Tensor] | None,
                  percentile: float, *, scope: str = "layer") -> list[torch.Tensor]:
    """Just the thresholds (``torch.kthvalue`` on the selected magnitudes), no mask update."""
    sel = [v.abs()[m] if m is not None else v.abs().flatten()
           for v, m in zip(values, masks or [None] * len(values))]
    if scope == "global":
        allv = torch.cat(sel)
        return [_kth(allv, _rank(percentile, allv.numel(), False))]
    return [_kth(s, _rank(percentile, s.numel(), False)) for s in sel]
