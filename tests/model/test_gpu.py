"""GPU checks: the cuDNN and pure-JAX attention, the Policy and the sampler on an NVIDIA GPU.

Skipped unless JAX's default backend is a GPU (CI and this project's CPU machines skip them; tests/conftest.py
pins JAX_PLATFORMS=cpu unless it is set). On a GPU machine:

    JAX_PLATFORMS=cuda,cpu python -m pytest -q tests/model/test_gpu.py

float32 comparisons run under jax.default_matmul_precision("float32"): the GPU's default (TF32) would
hide real differences below its own rounding.
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from orchestra_jax.model import ModelConfig, init_cache, init_params, token_logprobs
from orchestra_jax.model.attention import packed_attention, reference_attention, resolve_backend, segment_mask
from orchestra_jax.model.sampling import SamplingConfig, decode, prefill

pytestmark = pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a GPU (JAX_PLATFORMS=cuda,cpu)")

B, T, N, K, H = 2, 256, 4, 2, 64  # cuDNN's flash kernels want head_dim a multiple of 8 (<= 128 here)


def _packed_inputs(dtype):
    """q, k, v, cotangent and a shared-prefix packing: row 0 = prompt + 3 continuations + padding."""
    keys = jax.random.split(jax.random.key(0), 4)
    q, w = (jax.random.normal(keys[i], (B, T, N, H), dtype) for i in (0, 3))
    k, v = (jax.random.normal(keys[i], (B, T, K, H), dtype) for i in (1, 2))
    seg = np.ones((B, T), np.int32)
    seg[0, 60:110], seg[0, 110:170], seg[0, 170:230], seg[0, 230:] = 2, 3, 4, 0
    pre = seg.copy()
    pre[0, 60:230] = 1                  # the continuations see the prompt (segment 1)
    seg[1, 100:] = 7                    # row 1: two plain sequences
    return q, k, v, w, jnp.asarray(seg), jnp.asarray(pre)


def _rel_err(a, b):
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _values_and_grads(fn, q, k, v, w):
    out = jax.jit(fn)(q, k, v)
    grads = jax.jit(jax.grad(lambda *a: jnp.sum(fn(*a).astype(jnp.float32) * w.astype(jnp.float32)),
                             (0, 1, 2)))(q, k, v)
    return out, grads


@pytest.mark.parametrize("backend", ["cudnn", "xla", "block_sparse"])
def test_bf16_packed_attention_with_shared_prefix_matches_float32_reference(backend):
    """bf16 attention on the GPU vs the naive float32 reference on the same (bf16-rounded) inputs."""
    q, k, v, w, seg, pre = _packed_inputs(jnp.bfloat16)
    assert resolve_backend("auto", jnp.bfloat16) == "cudnn"
    ours = lambda q, k, v: packed_attention(q, k, v, seg, backend, pre)  # noqa: E731
    ref = lambda q, k, v: reference_attention(q, k, v, segment_mask(seg, pre))  # noqa: E731
    f32 = [x.astype(jnp.float32) for x in (q, k, v, w)]
    with jax.default_matmul_precision("float32"):
        out_r, grads_r = _values_and_grads(ref, *f32)
    out, grads = _values_and_grads(ours, q, k, v, w)
    assert out.dtype == jnp.bfloat16
    assert _rel_err(out, out_r) < 1.5e-2, backend  # bf16 keeps 8 bits: ~4e-3 per rounding
    for g, g_r in zip(grads, grads_r):
        assert _rel_err(g, g_r) < 3e-2, backend
    # nothing leaks across segments: row 0's continuation 3 does not see continuation 2
    bumped = v.at[0, 70].add(5.0)  # a token of continuation 2 (segment 2)
    diff = np.abs(np.asarray(jax.jit(ours)(q, k, bumped) - out, np.float32))
    assert diff[0, 110:230].max() == 0.0 and diff[0, 70:110].max() > 0.0


@pytest.mark.parametrize("backend", ["xla", "block_sparse"])
def test_float32_attention_on_gpu_matches_reference(backend):
    q, k, v, w, seg, pre = _packed_inputs(jnp.float32)
    with jax.default_matmul_precision("float32"):
        out, grads = _values_and_grads(lambda q, k, v: packed_attention(q, k, v, seg, backend, pre), q, k, v, w)
        out_r, grads_r = _values_and_grads(
            lambda q, k, v: reference_attention(q, k, v, segment_mask(seg, pre)), q, k, v, w)
    assert _rel_err(out, out_r) < 1e-5
    for g, g_r in zip(grads, grads_r):
        assert _rel_err(g, g_r) < 1e-5


CFG = ModelConfig(vocab_size=97, hidden_size=128, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=64,
                  intermediate_size=256, qk_norm=True, rope_theta=1e4)


def _params(cfg):
    params = init_params(cfg, jax.random.key(0))
    rng = np.random.default_rng(0)  # larger weights: attention far from uniform, greedy ids far from ties
    return jax.tree.map(lambda x: jnp.asarray(np.asarray(x) + 0.1 * rng.standard_normal(x.shape), x.dtype), params)


def test_bf16_cudnn_policy_logprobs_and_grads_close_to_float32():
    """token_logprobs (the update's forward) in bf16 with cuDNN vs float32 XLA, same packed shared-prefix rows."""
    rng = np.random.default_rng(1)
    _, _, _, _, seg, pre = _packed_inputs(jnp.float32)
    tokens = jnp.asarray(rng.integers(1, CFG.vocab_size, (B, T)), jnp.int32)
    t = np.arange(T)
    positions = np.stack([np.where(t < 60, t, 60 + t - np.select([t < 110, t < 170, t < 230], [60, 110, 170], 230)),
                          np.where(t < 100, t, t - 100)]).astype(np.int32)
    positions[0, 230:] = 0  # padding
    prev = np.where(t > 0, t - 1, -1)[None].repeat(B, 0).astype(np.int32)
    prev[0, [60, 110, 170]] = 59  # each continuation's first token is predicted by the prompt's last
    prev[0, 230:], prev[1, 100] = -1, -1
    s = np.asarray(seg)
    weights = jnp.asarray(rng.standard_normal((B, T)) * (s > 0), jnp.float32)
    params = _params(CFG)

    def loss_and_logp(cfg):
        def f(p):
            logp, _ = token_logprobs(cfg, p, tokens, jnp.asarray(positions), seg, pre, jnp.asarray(prev),
                                     with_entropy=False)
            return jnp.sum(logp * weights), logp
        return jax.jit(jax.value_and_grad(f, has_aux=True))

    with jax.default_matmul_precision("float32"):
        (_, logp32), g32 = loss_and_logp(dataclasses.replace(CFG, attention_backend="xla"))(params)
    (_, logp16), g16 = loss_and_logp(dataclasses.replace(CFG, dtype="bfloat16", attention_backend="cudnn"))(params)
    live = prev >= 0
    assert np.abs(np.asarray(logp16 - logp32))[live].max() < 0.1  # log-probs near -4.6; bf16 logits
    assert _rel_err(np.asarray(logp16)[live], np.asarray(logp32)[live]) < 1e-2
    for a, b in zip(jax.tree.leaves(g16), jax.tree.leaves(g32)):
        assert _rel_err(a, b) < 5e-2


def test_greedy_sampler_on_gpu_equals_cpu():
    """Prefill + decode (cached attention, windows, donated cache) on the GPU == on the CPU, float32."""
    params_cpu = jax.device_put(_params(CFG), jax.devices("cpu")[0])
    params_gpu = jax.device_put(params_cpu, jax.devices("gpu")[0])
    prompts = np.random.default_rng(2).integers(1, CFG.vocab_size, (4, 20)).astype(np.int32)
    num_new = np.array([20, 13, 7, 20], np.int32)  # ragged prompts
    scfg = SamplingConfig(greedy=True, max_new_tokens=150)  # past the first 128-slot window

    def run(params, device):
        with jax.default_device(device), jax.default_matmul_precision("float32"):
            cache = init_cache(CFG, 4, 192)
            last, cache = prefill(CFG, params, cache, prompts, num_new)
            out = decode(CFG, params, cache, last, jax.random.key(0), np.ones(4, bool), [], scfg)
            return np.asarray(out.tokens_BN), np.asarray(out.logp_BN)

    tokens_g, logp_g = run(params_gpu, jax.devices("gpu")[0])
    tokens_c, logp_c = run(params_cpu, jax.devices("cpu")[0])
    np.testing.assert_array_equal(tokens_g, tokens_c)
    np.testing.assert_allclose(logp_g, logp_c, atol=1e-4)
