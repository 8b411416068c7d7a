"""Mask pytrees: init_masks, apply_masks, count_params, density, dormant_is_zero, dead_units,
and the validation that names the offending leaf."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gpjax
from gpjax import masks as M


def _params():
    k = jax.random.split(jax.random.key(0), 4)
    return {
        "Dense_0": {"kernel": jax.random.normal(k[0], (6, 5)), "bias": jnp.zeros(5)},
        "Conv_0": {"kernel": jax.random.normal(k[1], (3, 3, 2, 4)), "bias": jnp.zeros(4)},
        "BatchNorm_0": {"scale": jnp.ones(4)},
        "embed": {"table": jax.random.normal(k[2], (7, 3))},
        "step": jnp.zeros((2, 2), jnp.int32),  # integer, rank 2: not a kernel
    }


def test_init_masks_defaults_mask_float_kernels_only():
    p = _params()
    m = gpjax.init_masks(p)
    assert m["Dense_0"]["bias"] is None and m["Conv_0"]["bias"] is None
    assert m["BatchNorm_0"]["scale"] is None and m["step"] is None
    for path in (("Dense_0", "kernel"), ("Conv_0", "kernel"), ("embed", "table")):
        mask = m[path[0]][path[1]]
        assert mask.dtype == jnp.bool_ and mask.shape == p[path[0]][path[1]].shape
        assert bool(mask.all())


def test_init_masks_density_needs_key_and_is_random():
    p = _params()
    with pytest.raises(ValueError, match="key"):
        gpjax.init_masks(p, density=0.5)
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="density"):
            gpjax.init_masks(p, density=bad, key=jax.random.key(0))
    big = {"w": jnp.ones((200, 100)), "v": jnp.ones((100, 200))}
    m = gpjax.init_masks(big, density=0.1, key=jax.random.key(1))
    assert abs(gpjax.density(m) - 0.1) < 0.01
    # Leaves get independent draws; the same key reproduces the same masks.
    assert not np.array_equal(np.asarray(m["w"]), np.asarray(m["v"]).T)
    m2 = gpjax.init_masks(big, density=0.1, key=jax.random.key(1))
    jax.tree.map(np.testing.assert_array_equal, m, m2)
    m3 = gpjax.init_masks(big, density=0.1, key=jax.random.key(2))
    assert not np.array_equal(np.asarray(m["w"]), np.asarray(m3["w"]))


def test_init_masks_prunable_patterns_and_predicate():
    p = _params()
    m = gpjax.init_masks(p, prunable=["Dense_*/kernel", "Conv_0/*"])
    assert m["Dense_0"]["kernel"] is not None and m["Dense_0"]["bias"] is None
    assert m["Conv_0"]["kernel"] is not None and m["Conv_0"]["bias"] is not None
    assert m["embed"]["table"] is None
    m = gpjax.init_masks(p, prunable="embed/table")
    assert [k for k, v in gpjax.count_params(m).per_tensor.items()] == ["embed/table"]
    m = gpjax.init_masks(p, prunable=lambda name: name.endswith("kernel"))
    assert set(gpjax.count_params(m).per_tensor) == {"Dense_0/kernel", "Conv_0/kernel"}
    with pytest.raises(ValueError, match="prunable"):
        gpjax.init_masks(p, prunable=[1, 2])


def test_apply_masks_zeroes_dormant_and_leaves_the_rest():
    p = _params()
    m = gpjax.init_masks(p, density=0.5, key=jax.random.key(3))
    q = gpjax.apply_masks(p, m)
    k, mk = np.asarray(p["Dense_0"]["kernel"]), np.asarray(m["Dense_0"]["kernel"])
    np.testing.assert_array_equal(np.asarray(q["Dense_0"]["kernel"]), np.where(mk, k, 0.0))
    assert q["Dense_0"]["bias"] is p["Dense_0"]["bias"]
    assert q["step"] is p["step"]
    assert gpjax.dormant_is_zero(q, m)
    assert not gpjax.dormant_is_zero(p, m)
    # dtype is preserved
    pb = jax.tree.map(lambda x: x.astype(jnp.bfloat16) if x.dtype == jnp.float32 else x, p)
    qb = gpjax.apply_masks(pb, m)
    assert qb["Conv_0"]["kernel"].dtype == jnp.bfloat16


def test_count_params_and_density():
    p = _params()
    m = gpjax.init_masks(p, density=0.3, key=jax.random.key(4))
    c = gpjax.count_params(m)
    want = {
        "Dense_0/kernel": (int(m["Dense_0"]["kernel"].sum()), 30),
        "Conv_0/kernel": (int(m["Conv_0"]["kernel"].sum()), 72),
        "embed/table": (int(m["embed"]["table"].sum()), 21),
    }
    assert c.per_tensor == want
    assert c.active == sum(a for a, _ in want.values())
    assert c.dense == 123
    assert c.unmasked == 0
    c2 = gpjax.count_params(m, p)
    assert c2.unmasked == 5 + 4 + 4 + 4  # biases, scale, int step
    assert (c2.active, c2.dense) == (c.active, c.dense)
    assert gpjax.density(m) == pytest.approx(c.active / 123)
    assert gpjax.density(gpjax.init_masks(p)) == 1.0
    none = jax.tree.map(lambda x: jnp.zeros(x.shape, bool) if x is not None else None, m,
                        is_leaf=M.is_none)
    assert gpjax.count_params(none).active == 0 and gpjax.density(none) == 0.0
    assert gpjax.density({"b": None}) == 0.0  # no masked leaves: no division by zero


def test_dead_units_dense_and_conv():
    m = {
        "d": jnp.asarray(np.array([[1, 0, 0], [0, 0, 0], [1, 0, 1]], bool)),  # row 1, col 1 dead
        "c": jnp.zeros((2, 2, 3, 4), bool).at[1, 0, 2, 3].set(True),  # in 0,1 and out 0,1,2 dead
    }
    d = gpjax.dead_units(m)
    assert d["d"] == gpjax.DeadUnits(inputs=1, outputs=1)
    assert d["c"] == gpjax.DeadUnits(inputs=2, outputs=3)
    d = gpjax.dead_units(m, input_fed=["d"])
    assert d["d"] == gpjax.DeadUnits(inputs=0, outputs=1)
    assert d["c"] == gpjax.DeadUnits(inputs=2, outputs=3)
    d = gpjax.dead_units(m, input_fed={"d": False, "c": True})
    assert d["c"].inputs == 0 and d["d"].inputs == 1
    d = gpjax.dead_units(m, input_fed=lambda name: name == "c")
    assert d["c"].inputs == 0


@pytest.mark.parametrize("fn", ["apply_masks", "count_params", "prune", "grow", "accumulate"])
def test_masks_structure_mismatch_names_the_leaf(fn):
    p = _params()
    m = gpjax.init_masks(p)
    del m["embed"]
    bad_shape = gpjax.init_masks(p)
    bad_shape["Conv_0"]["kernel"] = jnp.ones((3, 3, 2, 5), bool)
    bad_dtype = gpjax.init_masks(p)
    bad_dtype["Dense_0"]["kernel"] = jnp.ones((6, 5), jnp.float32)
    g = jax.tree.map(jnp.zeros_like, p)

    def call(masks):
        if fn == "apply_masks":
            return gpjax.apply_masks(p, masks)
        if fn == "count_params":
            return gpjax.count_params(masks, p)
        if fn == "prune":
            return gpjax.prune(p, masks, percentile=10)
        if fn == "grow":
            return gpjax.grow(p, masks, g, percentile=10, learning_rate=0.1)
        return gpjax.accumulate_gradients(lambda w, b: 0.0 * b.sum(), p, masks,
                                          jnp.zeros((2, 3)))

    with pytest.raises(ValueError, match="embed/table"):
        call(m)
    with pytest.raises(ValueError, match=r"Conv_0/kernel.*shape"):
        call(bad_shape)
    with pytest.raises(ValueError, match=r"Dense_0/kernel.*(dtype|bool)"):
        call(bad_dtype)


def test_dead_units_on_a_masked_rank1_leaf():
    m = gpjax.init_masks({"k": jnp.ones((3, 2)), "b": jnp.ones(2)}, prunable=["*"])
    m = {**m, "b": jnp.zeros(2, bool)}
    assert gpjax.dead_units(m) == {"b": gpjax.DeadUnits(0, 0), "k": gpjax.DeadUnits(0, 0)}


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31 - 1), st.floats(0.01, 0.4),
       st.sampled_from([(6, 5), (3, 3, 4, 7), (1, 40), (40, 1)]))
def test_connect_units_connects_every_unit_and_only_adds(seed, dens, shape):
    # Property: after init_masks at low density + connect_units, no kernel has a dead unit
    # (dead_units, the independent check), every original connection is kept, and at most one
    # connection per previously dead unit is added.
    params = {"a": jnp.zeros(shape), "b": jnp.zeros(shape[-1:] + (3,)), "bias": jnp.zeros(3)}
    masks = gpjax.init_masks(params, density=dens, key=jax.random.PRNGKey(seed))
    before = gpjax.dead_units(masks)
    fixed = gpjax.connect_units(masks, seed=seed)
    assert fixed["bias"] is None
    assert all(d == (0, 0) for d in gpjax.dead_units(fixed).values())
    for k in ("a", "b"):
        m0, m1 = np.asarray(masks[k]), np.asarray(fixed[k])
        assert m1.shape == m0.shape and m1.dtype == bool
        assert np.all(m1[m0])
        assert m1.sum() - m0.sum() <= sum(before[f"{k}"])
    # input_fed kernels may keep unconnected rows (pixels are not neurons); columns still fixed.
    fed = gpjax.connect_units(masks, seed=seed, input_fed=["a"])
    assert gpjax.dead_units(fed, input_fed=["a"])["a"].outputs == 0
    assert np.asarray(fed["a"]).sum() <= np.asarray(fixed["a"]).sum()


def test_connect_units_is_deterministic_and_accepts_keys():
    params = {"w": jnp.zeros((50, 20))}
    masks = gpjax.init_masks(params, density=0.02, key=jax.random.PRNGKey(1))
    a = gpjax.connect_units(masks, seed=3)
    b = gpjax.connect_units(masks, seed=3)
    np.testing.assert_array_equal(a["w"], b["w"])
    c = gpjax.connect_units(masks, seed=jax.random.key(3))
    d = gpjax.connect_units(masks, seed=jax.random.PRNGKey(3))
    assert all(v == (0, 0) for m in (c, d) for v in gpjax.dead_units(m).values())


# ----------------------------------------------------------------------------- pytrees, layout

def test_none_and_function_leaves_are_tolerated():
    # eqx.partition-style params (None leaves) and a plain dict with "bias": None (the report).
    params = {"w": jnp.ones((3, 2)), "bias": None, "act": jax.nn.relu, "n": 3}
    masks = gpjax.init_masks(params)
    assert masks["bias"] is None and masks["act"] is None and masks["n"] is None
    out = gpjax.apply_masks(params, masks)
    assert out["act"] is jax.nn.relu and out["n"] == 3 and out["bias"] is None
    assert gpjax.count_params(masks, params) == gpjax.ParamCount(6, 6, {"w": (6, 6)}, 0)
    assert gpjax.init_masks({"w": jnp.ones((3, 2)), "bias": None})["bias"] is None
    # Equinox conv biases ([out, 1, 1]) are not kernels by default.
    assert gpjax.init_masks({"conv": {"weight": jnp.ones((4, 2, 3, 3)),
                                      "bias": jnp.ones((4, 1, 1))}})["conv"]["bias"] is None


def test_layout_torch_mapping_and_pytree_agree():
    m = np.ones((2, 5, 3, 3), bool)  # [out, in, kh, kw]
    m[1] = False                     # output unit 1: no input connection
    m[:, 4] = False                  # input unit 4: no output connection
    masks = {"conv": jnp.asarray(m), "dense": jnp.asarray(np.eye(4, 3, dtype=bool))}
    want = {"conv": gpjax.DeadUnits(1, 1), "dense": gpjax.DeadUnits(0, 1)}  # dense: [out=4, in=3]
    assert gpjax.dead_units(masks, layout="torch") == want
    assert gpjax.dead_units(masks, layout={"*": (1, 0)}) == want
    assert gpjax.dead_units(masks, layout={"conv": (1, 0), "dense": (1, 0)}) == want
    assert gpjax.dead_units(masks, layout={"conv": (1, 0)})["dense"] == (1, 0)  # dense: flax
    # flax reads conv's last two axes (3x3, all connected) as in/out.
    assert gpjax.dead_units(masks)["conv"] == (0, 0)
    fixed = gpjax.connect_units(masks, layout="torch")
    assert all(d == (0, 0) for d in gpjax.dead_units(fixed, layout="torch").values())
    for bad, match in [("pytorch", "layout must be"), ({"*": (0, 0)}, "two different axes"),
                       ({"nope*": (1, 0)}, "matches no leaf"), ({"*": (1, 7)}, "two different")]:
        with pytest.raises(ValueError, match=match):
            gpjax.dead_units(masks, layout=bad)


def test_nnx_value_paths_match_user_patterns():
    from flax import nnx

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.l1 = nnx.Linear(3, 4, rngs=rngs)
            self.l2 = nnx.Linear(4, 2, rngs=rngs)

    _, state = nnx.split(Net(nnx.Rngs(0)), nnx.Param)
    names = gpjax.masks.leaf_names(state)
    assert "l1/kernel/value" in names  # how flax 0.12 flattens NNX state
    masks = gpjax.init_masks(state, prunable=["*l1/kernel", "l2/kernel"])
    assert sorted(gpjax.count_params(masks).per_tensor) == ["l1/kernel/value", "l2/kernel/value"]
    # input_fed "*l1/kernel" matches l1/kernel/value: its empty input row is not counted.
    m = np.ones((3, 4), bool)
    m[0] = False
    flat, treedef = jax.tree.flatten(gpjax.init_masks(state), is_leaf=lambda x: x is None)
    flat = [jnp.asarray(m) if x is not None and x.shape == (3, 4) else x for x in flat]
    masks = jax.tree.unflatten(treedef, flat)
    assert gpjax.dead_units(masks)["l1/kernel/value"] == (1, 0)
    assert gpjax.dead_units(masks, input_fed=["*l1/kernel"])["l1/kernel/value"] == (0, 0)
    with pytest.raises(ValueError, match=r"'\*l3/kernel' matches no leaf.*l1/kernel/value"):
        gpjax.dead_units(gpjax.init_masks(state), input_fed=["*l3/kernel"])
    with pytest.raises(ValueError, match="prunable pattern 'nope' matches no leaf"):
        gpjax.init_masks(state, prunable=["nope"])


# ----------------------------------------------------------------------------- bad input

def _one_line(excinfo):
    assert "\n" not in str(excinfo.value)


def test_bad_input_is_refused_in_one_line():
    params = {"w": jnp.ones((3, 2)), "b": jnp.ones(2)}
    half = {"w": jnp.full((3, 2), 0.5), "b": None}
    for fn in (gpjax.count_params, gpjax.density, gpjax.dead_units, gpjax.connect_units):
        with pytest.raises(ValueError, match="mask at 'w' has dtype float32, expected bool") as e:
            fn(half)
        _one_line(e)
    for bad in ("0.5", None, True, float("nan"), 0.0, 1.5):
        with pytest.raises(ValueError, match="density must be a number in") as e:
            gpjax.init_masks(params, density=bad, key=jax.random.key(0))
        _one_line(e)
