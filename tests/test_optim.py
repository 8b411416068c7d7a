"""gpjax.masked: any optax optimiser with dormant weights held at exactly 0 and fresh state
for grown entries; and the invariant that lets the forward pass use W directly."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import gpjax


def _setup(seed=0, density=0.5):
    rng = np.random.default_rng(seed)
    params = {"dense": {"kernel": jnp.asarray(rng.standard_normal((8, 6)), jnp.float32),
                        "bias": jnp.asarray(rng.standard_normal(6), jnp.float32)},
              "out": {"kernel": jnp.asarray(rng.standard_normal((6, 3)), jnp.float32)}}
    masks = {"dense": {"kernel": jnp.asarray(rng.random((8, 6)) < density), "bias": None},
             "out": {"kernel": jnp.asarray(rng.random((6, 3)) < density)}}
    return rng, params, masks


def _grads(rng, params):
    return jax.tree.map(lambda p: jnp.asarray(rng.standard_normal(p.shape), p.dtype), params)


def _dormant_values(params, masks):
    return np.concatenate([np.asarray(p)[~np.asarray(m)] for m, p in
                           [(masks["dense"]["kernel"], params["dense"]["kernel"]),
                            (masks["out"]["kernel"], params["out"]["kernel"])]])


def test_dormant_weights_exactly_zero_after_100_adam_steps():
    rng, params, masks = _setup()
    assert np.abs(_dormant_values(params, masks)).min() > 0  # start with non-zero dormant weights
    tx = gpjax.masked(optax.adam(1e-2))
    state = tx.init(params)

    @jax.jit
    def step(params, state, masks, grads):
        updates, state = tx.update(grads, state, params, masks=masks)
        return optax.apply_updates(params, updates), state

    p0 = params
    for _ in range(100):
        params, state = step(params, state, masks, _grads(rng, params))
    assert (_dormant_values(params, masks) == 0).all()
    assert gpjax.dormant_is_zero(params, masks)
    m = np.asarray(masks["dense"]["kernel"])
    assert (np.asarray(params["dense"]["kernel"])[m] != np.asarray(p0["dense"]["kernel"])[m]).all()
    assert not np.array_equal(params["dense"]["bias"], p0["dense"]["bias"])  # unmasked: trained
    # Dormant entries accumulated no Adam state.
    mu = state.inner_state[0].mu
    assert (np.asarray(mu["dense"]["kernel"])[~m] == 0).all()


def test_grown_weight_starts_with_zero_adam_moments():
    rng, params, masks = _setup(1)
    b1, b2, lr, eps = 0.9, 0.999, 1e-2, 1e-8
    tx = gpjax.masked(optax.adam(lr, b1=b1, b2=b2, eps=eps))
    state = tx.init(params)
    update = jax.jit(lambda g, s, p, m: tx.update(g, s, p, masks=m))
    i, j = 2, 1
    on = {**masks, "out": {"kernel": masks["out"]["kernel"].at[i, j].set(True)}}
    off = {**masks, "out": {"kernel": masks["out"]["kernel"].at[i, j].set(False)}}
    # Active for 10 steps (moments build up), dormant for 5, then grown again.
    for mk in [on] * 10 + [off] * 5:
        u, state = update(_grads(rng, params), state, params, mk)
        params = optax.apply_updates(params, u)
    assert params["out"]["kernel"][i, j] == 0
    inner_before = state.inner_state
    assert inner_before[0].mu["out"]["kernel"][i, j] != 0  # stale moments a reset must clear
    g = _grads(rng, params)
    u, state = update(g, state, params, on)
    gij = float(g["out"]["kernel"][i, j])
    mu, nu = state.inner_state[0].mu, state.inner_state[0].nu
    assert float(mu["out"]["kernel"][i, j]) == pytest.approx((1 - b1) * gij, rel=1e-6)
    assert float(nu["out"]["kernel"][i, j]) == pytest.approx((1 - b2) * gij**2, rel=1e-6)
    # The same update as the inner Adam given zero moments for that entry (count continues).
    mu0, nu0 = inner_before[0].mu, inner_before[0].nu
    fresh = inner_before[0]._replace(
        mu={**mu0, "out": {"kernel": mu0["out"]["kernel"].at[i, j].set(0.0)}},
        nu={**nu0, "out": {"kernel": nu0["out"]["kernel"].at[i, j].set(0.0)}})
    masked_g = jax.tree.map(jnp.asarray, _masked_np(g, on))
    adam_update = jax.jit(optax.adam(lr, b1=b1, b2=b2, eps=eps).update)
    ref_u, _ = adam_update(masked_g, (fresh, inner_before[1]), params)
    np.testing.assert_allclose(u["out"]["kernel"][i, j], ref_u["out"]["kernel"][i, j], rtol=1e-6)
    count = int(fresh.count) + 1
    m_hat = (1 - b1) * gij / (1 - b1**count)
    v_hat = (1 - b2) * gij**2 / (1 - b2**count)
    np.testing.assert_allclose(u["out"]["kernel"][i, j], -lr * m_hat / (np.sqrt(v_hat) + eps),
                               rtol=1e-5)
    # Other active entries kept their moments (no reset): their update matches the plain inner.
    u_plain, _ = adam_update(masked_g, inner_before, params)
    m_on = np.asarray(on["out"]["kernel"]).copy()
    m_on[i, j] = False
    np.testing.assert_allclose(np.asarray(u["out"]["kernel"])[m_on],
                               np.asarray(u_plain["out"]["kernel"])[m_on], rtol=1e-6)
    # The next update does not reset again: moments accumulate normally.
    g2 = _grads(rng, params)
    _, state = update(g2, state, optax.apply_updates(params, u), on)
    np.testing.assert_allclose(state.inner_state[0].mu["out"]["kernel"][i, j],
                               b1 * (1 - b1) * gij + (1 - b1) * g2["out"]["kernel"][i, j],
                               rtol=1e-6)


def test_sync_masks_gives_pruned_then_regrown_entries_fresh_state():
    # Pruned (outside the optimiser) and grown again with no update in between: without
    # sync_masks the optimiser cannot see the change; with it the entry restarts from zero
    # momentum, like any newly grown entry.
    rng, params, masks = _setup(2)
    i, j = 0, 2
    on = {**masks, "out": {"kernel": masks["out"]["kernel"].at[i, j].set(True)}}
    off = {**masks, "out": {"kernel": masks["out"]["kernel"].at[i, j].set(False)}}
    tx = gpjax.masked(optax.sgd(0.1, momentum=0.9))
    state = tx.init(params)
    for _ in range(5):
        u, state = tx.update(_grads(rng, params), state, params, masks=on)
        params = optax.apply_updates(params, u)
    other = (1, 0) if bool(on["out"]["kernel"][1, 0]) else None
    trace_before = state.inner_state[0].trace["out"]["kernel"]
    assert trace_before[i, j] != 0
    synced = jax.jit(gpjax.sync_masks)(state, off)  # after a prune that removed (i, j)
    trace = synced.inner_state[0].trace["out"]["kernel"]
    assert trace[i, j] == 0 and not synced.previous_masks["out"]["kernel"][i, j]
    if other is not None:  # still-active entries keep their momentum
        assert trace[other] == trace_before[other]
    chex.assert_trees_all_equal(synced.previous_masks["dense"]["kernel"],
                                state.previous_masks["dense"]["kernel"] & masks["dense"]["kernel"])
    g = _grads(rng, params)
    for st, fresh in ((synced, True), (state, False)):
        _, after = tx.update(g, st, params, masks=on)  # grown again, then one update
        got = float(after.inner_state[0].trace["out"]["kernel"][i, j])
        gij = float(g["out"]["kernel"][i, j])
        if fresh:
            assert got == pytest.approx(gij, rel=1e-6)
        else:  # what the stale state gives: the old momentum carries over
            assert got == pytest.approx(0.9 * float(trace_before[i, j]) + gij, rel=1e-6)


def _masked_np(g, masks):
    return {"dense": {"kernel": np.where(masks["dense"]["kernel"], g["dense"]["kernel"], 0.0),
                      "bias": np.asarray(g["dense"]["bias"])},
            "out": {"kernel": np.where(masks["out"]["kernel"], g["out"]["kernel"], 0.0)}}


def _run(tx, params, masks_seq, grads_seq):
    state = tx.init(params)
    out = []
    for m, g in zip(masks_seq, grads_seq):
        u, state = tx.update(g, state, params, masks=m)
        params = optax.apply_updates(params, u)
        out.append((u, params))
    return out


def test_sgd_momentum_and_weight_decay():
    rng, params, masks = _setup(2)
    grow_at = (1, 1)
    grown = {**masks, "dense": {"kernel": masks["dense"]["kernel"].at[grow_at].set(True),
                                "bias": None}}
    base = {**masks, "dense": {"kernel": masks["dense"]["kernel"].at[grow_at].set(False),
                               "bias": None}}
    seq = [base, base, base, grown, grown]
    grads = [_grads(rng, params) for _ in seq]
    lr, mom, wd = 0.1, 0.9, 1e-2
    for name, tx in [("sgd", optax.sgd(lr)),
                     ("momentum", optax.sgd(lr, momentum=mom)),
                     ("nesterov", optax.sgd(lr, momentum=mom, nesterov=True)),
                     ("wd", optax.chain(optax.add_decayed_weights(wd), optax.sgd(lr))),
                     ("wd+momentum", optax.chain(optax.add_decayed_weights(wd),
                                                 optax.sgd(lr, momentum=mom))),
                     ("adamw", optax.adamw(1e-2, weight_decay=1e-1))]:
        out = _run(gpjax.masked(tx), params, seq, grads)
        # Reference for plain cases, computed by hand in numpy.
        w = jax.tree.map(np.asarray, params)
        w = {"dense": {"kernel": np.where(seq[0]["dense"]["kernel"], w["dense"]["kernel"], 0),
                       "bias": w["dense"]["bias"]},
             "out": {"kernel": np.where(seq[0]["out"]["kernel"], w["out"]["kernel"], 0)}}
        trace = jax.tree.map(np.zeros_like, w)
        for t, (m, g, (_, p_new)) in enumerate(zip(seq, grads, out)):
            assert gpjax.dormant_is_zero(p_new, m), name
            if name not in ("sgd", "momentum", "wd"):
                continue
            gm = _masked_np(jax.tree.map(np.asarray, g), m)
            if name == "wd":
                gm = jax.tree.map(lambda a, b: a + wd * b, gm, w)
            if name == "momentum":
                if t > 0 and m is not seq[t - 1]:  # grown entry: trace reset
                    trace["dense"]["kernel"][grow_at] = 0.0
                trace = jax.tree.map(lambda tr, a: mom * tr + a, trace, gm)
                gm = trace
            ref = jax.tree.map(lambda a: -lr * a, gm)
            mm = {"dense": {"kernel": np.asarray(m["dense"]["kernel"]), "bias": None},
                  "out": {"kernel": np.asarray(m["out"]["kernel"])}}
            new_w = jax.tree.map(lambda a, r, mk: a + r if mk is None else np.where(mk, a + r, 0),
                                 w, ref, mm, is_leaf=lambda x: x is None)
            chex.assert_trees_all_close(p_new, new_w, rtol=1e-5, atol=1e-6)
            w = new_w
        # The grown entry starts from 0 and moves by the inner optimiser's fresh first step.
        u_grow = out[3][0]["dense"]["kernel"][grow_at]
        if name in ("sgd", "momentum", "nesterov"):
            g3 = grads[3]["dense"]["kernel"][grow_at]
            fac = {"sgd": 1.0, "momentum": 1.0, "nesterov": 1.0 + mom}[name]
            np.testing.assert_allclose(u_grow, -lr * fac * g3, rtol=1e-5)


def test_masked_requires_masks_and_params():
    _, params, masks = _setup()
    tx = gpjax.masked(optax.adam(1e-3))
    state = tx.init(params)
    g = jax.tree.map(jnp.ones_like, params)
    with pytest.raises(ValueError, match="masks"):
        tx.update(g, state, params)
    with pytest.raises(ValueError, match="params"):
        tx.update(g, state, masks=masks)
    bad = {**masks, "out": {"kernel": masks["out"]["kernel"].astype(jnp.float32)}}
    with pytest.raises(ValueError, match=r"out/kernel.*bool"):
        tx.update(g, state, params, masks=bad)
    bad = {**masks, "out": {"kernel": masks["out"]["kernel"][:, :2]}}
    with pytest.raises(ValueError, match=r"out/kernel.*shape"):
        jax.jit(lambda g, s, p, m: tx.update(g, s, p, masks=m))(g, state, params, bad)
    with pytest.raises(ValueError, match="out/kernel"):
        tx.update(g, state, params, masks={"dense": masks["dense"]})
    assert isinstance(tx, optax.GradientTransformationExtraArgs)
    assert isinstance(state, gpjax.MaskedState)


def _loss(p, batch):
    h = jax.nn.leaky_relu(batch["x"] @ p["dense"]["kernel"] + p["dense"]["bias"], 0.01)
    return jnp.mean((h @ p["out"]["kernel"] - batch["y"]) ** 2)


def _batches(rng, n):
    return [{"x": jnp.asarray(rng.standard_normal((16, 8)), jnp.float32),
             "y": jnp.asarray(rng.standard_normal((16, 3)), jnp.float32)} for _ in range(n)]


def test_changing_masks_never_recompiles_the_train_step(compiles):
    rng, params, masks = _setup(3)
    tx = gpjax.masked(optax.chain(optax.add_decayed_weights(1e-4), optax.adam(1e-2)))

    @jax.jit
    def train_step(params, state, masks, batch):
        loss, grads = jax.value_and_grad(_loss)(params, batch)
        updates, state = tx.update(grads, state, params, masks=masks)
        return optax.apply_updates(params, updates), state, loss

    state = tx.init(params)
    batches = _batches(rng, 8)
    mask_list = [jax.tree.map(lambda m, d=d: None if m is None else jnp.asarray(
        rng.random(m.shape) < d), masks, is_leaf=lambda x: x is None) for d in (0.2, 0.6, 0.9)]
    params, state, _ = train_step(params, state, masks, batches[0])  # warm-up
    with compiles:
        for k, b in enumerate(batches[1:]):
            m = mask_list[k % 3]
            params, state, loss = train_step(params, state, m, b)
        jax.block_until_ready(params)
    assert compiles.count == 0
    assert train_step._cache_size() == 1
    assert np.isfinite(float(loss))


def test_forward_on_w_equals_forward_on_w_times_m():
    """Issue 2 section 6: once dormant weights are exactly 0, W * M == W, so

    * the gradient at W equals the gradient w.r.t. the effective weights at W * M (everywhere),
      and the gradient through apply_masks equals it on active entries;
    * a masked train step with the forward pass on W directly gives the same params as one
      computed on apply_masks(W, M), through growth and pruning events (mask changes).
    """
    rng, params, masks = _setup(4)
    params = gpjax.apply_masks(params, masks)
    batch = _batches(rng, 1)[0]
    g_w = jax.grad(_loss)(params, batch)
    g_eff = jax.grad(_loss)(gpjax.apply_masks(params, masks), batch)
    g_through = jax.grad(lambda p: _loss(gpjax.apply_masks(p, masks), batch))(params)
    chex.assert_trees_all_equal(g_w, g_eff)
    for k in ("dense", "out"):
        m = np.asarray(masks[k]["kernel"])
        np.testing.assert_array_equal(np.asarray(g_through[k]["kernel"])[m],
                                      np.asarray(g_w[k]["kernel"])[m])
        assert (np.asarray(g_through[k]["kernel"])[~m] == 0).all()
        assert (np.asarray(g_w[k]["kernel"])[~m] != 0).any()  # the real gradient growth uses
    np.testing.assert_array_equal(g_through["dense"]["bias"], g_w["dense"]["bias"])

    tx = gpjax.masked(optax.adam(1e-2))

    def make_step(direct):
        @jax.jit
        def step(params, state, masks, batch):
            f = (lambda p: _loss(p, batch)) if direct else (
                lambda p: _loss(gpjax.apply_masks(p, masks), batch))
            grads = jax.grad(f)(params)
            updates, state = tx.update(grads, state, params, masks=masks)
            return optax.apply_updates(params, updates), state
        return step

    train_batches = _batches(rng, 30)
    flip = {k: rng.random(masks[k]["kernel"].shape) < 0.3 for k in ("dense", "out")}
    new_w = {k: rng.standard_normal(masks[k]["kernel"].shape).astype(np.float32)
             for k in ("dense", "out")}

    def grow_like(p, m):  # switch on some dormant connections at small non-zero values
        p, m = jax.tree.map(np.asarray, p), jax.tree.map(np.asarray, m)
        for k in ("dense", "out"):
            on = flip[k] & ~m[k]["kernel"]
            p[k]["kernel"] = np.where(on, 1e-2 * new_w[k], p[k]["kernel"])
            m[k]["kernel"] = m[k]["kernel"] | on
        return jax.tree.map(jnp.asarray, p), jax.tree.map(jnp.asarray, m)

    def prune_like(p, m):  # switch off some active connections (weights and masks to 0)
        m = jax.tree.map(np.asarray, m)
        for k in ("dense", "out"):
            m[k]["kernel"] = m[k]["kernel"] & ~(flip[k] & (new_w[k] > 0.5))
        m = jax.tree.map(jnp.asarray, m)
        return gpjax.apply_masks(p, m), m

    events = {10: grow_like, 20: prune_like}
    runs = []
    for direct in (True, False):
        step = make_step(direct)
        p, m, s = params, masks, tx.init(params)
        for t, b in enumerate(train_batches):
            if t in events:  # growth / pruning events: masks (and new weights) change
                p, m = events[t](p, m)
            p, s = step(p, s, m, b)
            assert gpjax.dormant_is_zero(p, m)
        runs.append((p, m))
    assert not all(np.array_equal(a, b) for a, b in
                   zip(jax.tree.leaves(runs[0][1]), jax.tree.leaves(masks)))  # masks did change
    chex.assert_trees_all_equal(runs[0][1], runs[1][1])
    chex.assert_trees_all_close(runs[0][0], runs[1][0], rtol=0, atol=0)


def test_sync_masks_refuses_mismatched_masks_in_one_line():
    _, params, masks = _setup()
    state = gpjax.masked(optax.adam(1e-3)).init(params)
    cases = [({"dense": masks["dense"]}, r"masks and the optimiser state have different tree "
                                         r"structures.*out/kernel.*tx\.init\(params\)"),
             ({**masks, "out": {"kernel": masks["out"]["kernel"][:, :2]}},
              "mask at 'out/kernel' has shape"),
             ({**masks, "out": {"kernel": masks["out"]["kernel"].astype(jnp.float32)}},
              "mask at 'out/kernel' has dtype float32")]
    for bad, match in cases:
        with pytest.raises(ValueError, match=match) as e:
            gpjax.sync_masks(state, bad)
        assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="sync_masks needs the state of a gpjax.masked"):
        gpjax.sync_masks(state.inner_state, masks)


def test_masked_optimiser_on_params_with_none_leaves():
    # eqx.partition-style params: None leaves stay None in the state and the updates.
    params = {"w": jnp.ones((3, 2)), "act": None, "b": jnp.zeros(2)}
    masks = gpjax.init_masks(params)
    masks = {**masks, "w": masks["w"].at[0].set(False)}
    tx = gpjax.masked(optax.adam(1e-2))
    state = tx.init(params)
    grads = {"w": jnp.ones((3, 2)), "act": None, "b": jnp.ones(2)}
    u, state = tx.update(grads, state, params, masks=masks)
    new = optax.apply_updates(params, u)
    assert new["act"] is None and gpjax.dormant_is_zero(new, masks)
    state = gpjax.sync_masks(state, masks)
    assert state.previous_masks["act"] is None
