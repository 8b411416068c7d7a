"""gpjax: incremental learning with grow-and-prune neural networks, in JAX.

The core is a handful of pure functions over ``(params, masks)`` pytrees that work on any
params pytree (Flax linen or NNX state, Equinox, plain dicts):

* :func:`init_masks`, :func:`apply_masks`: mask pytrees (boolean on kernels, ``None`` elsewhere);
  :func:`connect_units` gives every neuron of a random sparse seed a connection;
* :func:`accumulate_gradients`: the epoch-mean gradient w.r.t. the effective weights ``W * M``;
* :func:`grow`: switch on dormant connections with large gradients (SPEC eq. 1);
* :func:`prune`: remove small active weights, recoverably or not (SPEC eq. 3);
* :func:`masked`: an optax wrapper that keeps dormant weights at 0 and resets grown entries;
* :func:`count_params`, :func:`density`, :func:`dead_units`: bookkeeping.
* :func:`compact`, :func:`save_sparse` / :func:`load_sparse`, :func:`export_model`: a smaller
  dense model computing the same function, stored sparse, exported to run with JAX alone.

Method: Dai, Yin, Jha, "Incremental learning using a grow-and-prune paradigm with efficient
neural networks", arXiv:1905.10952 (US patent 12,393,842 B2).
"""

from gpjax.compact import compact
from gpjax.export import export_from_state, export_model, load_sparse, save_sparse
from gpjax.grow import accumulate_gradients, grow
from gpjax.masks import (
    DeadUnits,
    ParamCount,
    apply_masks,
    connect_units,
    count_params,
    dead_units,
    density,
    dormant_is_zero,
    init_masks,
)
from gpjax.optim import MaskedState, masked, sync_masks
from gpjax.prune import prune

__version__ = "0.1.0"

__all__ = [
    "DeadUnits",
    "MaskedState",
    "ParamCount",
    "accumulate_gradients",
    "apply_masks",
    "compact",
    "connect_units",
    "count_params",
    "dead_units",
    "density",
    "dormant_is_zero",
    "export_from_state",
    "export_model",
    "grow",
    "init_masks",
    "load_sparse",
    "masked",
    "prune",
    "save_sparse",
    "sync_masks",
]
