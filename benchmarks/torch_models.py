"""PyTorch eager (CPU) references of gpjax's model zoo, masked the way a PyTorch user would.

Each class computes the same equations as its gpjax model (:mod:`gpjax.models`) with the masks
multiplied into the prunable weights in the forward pass (``W * M``, as
``torch.nn.utils.prune`` does), and :meth:`MaskedTorchModel.train_step` runs forward, backward,
the optimiser step (SGD, with momentum if asked), then re-masks (``W.mul_(M)``), like
:class:`benchmarks.torch_reference.MaskedMLP`:

* :class:`TorchLeNet300`: LeNet-300-100 (the forward of
  :meth:`benchmarks.torch_reference.MaskedMLP.forward`), for SGD with momentum;
* :class:`TorchLeNet5`: conv 5x5 6 (pad 2), pool, conv 5x5 16, pool, FC 120, 84, 10, leaky ReLU;
* :class:`TorchResNet18`: ResNet-18 with batch norm (train mode: batch statistics, running
  statistics updated with momentum 0.1 = Flax's 0.9), leaky ReLU, small (CIFAR) or ImageNet stem;
* :class:`TorchDeepSpeech2`: 3 convolutions over ``[T, F]`` MFCC frames (padded frames zeroed
  before each), bidirectional H-LSTM layers whose gates are MLPs, FC to the characters, and
  CTC loss via ``torch.nn.functional.ctc_loss``.

Parameters are held in a flat dict keyed by the Flax parameter path (``"conv1/kernel"``,
``"birnn1/forward_rnn/cell/f_hidden0/kernel"``, ...) so that :meth:`MaskedTorchModel.load_jax`
can copy a JAX model's parameters (and masks) in, for equivalence tests. Layouts are PyTorch's
where PyTorch has one: convolution kernels ``[out, in, kh, kw]`` (Flax: ``[kh, kw, in, out]``),
activations NCHW. Dense kernels keep Flax's ``[in, out]`` (``torch.addmm(b, x, W)``), except
LeNet-5's ``fc1``, whose rows are permuted from Flax's (h, w, c) flattening order to PyTorch's
(c, h, w). :meth:`MaskedTorchModel.grad_as_jax` maps gradients back to Flax layout.
:meth:`MaskedTorchModel.to` moves a loaded model to a GPU (``"cuda"``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

LEAKY_SLOPE = 0.01
GATES = ("f", "i", "o", "g")


def flatten_jax(tree: Mapping, prefix: str = "") -> dict[str, np.ndarray]:
    """``{"a/b/kernel": array}`` from a nested dict of arrays (``None`` leaves dropped)."""
    out: dict[str, np.ndarray] = {}
    for k, v in tree.items():
        name = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten_jax(v, name + "/"))
        elif v is not None:
            out[name] = np.asarray(v)
    return out


def _leaky(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, LEAKY_SLOPE)


class MaskedTorchModel:
    """Base class: a flat dict of parameters, masks on some, masked SGD training.

    Subclasses define :meth:`loss` (on effective weights from :meth:`w`) and may override
    :meth:`to_torch_layout` / :meth:`to_jax_layout`.
    """

    def __init__(self) -> None:
        self.p: dict[str, torch.Tensor] = {}
        self.m: dict[str, torch.Tensor] = {}
        self.buffers: dict[str, torch.Tensor] = {}
        self.opt: torch.optim.Optimizer | None = None

    # ---- layout
    def to_torch_layout(self, name: str, a: np.ndarray) -> np.ndarray:
        """Flax layout -> this model's (conv kernels ``[kh, kw, in, out] -> [out, in, kh, kw]``)."""
        return a.transpose(3, 2, 0, 1) if a.ndim == 4 else a

    def to_jax_layout(self, name: str, a: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`to_torch_layout`."""
        return a.transpose(2, 3, 1, 0) if a.ndim == 4 else a

    # ---- parameters
    def load_jax(self, params: Mapping, masks: Mapping | None = None, *,
                 batch_stats: Mapping | None = None, lr: float = 0.1,
                 momentum: float = 0.0) -> MaskedTorchModel:
        """Copies a JAX model's ``params`` (the ``params`` collection, or variables holding it),
        optional masks (same structure, ``None`` on unmasked leaves; default: every rank >= 2
        leaf fully active) and BN running statistics; builds the SGD optimiser.

        Dormant weights are zeroed (``W * M``), as gpjax keeps them. Returns ``self``.
        """
        if "params" in params:
            batch_stats = batch_stats if batch_stats is not None else params.get("batch_stats")
            params = params["params"]
        flat = flatten_jax(params)
        mflat = flatten_jax(masks["params"] if masks is not None and "params" in masks
                            else (masks or {}))
        self.p, self.m = {}, {}
        for name, a in flat.items():
            t = torch.from_numpy(np.ascontiguousarray(
                self.to_torch_layout(name, a.astype(np.float32))))
            if name in mflat:
                m = torch.from_numpy(np.ascontiguousarray(
                    self.to_torch_layout(name, mflat[name].astype(np.float32))))
                self.m[name] = m
                t = t * m
            elif masks is None and a.ndim >= 2:
                self.m[name] = torch.ones_like(t)
            self.p[name] = t.clone().requires_grad_(True)
        self.buffers = {k: torch.from_numpy(np.array(v, np.float32))
                        for k, v in flatten_jax(batch_stats or {}).items()}
        self.opt = torch.optim.SGD(list(self.p.values()), lr=lr, momentum=momentum)
        return self

    def to(self, device: str | torch.device) -> MaskedTorchModel:
        """Moves parameters, masks and buffers to ``device`` right after :meth:`load_jax`
        (the optimiser is rebuilt with the same settings; it holds no state yet)."""
        settings = {k: self.opt.defaults[k] for k in ("lr", "momentum")}
        self.p = {k: v.detach().to(device).requires_grad_(True) for k, v in self.p.items()}
        self.m = {k: v.to(device) for k, v in self.m.items()}
        self.buffers = {k: v.to(device) for k, v in self.buffers.items()}
        self.opt = torch.optim.SGD(list(self.p.values()), **settings)
        return self

    def w(self, name: str) -> torch.Tensor:
        """The effective parameter: ``W * M`` if masked, else ``W``."""
        p = self.p[name]
        m = self.m.get(name)
        return p * m if m is not None else p

    def num_params(self) -> int:
        return sum(p.numel() for p in self.p.values())

    # ---- training
    def loss(self, batch: tuple) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def train_step(self, batch: tuple) -> torch.Tensor:
        """Forward with ``W * M``, backward, SGD step, re-mask. Returns the (detached) loss."""
        loss = self.loss(batch)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        with torch.no_grad():
            for name, m in self.m.items():
                self.p[name].mul_(m)
        return loss.detach()

    def train_steps(self, batches: Iterable[tuple]) -> torch.Tensor:
        """:meth:`train_step` over batches; returns the last loss."""
        loss = None
        for b in batches:
            loss = self.train_step(b)
        return loss

    def loss_and_grads(self, batch: tuple) -> tuple[float, dict[str, np.ndarray]]:
        """``(loss, {name: dL/dW in Flax layout})`` on one batch, parameters unchanged
        (masked leaves: ``dL/d(W*M) * M``, which is what the masked JAX step uses)."""
        for p in self.p.values():
            p.grad = None
        loss = self.loss(batch)
        loss.backward()
        grads = {k: self.to_jax_layout(k, p.grad.numpy()) for k, p in self.p.items()
                 if p.grad is not None}
        for p in self.p.values():
            p.grad = None
        return float(loss.detach()), grads


# ----------------------------------------------------------------------------- LeNet-300-100

class TorchLeNet300(MaskedTorchModel):
    """LeNet-300-100 as :class:`gpjax.models.LeNet300` (layers ``fc1``, ``fc2``, ...); batch
    ``(x [B, 784] or [B, 28, 28, 1], y [B])``."""

    def loss(self, batch: tuple) -> torch.Tensor:
        from benchmarks.torch_reference import MaskedMLP

        x, y = batch
        names = sorted({k.split("/")[0] for k in self.p}, key=lambda n: int(n[2:]))
        logits = MaskedMLP.forward([self.w(f"{n}/kernel") for n in names],
                                   [self.p[f"{n}/bias"] for n in names], x)
        return F.cross_entropy(logits, y)


# ----------------------------------------------------------------------------- LeNet-5

class TorchLeNet5(MaskedTorchModel):
    """LeNet-5 as :class:`gpjax.models.LeNet5`; batch ``(x [B, 784] or [B, 1, 28, 28], y [B])``."""

    def to_torch_layout(self, name: str, a: np.ndarray) -> np.ndarray:
        if name == "fc1/kernel":  # rows (h, w, c) as Flax flattens NHWC -> (c, h, w)
            return a.reshape(5, 5, 16, -1).transpose(2, 0, 1, 3).reshape(400, -1)
        return super().to_torch_layout(name, a)

    def to_jax_layout(self, name: str, a: np.ndarray) -> np.ndarray:
        if name == "fc1/kernel":
            return a.reshape(16, 5, 5, -1).transpose(1, 2, 0, 3).reshape(400, -1)
        return super().to_jax_layout(name, a)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B, 784]`` or ``[B, 1, 28, 28]`` -> logits ``[B, 10]``."""
        x = x.reshape(x.shape[0], 1, 28, 28)
        x = F.max_pool2d(_leaky(F.conv2d(x, self.w("conv1/kernel"), self.p["conv1/bias"],
                                         padding=2)), 2)
        x = F.max_pool2d(_leaky(F.conv2d(x, self.w("conv2/kernel"), self.p["conv2/bias"])), 2)
        x = x.flatten(1)
        x = _leaky(torch.addmm(self.p["fc1/bias"], x, self.w("fc1/kernel")))
        x = _leaky(torch.addmm(self.p["fc2/bias"], x, self.w("fc2/kernel")))
        return torch.addmm(self.p["fc3/bias"], x, self.w("fc3/kernel"))

    def loss(self, batch: tuple) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self.logits(x), y)


