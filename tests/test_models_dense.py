"""jssl.models.dense: the dense layers' kernel gradient as one dot over the rows of x and dy."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jssl.models import dense
from jssl.models.dense import dense_dot_general, matmul


@pytest.fixture
def switch():
    """Restore the module switch whatever a test sets."""
    yield dense
    dense.DIRECT_KERNEL_GRAD = True


@pytest.mark.parametrize("k,n", [(24, 40), (40, 24)])
def test_matmul_value_and_gradients_match_float64(k, n):
    """y = x·w, dx = dy·wᵀ, dw = xᵀ·dy against NumPy in float64."""
    rng = np.random.default_rng(0)
    x, w, dy = (rng.standard_normal(s).astype(np.float32) for s in [(50, k), (k, n), (50, n)])
    y, vjp = jax.vjp(matmul, jnp.asarray(x), jnp.asarray(w))
    dx, dw = vjp(jnp.asarray(dy))
    x64, w64, dy64 = (a.astype(np.float64) for a in (x, w, dy))
    np.testing.assert_allclose(y, x64 @ w64, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, dy64 @ w64.T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dw, x64.T @ dy64, rtol=1e-5, atol=1e-5)


def test_dense_general_dimension_numbers_reshape_to_one_matmul():
    """DenseGeneral's q/k/v ([B, T, D]·[D, H, Dh]) and output ([B, T, H, Dh]·[H, Dh, D])
    contractions give lax.dot_general's values and gradients."""
    rng = np.random.default_rng(1)
    cases = [((4, 6, 16), (16, 2, 8), (((2,), (0,)), ((), ()))),
             ((4, 6, 2, 8), (2, 8, 16), (((2, 3), (0, 1)), ((), ())))]
    for xs, ws, dims in cases:
        x = jnp.asarray(rng.standard_normal(xs), jnp.float32)
        w = jnp.asarray(rng.standard_normal(ws), jnp.float32)
        mine = lambda a, b, dims=dims: jnp.sum(jnp.sin(dense_dot_general(a, b, dims)))  # noqa: E731
        ref = lambda a, b, dims=dims: jnp.sum(jnp.sin(lax.dot_general(a, b, dims)))  # noqa: E731
        np.testing.assert_allclose(dense_dot_general(x, w, dims), lax.dot_general(x, w, dims),
                                   rtol=1e-6, atol=1e-6)
        for g, r in zip(jax.grad(mine, (0, 1))(x, w), jax.grad(ref, (0, 1))(x, w), strict=True):
            np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5)


def test_other_dimension_numbers_fall_back_to_lax():
    """A batched contraction (attention's q·kᵀ) is not a dense layer: lax.dot_general, same
    jaxpr (no custom_vjp)."""
    q = jnp.ones((2, 3, 4)), jnp.ones((2, 5, 4))
    dims = (((2,), (2,)), ((0,), (0,)))
    jaxpr = str(jax.make_jaxpr(lambda a, b: dense_dot_general(a, b, dims))(*q))
    assert "custom_vjp" not in jaxpr and "dot_general" in jaxpr


def _mlp_grad_hlo(switch_on: bool, m: int = 400, d: int = 64, h: int = 256) -> str:
    dense.DIRECT_KERNEL_GRAD = switch_on

    class Block(nn.Module):
        @nn.compact
        def __call__(self, x):
            y = nn.LayerNorm()(x)
            y = nn.Dense(h, dot_general=dense_dot_general)(y)
            y = nn.Dense(d, dot_general=dense_dot_general)(nn.gelu(y))
            return x + y

    x = jnp.ones((m // 50, 50, d))
    params = Block().init(jax.random.key(0), x)
    grad = jax.jit(jax.grad(lambda p, x: jnp.sum(Block().apply(p, x) ** 2)))
    return grad.lower(params, x).compile().as_text()


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the layout is XLA:CPU's")
def test_no_transposed_copy_of_an_operand_on_cpu(switch):
    """Without the switch XLA:CPU writes the MLP's hidden gradient [M, 256] (and the second
    layer's [M, 64] one) transposed, as [256, M] and [64, M] buffers, for the kernel
    gradients; with it neither exists and both kernel gradients are dots contracting axis 0
    of both operands."""
    off, on = _mlp_grad_hlo(False), _mlp_grad_hlo(True)
    assert "f32[256,400]" in off and "f32[64,400]" in off
    assert "f32[256,400]" not in on and "f32[64,400]" not in on
    assert on.count("lhs_contracting_dims={0}, rhs_contracting_dims={0}") == 2


def test_vit_block_gradients_equal_with_and_without(switch):
    """A ViT block's gradients (attention q/k/v/out and MLP, all through dense_dot_general)
    with the switch on equal those with lax.dot_general to float32 rounding."""
    from jssl.models.vit import Block

    x = jax.random.normal(jax.random.key(0), (4, 9, 32))
    block = Block(num_heads=4)
    params = block.init(jax.random.key(1), x)

    loss = lambda p: jnp.sum(jnp.tanh(block.apply(p, x)))  # noqa: E731

    def grads(on: bool):
        dense.DIRECT_KERNEL_GRAD = on
        jaxpr = str(jax.make_jaxpr(jax.grad(loss))(params))
        return jax.jit(jax.grad(loss))(params), jaxpr.count("custom_vjp_call")

    (on, calls_on), (off, calls_off) = grads(True), grads(False)
    assert (calls_on, calls_off) == (6, 0)  # q, k, v, out, fc1, fc2
    flat_on, flat_off = jax.tree.leaves(on), jax.tree.leaves(off)
    scale = max(float(jnp.max(jnp.abs(b))) for b in flat_off)
    for a, b in zip(flat_on, flat_off, strict=True):  # the key bias's gradient is ~0 (softmax)
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * scale)
