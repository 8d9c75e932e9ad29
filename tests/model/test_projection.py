"""projection.project: the custom-vjp matmul equals plain dot_general and its autodiff gradients."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from orchestra_jax.model.projection import project


def _plain(x, kernel, n_in):
    contract = (tuple(range(x.ndim - n_in, x.ndim)), tuple(range(n_in)))
    return jax.lax.dot_general(x, kernel, (contract, ((), ())))


@pytest.mark.parametrize("x_shape,k_shape,n_in", [
    ((3, 5, 8), (8, 6), 1),            # gate / up / down
    ((3, 5, 8), (8, 2, 4), 1),         # q / k / v: [D] -> [heads, head_dim]
    ((3, 5, 2, 4), (2, 4, 8), 2),      # o_proj: [heads, head_dim] -> [D]
    ((7, 8), (8, 6), 1),               # one token axis
])
def test_project_values_and_grads_equal_autodiff(x_shape, k_shape, n_in):
    keys = jax.random.split(jax.random.key(0), 3)
    x, kernel = jax.random.normal(keys[0], x_shape), jax.random.normal(keys[1], k_shape)
    out_shape = x_shape[:len(x_shape) - n_in] + k_shape[n_in:]
    w = jax.random.normal(keys[2], out_shape)

    def loss(fn):  # a nonlinearity before and after, as silu / RMSNorm around the real projections
        return lambda x, k: jnp.sum(jnp.tanh(fn(jnp.sin(x), k, n_in)) * w)

    np.testing.assert_allclose(project(x, kernel, n_in), _plain(x, kernel, n_in), rtol=1e-6, atol=1e-6)
    ours = jax.jit(jax.grad(loss(project), (0, 1)))(x, kernel)
    ref = jax.jit(jax.grad(loss(_plain), (0, 1)))(x, kernel)
    for a, b in zip(ours, ref):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_project_bf16_cotangents_keep_input_dtypes():
    x = jnp.ones((2, 3, 4), jnp.bfloat16)
    kernel = jnp.ones((4, 5), jnp.bfloat16)
    dx, dk = jax.grad(lambda x, k: jnp.sum(project(x, k, 1).astype(jnp.float32)), (0, 1))(x, kernel)
    assert dx.dtype == jnp.bfloat16 and dk.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(dk, np.float32), np.full((4, 5), 6.0))  # summed over 2 x 3 tokens
