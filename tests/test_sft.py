"""sft: behaviour cloning runs on the same sharded mesh path as GRPO; a mesh of 8 equals one device."""
import jax
import numpy as np

from orchestra_jax.model import ModelConfig, init_params
from orchestra_jax.parallel import MeshConfig, make_mesh, make_rules
from orchestra_jax.sft import train_sft


def _sequences(n=48, vocab=64, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        length = int(rng.integers(12, 40))
        tokens = rng.integers(1, vocab, length).astype(np.int32)
        mask = (np.arange(length) >= length // 2).astype(np.int32)  # loss on the second half
        out.append((tokens, mask))
    return out


def test_sft_on_an_fsdp_mesh_of_8_equals_one_device():
    cfg = ModelConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
                      intermediate_size=64)
    params = jax.tree_util.tree_map(np.asarray, init_params(cfg, jax.random.PRNGKey(0)))
    kw = dict(steps=4, batch_rows=8, row_len=64, learning_rate=1e-2, warmup_steps=1, weight_decay=0.01,
              grad_clip=1.0, seed=0, log_every=1)
    one, hist_one = train_sft(cfg, params, _sequences(), **kw)
    mesh = make_mesh(MeshConfig(data=2, fsdp=4, tensor=1))
    eight, hist_eight = train_sft(cfg, params, _sequences(), mesh=mesh, rules=make_rules(()), **kw)
    assert len(jax.tree_util.tree_leaves(eight)[0].sharding.device_set) == 8  # trained on the mesh
    for a, b in zip(jax.tree_util.tree_leaves(one), jax.tree_util.tree_leaves(eight)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
    np.testing.assert_allclose([h["sft/loss"] for h in hist_one], [h["sft/loss"] for h in hist_eight], rtol=1e-5)
    assert hist_one[-1]["sft/loss"] < hist_one[0]["sft/loss"]  # it learns
    # params moved from the start (the input was not donated away either)
    assert max(float(np.abs(np.asarray(a) - b).max()) for a, b in
               zip(jax.tree_util.tree_leaves(one), jax.tree_util.tree_leaves(params))) > 1e-3
