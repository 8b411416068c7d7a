"""benchmarks/roofline.py: its analytic FLOP count of the LeNet-300-100 step (the figure its
GFLOP/s and ceiling rest on) against XLA's own cost analysis of the same multiplies."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import roofline


@pytest.mark.parametrize("batch", [16, 128])
def test_step_flops_match_xla_cost_analysis(batch):
    rng = np.random.default_rng(0)
    layers = roofline.LAYERS
    ws = [jnp.asarray(rng.standard_normal((a, b), np.float32))
          for a, b in zip(layers[:-1], layers[1:], strict=True)]
    x = jnp.asarray(rng.random((batch, layers[0]), np.float32))

    def step(ws, x):  # forward and weight/activation gradients, the input needing none
        def chain(ws):
            h = x
            for w in ws:
                h = h @ w
            return jnp.sum(h * h)
        return jax.grad(chain)(ws)

    cost = jax.jit(step).lower(ws, x).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    # XLA also counts the few elementwise ops (the square, its gradient): well under 1%.
    assert cost["flops"] == pytest.approx(roofline.step_flops(batch), rel=0.01)
    # The first layer has no input gradient: a step is 2 + 3 + 3 multiplies of its layers.
    assert roofline.step_flops(batch, (4, 3, 2)) == 2 * batch * (4 * 3 * 2 + 3 * 2 * 3)
