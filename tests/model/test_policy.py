"""Policy: packed == unpacked, no cross-segment gradient, backend agreement, dtypes, config validation."""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from orchestra_jax.model import ModelConfig, Policy, init_params, param_logical_axes

CFG = ModelConfig(vocab_size=97, hidden_size=48, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
                  intermediate_size=96, qk_norm=True, qkv_bias=True, rope_theta=1e4)
LENGTHS = (7, 4, 6)  # three sequences packed into one row of 20 (3 padding tokens)
ROW = 20


@functools.lru_cache(maxsize=None)
def _params(cfg, seed=0):
    params = init_params(cfg, jax.random.key(seed))
    # scale up the random init (host-side noise: cheap) so attention patterns are far from uniform and
    # bugs show in the logits
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: jnp.asarray(np.asarray(x) + 0.1 * rng.standard_normal(x.shape), x.dtype),
                        params)


def _sequences(seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, CFG.vocab_size, size=n).astype(np.int32) for n in LENGTHS]


def _packed_row(seqs):
    tokens, positions, segments = np.zeros((3, ROW), np.int32)
    start = 0
    for i, seq in enumerate(seqs):
        n = len(seq)
        tokens[start:start + n] = seq
        positions[start:start + n] = np.arange(n)
        segments[start:start + n] = i + 1
        start += n
    return tokens[None], positions[None], segments[None]


@functools.partial(jax.jit, static_argnums=0)
def _jit_apply(cfg, params, tokens, positions, segments):
    return Policy(cfg).apply({"params": params}, tokens, positions, segments)


def _apply(cfg, params, tokens, positions, segments):
    return np.asarray(_jit_apply(cfg, params, jnp.asarray(tokens), jnp.asarray(positions),
                                 jnp.asarray(segments)))


@pytest.mark.parametrize("backend", ["xla", "block_sparse", "reference"])
def test_packed_equals_unpacked(backend):
    cfg = dataclasses.replace(CFG, attention_backend=backend)
    params = _params(CFG)  # params do not depend on the backend
    seqs = _sequences()
    packed = _apply(cfg, params, *_packed_row(seqs))[0]
    start = 0
    for seq in seqs:
        n = len(seq)  # run alone in a row of max(LENGTHS) so all runs share one compiled shape
        width = max(LENGTHS)
        tokens = np.zeros((1, width), np.int32)
        tokens[0, :n] = seq
        positions = np.arange(width, dtype=np.int32)[None]
        segments = (positions < n).astype(np.int32)
        alone = _apply(cfg, params, tokens, positions, segments)
        diff = np.abs(packed[start:start + n] - alone[0, :n]).max()
        assert diff <= 1e-5, f"{backend}: segment at {start} differs by {diff}"
        start += n
    assert np.abs(packed).max() > 0.5
    # the chunked-logits path (final_hidden + head_logits) gives the same logits
    policy, variables = Policy(cfg), {"params": params}
    hidden = jax.jit(lambda v, *b: policy.apply(v, *b, method=Policy.final_hidden))(variables,
                                                                                     *_packed_row(seqs))
    head = jax.jit(lambda v, h: policy.apply(v, h, method=Policy.head_logits))
    chunked = np.concatenate([np.asarray(head(variables, hidden[:, i:i + 10])) for i in range(0, ROW, 10)],
                             axis=1)[0]
    assert np.abs(chunked - packed).max() <= 1e-5


@pytest.mark.parametrize("backend", ["xla", "block_sparse", "reference"])
def test_no_gradient_flows_across_segments(backend):
    cfg = dataclasses.replace(CFG, attention_backend=backend)
    params = _params(CFG)  # params do not depend on the backend
    tokens, positions, segments = (jnp.asarray(a) for a in _packed_row(_sequences()))
    policy = Policy(cfg)
    embeds = policy.apply({"params": params}, tokens, method=Policy.embed_tokens)

    def segment_loss(x_BTD, seg):
        logits = policy.apply({"params": params}, x_BTD, positions, segments, method=Policy.forward_embeddings)
        logp = jax.nn.log_softmax(logits)
        return jnp.sum(jnp.where((segments == seg)[..., None], logp, 0.0) ** 2)

    grad_fn = jax.jit(jax.grad(segment_loss))
    for seg in (1, 2, 3):
        grad_BTD = np.asarray(grad_fn(embeds, seg))[0]
        inside = np.asarray(segments[0] == seg)
        assert np.abs(grad_BTD[inside]).max() > 0  # the gradient exists where it should
        assert np.all(grad_BTD[~inside] == 0.0), f"segment {seg} leaks gradient to other positions"


