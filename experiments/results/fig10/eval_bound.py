"""What bounds GrowPrune's evaluation time in FIG. 10: one evaluation of LeNet-300-100 on 10K
images, masked dense (as `gpjax.evaluate` does it) against the export's CSR products
(`gpjax.export.sparse.csr_product`: jaxlib's sparse kernel), at the size of GrowPrune's final
models (~7.6K connections: fc1 2%, fc2 8%, fc3 50%).

    python experiments/results/fig10/eval_bound.py

Prints the median over 10 calls of each, after one warm-up. Both are one jitted scan over ten
batches of 1000; they agree on every prediction (checked).
"""

import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from gpjax.export.sparse import csr_product, csr_weights
from gpjax.models.lenet import leaky_relu

SHAPES = [(784, 300), (300, 100), (100, 10)]
DENSITY = [0.02, 0.08, 0.5]


def scan_errors(layer):
    @jax.jit
    def errors(ws, bs, x, y):
        def step(t, inp):
            h, yb = inp
            for i, (w, b, s) in enumerate(zip(ws, bs, SHAPES)):
                h = layer(h, w, s) + b
                h = leaky_relu(h) if i < len(SHAPES) - 1 else h
            return t + (h.argmax(-1) != yb).sum(), None
        return jax.lax.scan(step, 0, (x.reshape(10, 1000, -1), y.reshape(10, 1000)))[0]
    return errors


dense = scan_errors(lambda h, w, s: h @ w)
sparse = scan_errors(lambda h, c, s: csr_product(h, c, shape=s))


def median_ms(f, *args, repeats=10):
    f(*args).block_until_ready()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        f(*args).block_until_ready()
        times.append(time.perf_counter() - t)
    return 1e3 * float(np.median(times))


def main():
    rng = np.random.default_rng(0)
    ws = [(rng.standard_normal(s) * (rng.random(s) < d)).astype(np.float32)
          for s, d in zip(SHAPES, DENSITY)]
    bs = [jnp.zeros(s[1], jnp.float32) for s in SHAPES]
    x = jnp.asarray(rng.random((10000, 784), np.float32))
    y = jnp.asarray(rng.integers(0, 10, 10000))
    cs = [csr_weights(w) for w in ws]
    assert int(dense(ws, bs, x, y)) == int(sparse(cs, bs, x, y))
    nnz = sum(int((w != 0).sum()) for w in ws)
    print(f"connections {nnz:,}; load average {np.round(os.getloadavg(), 2).tolist()}")
    d, s = median_ms(dense, ws, bs, x, y), median_ms(sparse, cs, bs, x, y)
    print(f"masked dense {d:.1f} ms, CSR {s:.1f} ms per 10K images: CSR {d / s:.2f}x faster")


if __name__ == "__main__":
    main()
