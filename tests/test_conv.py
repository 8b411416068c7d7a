"""The matrix-multiply convolutions (gpjax.models.conv) against XLA's own convolution:
outputs and gradients, over random shapes, strides and paddings; and ResNet-18 computing the
same function whichever convolution it uses."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax import lax

from gpjax.models import ResNet18
from gpjax.models.conv import conv_as_im2col, conv_as_row_gemm
from gpjax.models.resnet import conv_module


@st.composite
def conv_cases(draw, strided: bool):
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    h, w = draw(st.integers(kh, 12)), draw(st.integers(kw, 12))
    strides = (draw(st.integers(1, 3)), draw(st.integers(1, 3))) if strided else (1, 1)
    padding = draw(st.one_of(
        st.sampled_from(["VALID", "SAME"]),
        st.tuples(st.tuples(st.integers(0, 2), st.integers(0, 2)),
                  st.tuples(st.integers(0, 2), st.integers(0, 2)))))
    shape = (draw(st.integers(1, 3)), h, w, draw(st.integers(1, 4)))
    kernel = (kh, kw, shape[-1], draw(st.integers(1, 5)))
    return shape, kernel, strides, padding, draw(st.integers(0, 2**31 - 1))


def _check_against_xla(conv, case) -> None:
    shape, kernel, strides, padding, seed = case
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=shape), jnp.float32)
    k = jnp.asarray(rng.normal(size=kernel), jnp.float32)
    dn = ("NHWC", "HWIO", "NHWC")
    hi = lax.Precision.HIGHEST

    def ref(x, k):
        return lax.conv_general_dilated(x, k, strides, padding, dimension_numbers=dn,
                                        precision=hi)

    def ours(x, k):
        return conv(x, k, strides, padding, dimension_numbers=dn, precision=hi)

    @jax.jit  # one program per case (eagerly, every op of both would compile on its own)
    def outputs_and_gradients(x, k, cot):
        (y_ref, vjp_ref), (y, vjp) = jax.vjp(ref, x, k), jax.vjp(ours, x, k)
        return y, y_ref, vjp(cot), vjp_ref(cot)

    cot = rng.normal(size=jax.eval_shape(ref, x, k).shape).astype(np.float32)
    y, y_ref, grads, grads_ref = outputs_and_gradients(x, k, cot)
    np.testing.assert_allclose(y, y_ref, rtol=1e-4, atol=1e-4)
    for g, g_ref in zip(grads, grads_ref, strict=True):
        np.testing.assert_allclose(g, g_ref, rtol=1e-4, atol=1e-4)


@settings(max_examples=12, deadline=None)
@given(conv_cases(strided=True))
def test_im2col_equals_xla_conv_and_its_gradients(case):
    _check_against_xla(conv_as_im2col, case)


@settings(max_examples=8, deadline=None)
@given(conv_cases(strided=False))
def test_row_gemm_equals_xla_conv_and_its_gradients(case):
    _check_against_xla(conv_as_row_gemm, case)


def test_unhandled_convolutions_go_to_xla():
    # Dilation and feature groups are not rewritten: the result is XLA's, exactly.
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 9, 9, 4)), jnp.float32)
    k = jnp.ones((3, 3, 2, 4), jnp.float32)
    for conv in (conv_as_im2col, conv_as_row_gemm):
        y = conv(x, k, (1, 1), "SAME", rhs_dilation=(2, 2), feature_group_count=2,
                 dimension_numbers=("NHWC", "HWIO", "NHWC"))
        ref = lax.conv_general_dilated(x, k, (1, 1), "SAME", rhs_dilation=(2, 2),
                                       feature_group_count=2,
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
        np.testing.assert_array_equal(y, ref)


@pytest.mark.parametrize("small_stem,size", [(True, 16), (False, 32)])
def test_resnet_is_the_same_function_with_either_convolution(small_stem, size):
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, size, size, 3)), jnp.float32)
    # Two stages of one block: the stem, a stride-1 block and a strided one with a projection.
    models = {impl: ResNet18(num_classes=10, small_stem=small_stem, width=8,
                             stage_sizes=(1, 1), conv_impl=impl)
              for impl in ("xla", "im2col")}
    variables = jax.jit(models["xla"].init)(jax.random.key(0), x)
    assert jax.tree.structure(variables) == jax.tree.structure(
        jax.eval_shape(models["im2col"].init, jax.random.key(0), x))

    def loss(impl, params):
        out, _ = models[impl].apply({**variables, "params": params}, x, train=True,
                                    mutable=["batch_stats"])
        return jnp.sum(out**2)

    with jax.default_matmul_precision("highest"):
        (l_x, g_x), (l_i, g_i) = (jax.jit(jax.value_and_grad(functools.partial(loss, impl)))(
            variables["params"]) for impl in ("xla", "im2col"))
    np.testing.assert_allclose(l_i, l_x, rtol=1e-4)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-4),
                 g_i, g_x)


def test_conv_module_choice_and_bad_name():
    assert conv_module("xla") is nn.Conv
    im2col = conv_module("im2col")
    assert im2col.keywords["conv_general_dilated"] is conv_as_im2col
    auto = conv_module("auto")
    if jax.default_backend() == "cpu":
        assert auto.keywords["conv_general_dilated"] is conv_as_im2col
    with pytest.raises(ValueError, match="conv_impl must be"):
        conv_module("cudnn")
