"""Shared by the sharded-update tests and the multi-process worker: a tiny policy and a synthetic batch."""
import functools

import jax
import numpy as np

from orchestra_jax.data.packing import pack
from orchestra_jax.model import ModelConfig, init_params
from orchestra_jax.rl.losses import LossConfig
from orchestra_jax.rl.optim import OptimConfig, make_optimizer
from orchestra_jax.rl.step import AlgoConfig, make_update_fn

# Every sharded dimension divides by 2 (tensor) and 4 (fsdp): vocab 64, embed 32, heads 4, kv 2, mlp 64.
MODEL = ModelConfig(vocab_size=64, hidden_size=32, num_layers=1, num_heads=4, num_kv_heads=2, head_dim=8,
                    intermediate_size=64, attention_backend="xla")
# Adam's first step is lr * g / (|g| + eps): with eps=1e-8 a near-zero gradient (embedding rows of unseen
# tokens) turns float32 summation-order noise of 1e-10 into parameter differences of lr * 1e-2. eps=1e-4
# keeps the comparison about sharding, not about that amplification.
ALGO = AlgoConfig(loss=LossConfig(kl_coef=0.05, clip_high=0.28, entropy_coef=0.01),
                  optim=OptimConfig(lr=1e-2, eps=1e-4, weight_decay=0.01, grad_clip_norm=1.0))
ROWS, ROW_LEN = 8, 24


@functools.lru_cache(maxsize=None)
def optimizer():
    return make_optimizer(ALGO.optim)


@functools.lru_cache(maxsize=None)
def single_device_update():
    """The plain jitted update (one device), shared by the tests so it compiles once per batch shape."""
    return make_update_fn(MODEL, ALGO, optimizer())


@functools.lru_cache(maxsize=None)
def _host_params(seed):
    # Drawn with numpy over the model's parameter shapes: no init compile (slow on a loaded 2-core box).
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(lambda: init_params(MODEL, jax.random.key(0)))
    return jax.tree_util.tree_map_with_path(
        lambda path, s: (np.ones(s.shape, np.float32) if "scale" in jax.tree_util.keystr(path)
                         else rng.normal(0.0, 0.05, s.shape).astype(np.float32)), shapes)


def params(seed=0):
    """Host (numpy) parameters, so every placement makes fresh buffers (the sharded update donates them)."""
    return jax.tree.map(np.copy, _host_params(seed))


def batch(seed=0, rows=ROWS):
    """A packed [rows, ROW_LEN] GRPO batch: random sequences, masks, advantages, old / reference log-probs."""
    rng = np.random.default_rng(seed)
    seqs, fields = [], {"loss_mask": [], "advantages": [], "old_logp": [], "ref_logp": []}
    for _ in range(3 * rows):
        n = int(rng.integers(4, 9))
        seqs.append(rng.integers(0, MODEL.vocab_size, n).astype(np.int32))
        mask = np.zeros(n, np.float32)
        mask[int(rng.integers(1, n - 1)):] = 1
        fields["loss_mask"].append(mask)
        fields["advantages"].append(np.full(n, rng.normal(), np.float32))
        fields["old_logp"].append(rng.normal(-4.2, 0.3, n).astype(np.float32))
        fields["ref_logp"].append(rng.normal(-4.2, 0.3, n).astype(np.float32))
    return pack(seqs, row_len=ROW_LEN, fields=fields, num_rows=rows).as_dict()


def to_floats(metrics):
    return {k: float(np.asarray(v)) for k, v in metrics.items()}
