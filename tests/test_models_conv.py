"""jssl.models.conv.Conv: same params, outputs and gradients as flax.linen.Conv."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jssl.models import conv as conv_lib
from jssl.models.conv import (
    Conv,
    chunked_kernel_grad,
    phase_input_grad,
    use_chunked_dw,
    use_phase_dx,
)


def _x(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def _numpy_kernel_grad(x, dy, k, s, pads):
    """dW[i, j, c, d] = Σ_{n,h,w} x_pad[n, s·h + i, s·w + j, c] · dY[n, h, w, d], float64."""
    x, dy = np.asarray(x, np.float64), np.asarray(dy, np.float64)
    xp = np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    oh, ow = dy.shape[1:3]
    dw = np.zeros((k, k, x.shape[-1], dy.shape[-1]))
    for i in range(k):
        for j in range(k):
            tap = xp[:, i:i + s * (oh - 1) + 1:s, j:j + s * (ow - 1) + 1:s]
            dw[i, j] = np.einsum("nhwc,nhwd->cd", tap, dy)
    return dw


# (batch, side, C_in, C_out, kernel, stride, padding): both kernel-gradient paths, odd batch
# (chunk 5 of 10, 3 of 3), asymmetric and string paddings, 1x1 strided projections.
CASES = [
    (16, 28, 1, 8, 3, 1, ((1, 1), (1, 1))),
    (10, 24, 8, 8, 3, 1, "SAME"),
    (3, 26, 4, 6, 3, 1, ((0, 2), (2, 0))),
    (4, 28, 8, 16, 3, 2, ((1, 1), (1, 1))),
    (4, 28, 8, 16, 1, 2, "SAME"),
    (4, 14, 16, 16, 3, 1, "VALID"),
    (2, 30, 3, 5, 5, 1, 2),
    (3, 32, 3, 8, 7, 2, 3),  # ImageNet-style 7x7/2 stem: phase input gradient, 4 taps a phase
    (2, 30, 4, 6, 3, 3, "VALID"),  # stride 3: one tap per phase
    (2, 27, 4, 6, 3, 2, ((1, 1), (1, 1))),  # odd padded side 29: XLA's input gradient
]


@pytest.mark.parametrize("impl", ["fast", "fast_chunked_dw"])
@pytest.mark.parametrize("case", CASES, ids=[str(c[:6]) for c in CASES])
def test_matches_flax_conv_value_and_gradients(case, impl):
    b, side, cin, cout, k, s, padding = case
    kwargs = dict(features=cout, kernel_size=(k, k), strides=(s, s), padding=padding,
                  use_bias=True, bias_init=nn.initializers.normal(1.0))
    x = _x((b, side, side, cin))
    ref, fast = nn.Conv(**kwargs), Conv(**kwargs, impl=impl)
    variables = ref.init(jax.random.key(0), x)
    assert (jax.tree.map(jnp.shape, fast.init(jax.random.key(0), x))
            == jax.tree.map(jnp.shape, variables))
    np.testing.assert_array_equal(fast.init(jax.random.key(0), x)["params"]["kernel"],
                                  variables["params"]["kernel"])  # same init, same names
    y_ref = ref.apply(variables, x)
    dy = _x(y_ref.shape, seed=1)

    def grads(module):
        y, vjp = jax.vjp(lambda v, x: module.apply(v, x), variables, x)
        return (y, *vjp(dy))

    y, gv, gx = jax.jit(lambda: grads(fast))()
    y_r, gv_r, gx_r = jax.jit(lambda: grads(ref))()
    np.testing.assert_allclose(y, y_r, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gx, gx_r, rtol=1e-5, atol=1e-5)
    scale = float(jnp.abs(gv_r["params"]["kernel"]).max())
    np.testing.assert_allclose(gv["params"]["kernel"], gv_r["params"]["kernel"], rtol=1e-4,
                               atol=1e-5 * scale)
    np.testing.assert_allclose(gv["params"]["bias"], np.asarray(dy).sum((0, 1, 2)), rtol=1e-4,
                               atol=1e-4)
    # and against the float64 definition of the kernel gradient
    pads = conv_lib.explicit_pads(padding, (side, side), (k, k), (s, s))
    np.testing.assert_allclose(gv["params"]["kernel"], _numpy_kernel_grad(x, dy, k, s, pads),
                               rtol=1e-4, atol=1e-5 * scale)


def test_chunked_kernel_grad_is_used_and_exact_where_the_rule_says():
    assert use_chunked_dw(28, (1, 1), 8, 8) and use_chunked_dw(32, (1, 1), 64, 64)
    assert not use_chunked_dw(14, (1, 1), 8, 8)  # small output side: XLA's
    assert not use_chunked_dw(28, (2, 2), 8, 8)  # strided: XLA's
    assert not use_chunked_dw(28, (1, 1), 128, 128)  # wide: XLA's
    assert not use_chunked_dw(28, (1, 1), 8, 8, platform="gpu")  # accelerators: XLA's
    x, dy = _x((12, 28, 28, 4)), _x((12, 28, 28, 8), seed=2)
    pads = ((1, 1), (1, 1))
    dw = chunked_kernel_grad(x, dy, (3, 3), (1, 1), pads)  # chunks of 6 (largest divisor <= 8)
    np.testing.assert_allclose(dw, _numpy_kernel_grad(x, dy, 3, 1, pads), rtol=1e-4, atol=1e-3)
    jaxpr = str(jax.make_jaxpr(jax.grad(
        lambda w: Conv(8, (3, 3), padding=pads, use_bias=False, impl="fast_chunked_dw").apply(
            {"params": {"kernel": w}}, x).sum()))(dw))
    assert "scan" in jaxpr and "conv_general_dilated" in jaxpr
    jaxpr = str(jax.make_jaxpr(jax.grad(  # "fast" keeps XLA's kernel gradient
        lambda w: Conv(8, (3, 3), padding=pads, use_bias=False, impl="fast").apply(
            {"params": {"kernel": w}}, x).sum()))(dw))
    assert "scan" not in jaxpr


def test_phase_input_grad_is_used_and_exact_where_the_rule_says():
    one = ((1, 1), (1, 1))
    assert use_phase_dx((28, 28), (2, 2), one) and use_phase_dx((28, 28), (2, 2), ((0, 0),) * 2)
    assert not use_phase_dx((7, 7), (2, 2), one)  # padded side 9: XLA's
    assert not use_phase_dx((28, 28), (1, 1), one)  # stride 1: XLA's
    assert not use_phase_dx((28, 28), (2, 2), one, platform="gpu")  # accelerators: XLA's
    # asymmetric strides and paddings, against XLA's own input gradient
    x, w = _x((3, 20, 18, 5)), _x((3, 4, 5, 7), seed=3)
    pads, strides = ((2, 0), (1, 1)), (2, 1)
    assert use_phase_dx((20, 18), strides, pads)

    def conv(x_):
        return jax.lax.conv_general_dilated(x_, w, strides, pads,
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))

    y, vjp = jax.vjp(conv, x)
    dy = _x(y.shape, seed=4)
    np.testing.assert_allclose(phase_input_grad(dy, w, strides, pads, (20, 18)), vjp(dy)[0],
                               rtol=1e-5, atol=1e-5)
    jaxpr = str(jax.make_jaxpr(jax.grad(
        lambda x_: Conv(8, (3, 3), strides=2, padding=one, use_bias=False).apply(
            {"params": {"kernel": jnp.ones((3, 3, 4, 8))}}, x_).sum()))(_x((2, 28, 28, 4))))
    assert "lhs_dilation=(2, 2)" not in jaxpr and "lhs_dilation=(1, 1)" in jaxpr


def test_bfloat16_computes_in_dtype_and_keeps_float32_params():
    x = _x((4, 28, 28, 3))
    m = Conv(8, (3, 3), dtype=jnp.bfloat16)
    v = m.init(jax.random.key(0), x)
    assert v["params"]["kernel"].dtype == jnp.float32
    y, g = jax.value_and_grad(lambda v: m.apply(v, x).astype(jnp.float32).sum())(v)
    assert g["params"]["kernel"].dtype == jnp.float32
    g_ref = jax.grad(lambda v: nn.Conv(8, (3, 3), dtype=jnp.bfloat16).apply(v, x)
                     .astype(jnp.float32).sum())(v)
    np.testing.assert_allclose(g["params"]["kernel"], g_ref["params"]["kernel"], rtol=2e-2,
                               atol=2e-2 * float(jnp.abs(g_ref["params"]["kernel"]).max()))


@pytest.mark.parametrize("kwargs, match", [
    (dict(impl="cudnn"), "impl='cudnn'"),
    (dict(padding="CIRCULAR"), "padding='CIRCULAR'"),
    (dict(strides=0), "strides=0"),
])
def test_bad_arguments_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Conv(4, (3, 3), **kwargs).init(jax.random.key(0), _x((1, 8, 8, 2)))


def test_resnet_fast_and_xla_convs_share_params_and_agree():
    """ResNet(conv_impl="fast") is the nn.Conv ResNet: same variables, same loss gradients."""
    from jssl.models.resnet import resnet

    x = _x((8, 28, 28, 1))
    fast, xla = resnet("tiny", stem="cifar"), resnet("tiny", stem="cifar", conv_impl="xla")
    assert fast.conv_impl == resnet("tiny").conv_impl == "fast"  # the default
    variables = xla.init(jax.random.key(0), x, train=False)
    assert (jax.tree.map(jnp.shape, fast.init(jax.random.key(0), x, train=False))
            == jax.tree.map(jnp.shape, variables))

    def loss(model, params):
        feats, _ = model.apply({**variables, "params": params}, x, train=True,
                               mutable=["batch_stats"])
        return jnp.sum(jnp.sin(feats))

    (l_f, g_f), (l_x, g_x) = (jax.jit(jax.value_and_grad(lambda p, m=m: loss(m, p)))(
        variables["params"]) for m in (fast, xla))
    np.testing.assert_allclose(l_f, l_x, rtol=1e-5)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(g_f), jax.tree.leaves(g_x),
                            strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4 * float(jnp.abs(b).max()) + 1e-7,
                                   err_msg=jax.tree_util.keystr(path))
    with pytest.raises(ValueError, match="conv_impl='im2col'"):
        resnet("tiny", stem="cifar", conv_impl="im2col").init(jax.random.key(0), x, train=False)


def test_materialised_is_bitwise_the_input_with_an_identity_gradient():
    tiny = np.finfo(np.float32).tiny
    special = np.array([0.0, -0.0, 1.0, -1.0, tiny, -tiny, 3e38, -3e38, 1e-30, 7.5],
                       np.float32)
    x = np.concatenate([special, np.random.default_rng(1).normal(size=990).astype(np.float32)
                        * np.float32(1e3)]).reshape(10, 10, 10)
    y, vjp = jax.vjp(jax.jit(conv_lib.materialised), jnp.asarray(x))
    np.testing.assert_array_equal(np.asarray(y).view(np.uint32), x.view(np.uint32))
    # subnormals are flushed to zero by XLA:CPU's division: ±0 of the same sign
    sub = np.array([1e-40, -1e-41, 1e-45], np.float32)
    np.testing.assert_array_equal(np.asarray(jax.jit(conv_lib.materialised)(sub)).view(
        np.uint32), (sub * 0).view(np.uint32))
    g = np.random.default_rng(2).normal(size=x.shape).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(vjp(jnp.asarray(g))[0]).view(np.uint32),
                                  g.view(np.uint32))


def _transposing_fusions_recompute_relu(materialise: bool) -> int:
    """How many of XLA:CPU's fusions that end in a transpose / copy recompute the ReLU of a
    BatchNorm-apply + ReLU + Conv("fast") chain, in the compiled parameter gradient."""
    import re

    def loss(kernel, scale, x):
        h = jnp.maximum(x * scale + 0.5, 0.0)
        y = Conv(8, 3, impl="fast").apply({"params": {"kernel": kernel, "bias": jnp.zeros(8)}}, h)
        return jnp.sum(y * y)

    old = conv_lib.MATERIALISE_INPUT
    conv_lib.MATERIALISE_INPUT = materialise
    try:
        hlo = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(
            jnp.ones((3, 3, 8, 8)), jnp.ones(8), _x((16, 28, 28, 8))).compile().as_text()
    finally:
        conv_lib.MATERIALISE_INPUT = old
    count = 0
    for comp in re.split(r"\n(?=\S)", hlo):
        root = [line for line in comp.splitlines() if "ROOT" in line]
        if (comp.startswith("%fused") and root and re.search(r" (transpose|copy)\(", root[0])
                and " maximum(" in comp):
            count += 1
    return count


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="an XLA:CPU fusion property")
def test_on_cpu_the_kernel_gradients_transpose_reads_the_stored_input():
    # without materialised(), XLA fuses BN-apply + ReLU into the transposing copy of the
    # kernel gradient (recomputed at the transposed stride); with it, the copy reads x
    assert _transposing_fusions_recompute_relu(False) >= 1
    assert _transposing_fusions_recompute_relu(True) == 0