def test_xla_matches_reference_with_fully_padded_row():
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, CFG.vocab_size, size=(3, 12)).astype(np.int32)
    positions = np.zeros_like(tokens)
    segments = np.zeros_like(tokens)
    positions[0], segments[0] = np.arange(12), 1                       # one full sequence
    positions[1, :5], positions[1, 5:10] = np.arange(5), np.arange(5)  # two sequences + padding
    segments[1, :5], segments[1, 5:10] = 1, 2
    # row 2 is all padding (segment 0)
    params = _params(CFG)
    out = {b: _apply(dataclasses.replace(CFG, attention_backend=b), params, tokens, positions, segments)
           for b in ("xla", "block_sparse", "reference")}
    assert all(np.all(np.isfinite(o)) for o in out.values())
    real = segments > 0
    assert np.abs(out["xla"] - out["reference"])[real].max() <= 1e-5
    assert np.abs(out["block_sparse"] - out["reference"])[real].max() <= 1e-5
    # real rows do not depend on the padded row: run them without it
    alone = _apply(CFG.replace(attention_backend="xla"), params, tokens[:2], positions[:2], segments[:2])
    assert np.abs(alone - out["xla"][:2])[real[:2]].max() <= 1e-5


def test_bfloat16_compute_close_to_float32():
    params = _params(CFG)
    tokens, positions, segments = _packed_row(_sequences())
    f32 = _apply(CFG, params, tokens, positions, segments)
    bf16_cfg = CFG.replace(dtype="bfloat16")
    bf16 = _apply(bf16_cfg, params, tokens, positions, segments)
    assert bf16.dtype == np.float32
    real = segments[0] > 0
    err = np.abs(bf16 - f32)[0][real].max()
    assert 0 < err <= 0.05 * np.abs(f32).max(), err
    # bfloat16 parameters too: init_params makes them (checked abstractly, no compile), the forward runs
    all_bf16 = CFG.replace(param_dtype="bfloat16", dtype="bfloat16")
    abstract = jax.eval_shape(lambda key: init_params(all_bf16, key), jax.random.key(0))
    assert {leaf.dtype for leaf in jax.tree.leaves(abstract)} == {jnp.dtype(jnp.bfloat16)}
    bf16_params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
    out = _apply(all_bf16, bf16_params, tokens, positions, segments)
    assert out.dtype == np.float32 and np.abs(out - f32)[0][real].max() <= 0.1 * np.abs(f32).max()


def test_logical_axes_match_params_and_tied_untied():
    for tie in (True, False):
        cfg = CFG.replace(tie_word_embeddings=tie)
        params = jax.eval_shape(lambda key: init_params(cfg, key), jax.random.key(0))
        axes = param_logical_axes(cfg)
        flat_p = jax.tree_util.tree_flatten_with_path(params)[0]
        flat_a = dict(jax.tree_util.tree_flatten_with_path(axes, is_leaf=lambda x: isinstance(x, tuple))[0])
        assert len(flat_p) == len(flat_a)
        names = {"embed", "heads", "kv_heads", "head_dim", "mlp", "vocab"}
        for path, leaf in flat_p:
            assert len(flat_a[path]) == leaf.ndim and set(flat_a[path]) <= names, (path, flat_a[path])
        assert ("lm_head" in params) == (not tie)
        assert params["embed"]["embedding"].shape == (cfg.vocab_size, cfg.hidden_size)


def test_remat_gives_identical_logits_and_gradients():
    cfg = CFG.replace(num_layers=1)
    params = _params(cfg)
    batch = [jnp.asarray(a) for a in _packed_row(_sequences())]

    def loss(p, cfg):
        return jnp.mean(Policy(cfg).apply({"params": p}, *batch) ** 2)

    grad_fn = jax.jit(jax.grad(loss), static_argnums=1)
    g0 = grad_fn(params, cfg)
    g1 = grad_fn(params, cfg.replace(remat=True))
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def test_config_validation_errors():
    with pytest.raises(ValueError, match="num_heads.*multiple.*num_kv_heads"):
        ModelConfig(num_heads=4, num_kv_heads=3)
    with pytest.raises(ValueError, match="dtype"):
        ModelConfig(dtype="float64")
    with pytest.raises(ValueError, match="param_dtype"):
        ModelConfig(param_dtype="bf16")
    with pytest.raises(ValueError, match="attention_backend"):
        ModelConfig(attention_backend="flash")
    with pytest.raises(ValueError, match="hidden_size"):
        ModelConfig(hidden_size=0)
    with pytest.raises(ValueError, match="attention_block must be an int >= 0"):
        ModelConfig(attention_block=-32)
    with pytest.raises(ValueError, match="attention_block applies to attention_backend 'block_sparse'"):
        ModelConfig(attention_backend="xla", attention_block=32)


