"""The H-LSTM cell (Dai, Yin, Jha, arXiv 1805.11797; SPEC "Models"): an LSTM with MLP gates.

Each of the control gates f, i, o and the update g is computed from ``z_t = [x_t, h_{t-1}]``
by its own MLP with ``num_hidden_layers`` hidden layers of ``hidden_features`` leaky-ReLU units
(dropout after each hidden layer), then::

    f = sigmoid(MLP_f(z))   i = sigmoid(MLP_i(z))   o = sigmoid(MLP_o(z))   g = tanh(MLP_g(z))
    c_t = f * c_{t-1} + i * g
    h_t = o * tanh(c_t)

Grow/prune layout: every layer of every gate MLP is its own ``Dense`` (named ``f_hidden0``,
..., ``f_out``, ``i_hidden0``, ...), never fused across gates, so each hidden unit of each gate
MLP is one column of the kernel before it and one row of the kernel after it, and "no neuron
pruning" can be enforced per kernel. The first kernel of each gate MLP has
``in_features + features`` rows: the rows of ``x_t`` first, then those of ``h_{t-1}``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from gpjax.models.lenet import leaky_relu

GATES: tuple[str, ...] = ("f", "i", "o", "g")
"""The gate MLPs of an H-LSTM cell, in parameter-name order."""


class HLSTMCell(nn.RNNCellBase):
    """H-LSTM cell: a drop-in Flax recurrent cell for ``nn.RNN`` / ``nn.Bidirectional``.

    The carry is ``(c, h)``, each ``[*batch, features]``; the output is ``h``.

    Dropout draws from the ``'dropout'`` rng when ``deterministic=False``. ``nn.RNN`` passes
    into its scan only the rng streams named in ``split_rngs``: give it
    ``split_rngs={"params": False, "dropout": True}`` for a fresh dropout mask at each time step
    (as :class:`~gpjax.models.DeepSpeech2` does), ``"dropout": False`` for one mask over the
    whole sequence; with ``nn.RNN``'s default the cell finds no ``'dropout'`` rng and fails.

    Attributes:
      features: size of ``c`` and ``h``.
      hidden_features: width of each hidden layer of the gate MLPs (default: ``features``).
      num_hidden_layers: hidden layers per gate MLP (>= 1).
      dropout_rate: dropout after each hidden layer of the gate MLPs.
      deterministic: disables dropout (evaluation).
      forget_bias: initial bias of the forget gate's output layer (1.0, as is usual for LSTMs).
    """

    features: int
    hidden_features: int | None = None
    num_hidden_layers: int = 1
    dropout_rate: float = 0.2
    deterministic: bool = True
    forget_bias: float = 1.0

    # The cell cannot know whether its x_t is a network input, and x_t shares its first gate
    # kernels with h_{t-1} (a neuron), so no kernel of the cell is input-fed on its own.
    input_kernels: ClassVar[tuple[str, ...]] = ()

    @nn.compact
    def __call__(self, carry: tuple[jax.Array, jax.Array],
                 inputs: jax.Array) -> tuple[tuple[jax.Array, jax.Array], jax.Array]:
        """One time step.

        Args:
          carry: ``(c, h)``, each ``[*batch, features]``.
          inputs: ``x_t``, ``[*batch, in_features]``.

        Returns:
          ``((c_t, h_t), h_t)``.
        """
        if self.num_hidden_layers < 1:
            raise ValueError("an H-LSTM gate MLP needs at least one hidden layer")
        c, h = carry
        z = jnp.concatenate([inputs, h], axis=-1)
        width = self.hidden_features or self.features

        def mlp(gate: str) -> jax.Array:
            y = z
            for layer in range(self.num_hidden_layers):
                y = leaky_relu(nn.Dense(width, name=f"{gate}_hidden{layer}")(y))
                y = nn.Dropout(self.dropout_rate)(y, deterministic=self.deterministic)
            bias_init: Any = (nn.initializers.constant(self.forget_bias) if gate == "f"
                              else nn.initializers.zeros_init())
            return nn.Dense(self.features, bias_init=bias_init, name=f"{gate}_out")(y)

        f, i, o, g = (mlp(gate) for gate in GATES)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return (c, h), h

    @nn.nowrap
    def initialize_carry(self, rng: jax.Array,
                         input_shape: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
        """Zero ``(c, h)`` for inputs of shape ``input_shape``.

        Args:
          rng: unused (zero initial state).
          input_shape: ``(*batch, in_features)``.

        Returns:
          ``(c, h)``, each zeros ``[*batch, features]`` float32.
        """
        del rng
        shape = (*input_shape[:-1], self.features)
        return jnp.zeros(shape, jnp.float32), jnp.zeros(shape, jnp.float32)

    @property
    def num_feature_axes(self) -> int:
        """One feature axis (the last)."""
        return 1
