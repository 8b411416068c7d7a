"""DeepSpeech2 with H-LSTM (or plain LSTM) layers (SPEC "Models") and its CTC loss.

Greedy CTC decoding of its outputs is :func:`gpjax.metrics.greedy_ctc_decode` (re-exported
here): ``greedy_ctc_decode(*model.apply(variables, features, paddings))``.

Layout: 3 convolutions over the MFCC frames seen as a ``[T, F]`` image (leaky ReLU 0.01), the
feature and channel axes flattened per frame, 3 bidirectional H-LSTM layers (forward and
backward outputs concatenated; ``cell="lstm"``: plain LSTM layers of the same widths, for the
H-LSTM vs LSTM comparison), one dense layer to the characters. Character id 0 is the CTC blank
and padding follows optax's convention (``paddings`` 1.0 at padded frames, 0.0 at real ones):
both conventions live in :mod:`gpjax.data.speech.ctc`, shared with the speech data.

Padded frames are zeroed before every convolution, so the logits of the real frames of an
utterance do not depend on how much padding follows it (tested). No batch norm: it would mix
padded frames into the statistics and needs extra state; leaky ReLU keeps units alive.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from gpjax.data.speech.ctc import BLANK_ID, lengths_to_paddings
from gpjax.metrics import greedy_ctc_decode
from gpjax.models.hlstm import HLSTMCell
from gpjax.models.lenet import leaky_relu

__all__ = ["BLANK_ID", "CELLS", "DeepSpeech2", "ctc_loss", "deepspeech2_loss",
           "greedy_ctc_decode", "lengths_to_paddings", "output_lengths"]

CELLS: tuple[str, ...] = ("hlstm", "lstm")
"""The recurrent cells :class:`DeepSpeech2` can use (its ``cell`` attribute)."""


def _ceil_div(lengths: Any, stride: int) -> Any:
    return (lengths + stride - 1) // stride


def output_lengths(lengths: jax.Array | np.ndarray, time_strides: Sequence[int]) -> Any:
    """Frames left after convolutions padded by ``k - 1`` in all with the given time strides.

    Args:
      lengths: ``[B]`` integer numbers of real input frames.
      time_strides: stride along time of each convolution.

    Returns:
      ``[B]``: ``ceil(... ceil(ceil(lengths / s1) / s2) ... / sn)``.
    """
    for stride in time_strides:
        lengths = _ceil_div(lengths, stride)
    return lengths


class DeepSpeech2(nn.Module):
    """DeepSpeech2 with bidirectional H-LSTM (or LSTM) recurrent layers.

    Attributes:
      vocab_size: output characters, blank (id 0) included.
      conv_features: channels of the convolutions.
      conv_kernels: ``(time, feature)`` kernel size of each convolution.
      conv_strides: ``(time, feature)`` stride of each convolution; the time strides set how
        much shorter the output is (see :meth:`output_lengths`; 2x by default).
      rnn_features: H-LSTM state width per direction (800 in the source).
      rnn_hidden_features: width of the gate MLPs' hidden layers (default: ``rnn_features``).
      num_rnn_layers: bidirectional H-LSTM layers.
      dropout_rate: dropout inside the H-LSTM gate MLPs (0.2 in the source); a plain LSTM
        cell has no gate MLPs, so no dropout.
      cell: ``"hlstm"`` (:class:`~gpjax.models.HLSTMCell`) or ``"lstm"`` (flax's
        ``nn.LSTMCell``: per gate one input kernel ``i<gate>`` ``[in, rnn_features]`` and one
        recurrent kernel ``h<gate>`` ``[rnn_features, rnn_features]``, gates ``i, f, g, o``;
        every kernel is a prunable leaf and each state unit is a column of each kernel, so
        masks, growth and recoverable pruning act on it as on the H-LSTM's).

    Parameter names: ``conv1..3``, ``birnn1..3/{forward_rnn,backward_rnn}/cell/<gate>_...``
    (LSTM: ``.../cell/{ii,if,ig,io,hi,hf,hg,ho}``), ``fc``. ``conv1`` is fed by the MFCCs.

    Size: the default configuration has 52,832,925 dense parameters on 26 MFCCs per frame
    (:data:`gpjax.data.speech.NUM_MFCC`; 52,218,525 on 13), almost all in the gate MLPs (each
    of 4 gates x 2 directions x 3 layers has a ``(in + 800) x 800`` and an ``800 x 800``
    kernel). The source reports 5.7-7.6M parameters after grow-and-prune. With
    ``cell="lstm"`` the default configuration has 37,453,725; the CPU-size one of
    ``experiments/ds2_cpu.py`` (3 x 64, 8-channel convolutions) 270,829 instead of 370,669.
    """

    vocab_size: int = 29
    conv_features: Sequence[int] = (32, 32, 32)
    conv_kernels: Sequence[tuple[int, int]] = ((11, 5), (11, 5), (11, 5))
    conv_strides: Sequence[tuple[int, int]] = ((2, 2), (1, 2), (1, 1))
    rnn_features: int = 800
    rnn_hidden_features: int | None = None
    num_rnn_layers: int = 3
    dropout_rate: float = 0.2
    cell: str = "hlstm"

    input_kernels: ClassVar[tuple[str, ...]] = ("*conv1/kernel",)
    blank_id: ClassVar[int] = BLANK_ID

    def output_lengths(self, lengths: Any) -> Any:
        """Output frames for ``lengths`` input frames (``[B]`` ints, numpy or JAX)."""
        return output_lengths(lengths, [s[0] for s in self.conv_strides])

    @nn.compact
    def __call__(self, features: jax.Array, paddings: jax.Array | None = None,
                 train: bool = False) -> tuple[jax.Array, jax.Array]:
        """Per-frame character logits.

        Args:
          features: MFCC frames ``[B, T, F]``.
          paddings: ``[B, T]``, 1.0 at padded frames (default: none padded).
          train: enables dropout in the H-LSTM cells (needs the ``'dropout'`` rng).

        Returns:
          ``(logits [B, T', vocab_size], out_paddings [B, T'])`` with
          ``T' = output_lengths(T)``.
        """
        if self.cell not in CELLS:
            raise ValueError(f"DeepSpeech2: cell={self.cell!r} is not one of {CELLS}. Fix: "
                             "cell='hlstm' (the paper's H-LSTM) or cell='lstm'.")
        batch, frames = features.shape[:2]
        if paddings is None:
            paddings = jnp.zeros((batch, frames), jnp.float32)
        lengths = jnp.sum(1.0 - paddings, axis=1).astype(jnp.int32)
        x = features[..., None]
        for n, (width, kernel, strides) in enumerate(
                zip(self.conv_features, self.conv_kernels, self.conv_strides, strict=True)):
            x = x * (1.0 - paddings)[:, :, None, None]
            # Fixed left padding (k - 1) // 2: output frame j always sees input frames
            # j * s - (k - 1) // 2 onwards. ("SAME" pads by an amount that depends on T, which
            # would shift an utterance's frames with the padding that follows it.)
            padding = [((k - 1) // 2, k // 2) for k in kernel]
            x = leaky_relu(nn.Conv(width, kernel, strides, padding=padding, name=f"conv{n + 1}")(x))
            lengths = _ceil_div(lengths, strides[0])
            paddings = lengths_to_paddings(lengths, x.shape[1])
        x = x.reshape(*x.shape[:2], -1)
        for n in range(self.num_rnn_layers):
            # parent=None: the cell is adopted by its RNN ("cell") and the RNNs by the
            # Bidirectional ("forward_rnn", "backward_rnn"); created bound to this module they
            # would be shared submodules of it instead, named HLSTMCell_0, ...
            rnns = [nn.RNN(self._cell(train), split_rngs={"params": False, "dropout": True},
                           parent=None) for _ in range(2)]
            x = nn.Bidirectional(*rnns, name=f"birnn{n + 1}")(x, seq_lengths=lengths)
        return nn.Dense(self.vocab_size, name="fc")(x), paddings

    @nn.nowrap
    def _cell(self, train: bool) -> nn.RNNCellBase:
        if self.cell == "lstm":
            return nn.LSTMCell(self.rnn_features, parent=None)
        return HLSTMCell(self.rnn_features, self.rnn_hidden_features,
                         dropout_rate=self.dropout_rate, deterministic=not train, parent=None)


def ctc_loss(logits: jax.Array, logit_paddings: jax.Array, labels: jax.Array,
             label_paddings: jax.Array, *, blank_id: int = BLANK_ID) -> jax.Array:
    """Mean CTC loss (negative log-likelihood per utterance) of a batch, via ``optax.ctc_loss``.

    Args:
      logits: ``[B, T', V]`` from :class:`DeepSpeech2`.
      logit_paddings: ``[B, T']`` from :class:`DeepSpeech2` (1.0 = padded frame).
      labels: ``[B, N]`` int character ids (no blanks).
      label_paddings: ``[B, N]`` (1.0 = padded label position).
      blank_id: the blank's id.

    Returns:
      scalar: the batch mean of the per-utterance losses. An utterance whose label needs more
      frames than it has (``T'`` < label length + repeats) gets optax's large finite loss.
    """
    per_utterance = optax.ctc_loss(logits, logit_paddings, labels, label_paddings,
                                   blank_id=blank_id)
    return jnp.mean(per_utterance)


def deepspeech2_loss(model: DeepSpeech2, params: Any, features: jax.Array,
                     paddings: jax.Array, labels: jax.Array, label_paddings: jax.Array, *,
                     train: bool = False, rng: jax.Array | None = None) -> jax.Array:
    """CTC loss of :class:`DeepSpeech2` on a batch (the model's loss function).

    Args:
      model: the module.
      params: its ``params`` collection (or the whole variables dict).
      features: ``[B, T, F]`` MFCCs.
      paddings: ``[B, T]`` frame paddings.
      labels: ``[B, N]`` character ids.
      label_paddings: ``[B, N]``.
      train: dropout on (``rng`` required).
      rng: key of the ``'dropout'`` stream.

    Returns:
      scalar mean CTC loss.
    """
    variables = params if "params" in params else {"params": params}
    rngs = {"dropout": rng} if train else None
    logits, logit_paddings = model.apply(variables, features, paddings, train=train, rngs=rngs)
    return ctc_loss(logits, logit_paddings, labels, label_paddings, blank_id=model.blank_id)

