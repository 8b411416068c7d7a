"""The two conventions the speech data and the CTC models share: the blank's id and paddings.

Kept apart from the data and the models so each imports it without importing the other.

* :data:`BLANK_ID`: the CTC blank is id 0 in every vocabulary used here (and the label
  padding value);
* :func:`lengths_to_paddings`: optax's padding convention, 1.0 at padded positions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["BLANK_ID", "lengths_to_paddings"]

BLANK_ID = 0
"""The CTC blank's id (in :data:`gpjax.data.speech.VOCAB` and for every CTC model here)."""


def lengths_to_paddings(lengths: Sequence[int] | np.ndarray | jax.Array,
                        max_length: int) -> Any:
    """Paddings, 1.0 at positions ``>= length`` (optax's ``ctc_loss`` convention).

    Args:
      lengths: ``[N]`` ints: a numpy array or list (data pipelines), or a JAX array (inside a
        model, traced or not).
      max_length: ``T``.

    Returns:
      float32 ``[N, T]``: numpy for numpy/list input, JAX for JAX input.
    """
    xp = jnp if isinstance(lengths, jax.Array) else np
    lengths = xp.asarray(lengths).reshape(-1, 1)
    return (xp.arange(max_length)[None, :] >= lengths).astype(xp.float32)