def test_attention_block_reaches_the_kernel_and_keeps_the_logits(monkeypatch):
    """model.attention_block is the block the kernel walks (recorded at trace time); any block gives the
    same logits (a 20-token row walks 4 / 2 / 1 block(s) of 8 / 16 / all)."""
    import orchestra_jax.model.attention as attention
    seen = []
    kernel = attention.block_sparse_attention

    def recording(*args, **kwargs):
        seen.append(kwargs.get("block"))
        return kernel(*args, **kwargs)

    monkeypatch.setattr(attention, "block_sparse_attention", recording)
    row = _packed_row(_sequences())
    logits = {}
    for block in (0, 8, 16):
        cfg = CFG.replace(attention_backend="block_sparse", attention_block=block)
        apply = jax.jit(lambda p, *a, cfg=cfg: Policy(cfg).apply({"params": p}, *a))  # traced afresh
        logits[block] = np.asarray(apply(_params(CFG), *map(jnp.asarray, row)))
    assert seen == [None] * CFG.num_layers + [8] * CFG.num_layers + [16] * CFG.num_layers
    mask = row[2][0] > 0
    for block in (8, 16):
        np.testing.assert_allclose(logits[block][0, mask], logits[0][0, mask], atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", ["cudnn", "splash"])
def test_accelerator_backends_fail_clearly_on_cpu(backend):
    cfg = CFG.replace(attention_backend=backend)
    tokens, positions, segments = _packed_row(_sequences())
    with pytest.raises(ValueError, match=f"attention_backend='{backend}' .*needs"):
        _apply(cfg, _params(CFG), tokens, positions, segments)


def test_auto_backend_resolution():
    from orchestra_jax.model.attention import resolve_backend
    # one CPU device: the block-skipping kernel; a CPU mesh: dense xla (the kernel's row loop would gather rows)
    assert resolve_backend("auto", jnp.float32, "cpu") == ("block_sparse" if jax.device_count() == 1 else "xla")
    assert resolve_backend("auto", jnp.float32, "tpu") == "splash"
    assert resolve_backend("auto", jnp.bfloat16, "gpu") == "cudnn"
    assert resolve_backend("auto", jnp.float32, "gpu") == "xla"  # cuDNN flash has no float32 kernel
    with pytest.raises(ValueError, match="bfloat16"):
        resolve_backend("cudnn", jnp.float32, "gpu")


def test_sharded_forward_matches_unsharded():
    """Logical axis names + activation constraints work under a (data, model) mesh of 8 CPU devices."""
    from flax import linen as nn
    from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

    if jax.device_count() < 8:
        pytest.skip("needs 8 (host) devices")
    cfg = CFG.replace(num_layers=1, vocab_size=96)  # vocab divisible by the model axis
    params = _params(cfg)
    tokens, positions, segments = (jnp.asarray(np.repeat(a, 4, axis=0)) for a in _packed_row(_sequences()))
    tokens = tokens % cfg.vocab_size
    expected = _apply(cfg, params, tokens, positions, segments)
    mesh = Mesh(np.array(jax.devices()[:8]).reshape(4, 2), ("data", "model"), axis_types=(AxisType.Auto,) * 2)
    rules = (("batch", "data"), ("heads", "model"), ("kv_heads", "model"), ("mlp", "model"),
             ("vocab", "model"), ("embed", None), ("sequence", None), ("head_dim", None))
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        shardings = jax.tree.map(lambda names: NamedSharding(mesh, nn.logical_to_mesh_axes(names)),
                                 param_logical_axes(cfg), is_leaf=lambda x: isinstance(x, tuple))
        sharded = jax.device_put(params, shardings)
        assert sharded["layers_0"]["attn"]["q_proj"]["kernel"].sharding.spec == PartitionSpec(None, "model", None)
        out = jax.jit(lambda p, *b: Policy(cfg).apply({"params": p}, *b))(sharded, tokens, positions, segments)
        assert out.sharding.spec == PartitionSpec("data", None, "model")
    assert np.abs(np.asarray(out) - expected).max() <= 1e-5