# ----------------------------------------------------------------------------- ResNet-18

class TorchResNet18(MaskedTorchModel):
    """ResNet-18 as :class:`gpjax.models.ResNet18` (batch norm in train mode).

    Batch ``(x [B, C, H, W] float, y [B] int64)``. BN running statistics are updated in
    :attr:`buffers` (``"<bn>/mean"``, ``"<bn>/var"``) with PyTorch's momentum 0.1 (Flax 0.9).
    """

    def __init__(self, *, small_stem: bool = True, stage_sizes: Sequence[int] = (2, 2, 2, 2),
                 width: int = 64) -> None:
        super().__init__()
        self.small_stem = small_stem
        self.stage_sizes = tuple(stage_sizes)
        self.width = width

    def _bn(self, x: torch.Tensor, name: str) -> torch.Tensor:
        rm = self.buffers.get(f"{name}/mean")
        rv = self.buffers.get(f"{name}/var")
        return F.batch_norm(x, rm, rv, self.p[f"{name}/scale"], self.p[f"{name}/bias"],
                            training=True, momentum=0.1, eps=1e-5)

    def _block(self, x: torch.Tensor, name: str, features: int, stride: int) -> torch.Tensor:
        y = F.conv2d(x, self.w(f"{name}/conv1/kernel"), stride=stride, padding=1)
        y = _leaky(self._bn(y, f"{name}/bn1"))
        y = F.conv2d(y, self.w(f"{name}/conv2/kernel"), padding=1)
        y = self._bn(y, f"{name}/bn2")
        if x.shape[1] != features or stride != 1:
            x = self._bn(F.conv2d(x, self.w(f"{name}/proj_conv/kernel"), stride=stride),
                         f"{name}/proj_bn")
        return _leaky(x + y)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B, C, H, W]`` -> logits ``[B, num_classes]``."""
        if self.small_stem:
            x = _leaky(self._bn(F.conv2d(x, self.w("stem_conv/kernel"), padding=1), "stem_bn"))
        else:
            x = _leaky(self._bn(F.conv2d(x, self.w("stem_conv/kernel"), stride=2, padding=3),
                                "stem_bn"))
            x = F.max_pool2d(x, 3, stride=2, padding=1)
        for stage, n in enumerate(self.stage_sizes):
            for block in range(n):
                stride = 2 if stage > 0 and block == 0 else 1
                x = self._block(x, f"stage{stage + 1}_block{block + 1}",
                                self.width * 2**stage, stride)
        x = x.mean(dim=(2, 3))
        return torch.addmm(self.p["fc/bias"], x, self.w("fc/kernel"))

    def loss(self, batch: tuple) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self.logits(x), y)


# ----------------------------------------------------------------------------- DeepSpeech2

class TorchDeepSpeech2(MaskedTorchModel):
    """DeepSpeech2 with bidirectional H-LSTM layers, as :class:`gpjax.models.DeepSpeech2`
    (no dropout: the evaluation-mode equations, ``train=False`` on the JAX side).

    Batch ``(features [B, T, F], paddings [B, T] (1.0 = padded), labels [B, N] int64,
    label_lengths [B] int64)``. The H-LSTM gates are computed as a PyTorch user would write it
    fast: the four gates' first layers concatenated into one ``[in + H, 4 * hidden]`` matrix
    (their ``x_t`` part applied to all frames at once before the time loop, the ``h_{t-1}``
    part per step), the four output layers as one batched matmul; the equations are those of
    :class:`gpjax.models.HLSTMCell` (one hidden layer per gate MLP).
    """

    def __init__(self, *, conv_kernels: Sequence[tuple[int, int]] = ((11, 5),) * 3,
                 conv_strides: Sequence[tuple[int, int]] = ((2, 2), (1, 2), (1, 1)),
                 num_rnn_layers: int = 3, blank_id: int = 0) -> None:
        super().__init__()
        self.conv_kernels = tuple(tuple(k) for k in conv_kernels)
        self.conv_strides = tuple(tuple(s) for s in conv_strides)
        self.num_rnn_layers = num_rnn_layers
        self.blank_id = blank_id

    def _cell_weights(self, prefix: str):
        """``(W1 [in + H, 4 * hidden], b1 [4 * hidden], W2 [4, hidden, H], b2 [4, 1, H])``."""
        w1 = torch.cat([self.w(f"{prefix}/{g}_hidden0/kernel") for g in GATES], dim=1)
        b1 = torch.cat([self.p[f"{prefix}/{g}_hidden0/bias"] for g in GATES])
        w2 = torch.stack([self.w(f"{prefix}/{g}_out/kernel") for g in GATES])
        b2 = torch.stack([self.p[f"{prefix}/{g}_out/bias"] for g in GATES])[:, None, :]
        return w1, b1, w2, b2

    def _run_direction(self, x: torch.Tensor, prefix: str) -> torch.Tensor:
        """H-LSTM over ``x [B, T, D]`` from t = 0 (zero initial state) -> ``h [B, T, H]``."""
        w1, b1, w2, b2 = self._cell_weights(prefix)
        d = x.shape[-1]
        hsz = w2.shape[-1]
        xproj = torch.addmm(b1, x.reshape(-1, d), w1[:d]).reshape(x.shape[0], x.shape[1], -1)
        wh = w1[d:]
        c = x.new_zeros(x.shape[0], hsz)
        h = x.new_zeros(x.shape[0], hsz)
        outs = []
        for t in range(x.shape[1]):
            hid = _leaky(torch.addmm(xproj[:, t], h, wh))                 # [B, 4 * hidden]
            hid = hid.reshape(hid.shape[0], 4, -1).transpose(0, 1)        # [4, B, hidden]
            f, i, o, g = torch.baddbmm(b2, hid, w2).unbind(0)             # each [B, H]
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            outs.append(h)
        return torch.stack(outs, dim=1)

    def logits(self, features: torch.Tensor, paddings: torch.Tensor):
        """``(logits [B, T', V], out_paddings [B, T'])`` as the JAX model."""
        lengths = (1.0 - paddings).sum(dim=1).to(torch.int64)
        x = features[:, None]                                             # [B, 1, T, F]
        for n, (kernel, stride) in enumerate(zip(self.conv_kernels, self.conv_strides)):
            x = x * (1.0 - paddings)[:, None, :, None]
            pad = [((k - 1) // 2, k // 2) for k in kernel]                # (time, feature)
            x = F.pad(x, (pad[1][0], pad[1][1], pad[0][0], pad[0][1]))
            x = _leaky(F.conv2d(x, self.w(f"conv{n + 1}/kernel"), self.p[f"conv{n + 1}/bias"],
                                stride=stride))
            lengths = (lengths + stride[0] - 1) // stride[0]
            paddings = (torch.arange(x.shape[2], device=x.device)[None, :]
                        >= lengths[:, None]).float()
        x = x.permute(0, 2, 3, 1).reshape(x.shape[0], x.shape[2], -1)     # [B, T', F' * C]
        t_len = x.shape[1]
        # Flax's flip_sequences: reverse each utterance within its length (padding kept last).
        rev = (torch.arange(t_len - 1, -1, -1, device=x.device)[None, :]
               + lengths[:, None]) % t_len                                # [B, T']
        for n in range(self.num_rnn_layers):
            pre = f"birnn{n + 1}"
            fwd = self._run_direction(x, f"{pre}/forward_rnn/cell")
            idx = rev[:, :, None].expand(-1, -1, x.shape[-1])
            bwd = self._run_direction(torch.gather(x, 1, idx), f"{pre}/backward_rnn/cell")
            bwd = torch.gather(bwd, 1, rev[:, :, None].expand(-1, -1, bwd.shape[-1]))
            x = torch.cat([fwd, bwd], dim=-1)
        logits = torch.addmm(self.p["fc/bias"], x.reshape(-1, x.shape[-1]),
                             self.w("fc/kernel")).reshape(x.shape[0], t_len, -1)
        return logits, paddings

    def loss(self, batch: tuple) -> torch.Tensor:
        """Batch mean of the per-utterance CTC losses (optax's convention)."""
        features, paddings, labels, label_lengths = batch
        logits, out_pad = self.logits(features, paddings)
        log_probs = F.log_softmax(logits, dim=-1).transpose(0, 1)         # [T', B, V]
        in_len = (1.0 - out_pad).sum(dim=1).to(torch.int64)
        per = F.ctc_loss(log_probs, labels, in_len, label_lengths, blank=self.blank_id,
                         reduction="none", zero_infinity=False)
        return per.mean()
