"""Length buckets: a split of padded sequences cut into groups of similar length.

Speech batches are padded to their longest utterance, and a recurrent scan pays for every
padded frame. :func:`length_buckets` sorts a split's utterances by length into ``k`` contiguous
groups of about ``N / k`` and cuts each group's frames to its own longest utterance, rounded up
to the next length of a geometric grid of multiples of ``multiple`` (:func:`grid_length`), so
most of the padding goes and each group is one more compiled shape. The grid makes the buckets
of different splits (a round's new data, all data so far, the next round's) share lengths, so
their compiled training and gradient steps are reused instead of compiled again.

The result is a :class:`Bucketed` value. :class:`gpjax.incremental.phases.Trainer` accepts one
wherever it accepts arrays: an epoch runs every bucket's mini-batches, bucket after bucket in
an order drawn from the training state's key (so a resumed run draws the same order), with the
epoch's learning-rate schedule running on across buckets; evaluation and growth gradients are
the example-weighted means over the buckets.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

PyTree = Any


class Bucketed(NamedTuple):
    """A split as several parts of similar-length examples (see the module docstring).

    Attributes:
      parts: pytrees of arrays like the split, ``[N_i, T_i, ...]`` each (``sum N_i = N``).
    """

    parts: tuple


def is_bucketed(data: Any) -> bool:
    """Whether ``data`` is a :class:`Bucketed` split."""
    return isinstance(data, Bucketed)


def grid_length(n: int, multiple: int = 16, ratio: float = 1.125) -> int:
    """The smallest length ``>= n`` of the grid ``L_0 = multiple``, ``L_{j+1} =`` the next
    multiple of ``multiple`` at or above ``max(L_j + multiple, ratio * L_j)``.

    With ``ratio = 1.125`` and ``multiple = 16``: 16, 32, ..., 144, 176, 208, 240, 272, 320, ...
    (22 lengths up to 912 frames; a step adds 12.5-22% above 128 frames); ratio 1 is every
    multiple.
    """
    length = multiple
    while length < n:
        length = max(length + multiple, -(-int(np.ceil(length * ratio)) // multiple) * multiple)
    return length


def length_buckets(data: tuple, k: int, batch_size: int, multiple: int = 16,
                   ratio: float = 1.125) -> tuple | Bucketed:
    """A speech split cut into ``k`` length buckets (``data`` unchanged for ``k <= 1``).

    Args:
      data: ``(features [N, T, F], feature_paddings [N, T], labels [N, L],
        label_paddings [N, L])`` (paddings 1.0 on padded frames).
      k: buckets; fewer when the split has fewer than ``k`` full batches.
      batch_size: every bucket gets at least one full batch.
      multiple, ratio: each bucket's frames are its longest utterance rounded up to
        :func:`grid_length` of them.

    Returns:
      ``data``, or a :class:`Bucketed` whose parts are tuples like ``data``: utterances sorted by
      length into contiguous groups, each in its original order, frames cut to
      ``grid_length(longest, multiple, ratio)`` (at most ``T``).

    Raises:
      ValueError: ``data`` is not a 4-tuple of speech arrays or ``multiple < 1``.
    """
    if not isinstance(data, tuple) or len(data) != 4 or np.ndim(data[1]) != 2:
        raise ValueError("length_buckets needs (features [N, T, F], paddings [N, T], labels, "
                         "label paddings): a speech split")
    if multiple < 1 or ratio < 1:
        raise ValueError(f"length_buckets: multiple must be >= 1 and ratio >= 1, got "
                         f"{multiple} and {ratio}")
    k = max(1, min(int(k), len(data[1]) // max(int(batch_size), 1)))
    if k <= 1:
        return data
    feats, pads = np.asarray(data[0]), np.asarray(data[1])
    lengths = np.sum(1.0 - pads, axis=1).astype(int)
    order = np.argsort(lengths, kind="stable")
    parts = []
    for group in np.array_split(order, k):
        frames = min(feats.shape[1], grid_length(int(lengths[group].max()), multiple, ratio))
        group = np.sort(group)
        parts.append((feats[group, :frames], pads[group, :frames], np.asarray(data[2])[group],
                      np.asarray(data[3])[group]))
    return Bucketed(tuple(parts))


def padded_frames(data: tuple | Bucketed) -> int:
    """Frames a pass over ``data`` computes (examples x padded length, over every part)."""
    parts = data.parts if is_bucketed(data) else (data,)
    return int(sum(np.shape(p[1])[0] * np.shape(p[1])[1] for p in parts))


__all__ = ["Bucketed", "grid_length", "is_bucketed", "length_buckets", "padded_frames"]
