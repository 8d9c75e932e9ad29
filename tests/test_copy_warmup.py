"""copy_warmup: the copying task's examples, and the SFT warm-up stage that trains it (it must learn the copy)."""
import types

import jax
import numpy as np
import pytest

from orchestra_jax.config import SFTConfig
from orchestra_jax.copy_warmup import copying_examples, used_token_ids
from orchestra_jax.model import ModelConfig, init_params
from orchestra_jax.parallel import MeshConfig, make_mesh
from orchestra_jax.sft import copy_warmup_stage
from orchestra_jax.text.tokenizer import train_tokenizer


def test_copying_examples_repeat_the_run_after_the_separator_with_the_repeat_as_targets():
    rng = np.random.default_rng(0)
    ids = [5, 9, 11, 40]
    examples = copying_examples(rng, ids + [9], separator=3, n=50, run_len=7)
    assert len(examples) == 50
    for tokens, mask in examples:
        assert tokens.dtype == np.int32 and tokens.shape == mask.shape == (15,)
        run = tokens[:7]
        assert tokens[7] == 3 and list(tokens[8:]) == list(run) and set(run) <= set(ids)
        assert list(mask) == [0] * 8 + [1] * 7
    drawn = np.concatenate([t[:7] for t, _ in examples])
    assert set(drawn) == set(ids)  # uniform over the distinct ids: 350 draws hit all four
    again = copying_examples(np.random.default_rng(0), ids + [9], separator=3, n=50, run_len=7)
    assert all((a[0] == b[0]).all() for a, b in zip(examples, again))  # seeded
    with pytest.raises(ValueError, match="at least 2 distinct token ids"):
        copying_examples(rng, [4, 4], separator=3, n=1)
    with pytest.raises(ValueError, match="run_len must be >= 1"):
        copying_examples(rng, ids, separator=3, n=1, run_len=0)


def test_used_token_ids_are_the_distinct_ids_of_the_sequences_minus_the_excluded():
    seqs = [(np.array([4, 7, 7, 2]), np.zeros(4)), (np.array([9, 2]), np.zeros(2))]
    assert used_token_ids(seqs) == [2, 4, 7, 9]
    assert used_token_ids(seqs, exclude=[7, 100]) == [2, 4, 9]


def test_copy_warmup_stage_learns_the_copy_and_logs_it():
    tok = train_tokenizer(["Models:\nmodel-1: 3B model-1, good math model-1, $0.1/$0.2 model-1, fast model-1\n"
                           "Task: count the vowels in 'abcde'.\n"] * 20, vocab_size=300)
    seqs = [(np.asarray(tok.encode(t), np.int32), np.ones(len(tok.encode(t)), np.int32))
            for t in ["good math model-1, fast model-2", "Task: count the vowels", "$0.1/$0.2 model-3"]]
    cfg = ModelConfig(vocab_size=320, hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1, head_dim=32,
                      intermediate_size=128)
    prep = types.SimpleNamespace(tokenizer=tok, model_cfg=cfg,
                                 init_params=jax.tree_util.tree_map(np.asarray, init_params(cfg, jax.random.PRNGKey(0))))
    s = SFTConfig(copy_warmup_steps=200, copy_warmup_examples=3000, batch_rows=8, row_len=256, learning_rate=3e-3,
                  warmup_steps=10, weight_decay=0.0, log_every=50, seed=0)
    lines = []
    mesh = make_mesh(MeshConfig(data=1, fsdp=1, tensor=1), jax.devices()[:1])
    params = copy_warmup_stage(prep, s, seqs, lambda step, m: lines.append((step, m)), mesh, None)
    assert [step for step, _ in lines] == [50, 100, 150, 200]
    assert all(m["stage"] == "copy_warmup" and np.isfinite(m["copy/loss"]) for _, m in lines)
    # held-out runs: none copied whole by the random start at step 50, nearly all at the end
    assert lines[0][1]["copy/val_match"] < 0.1 and lines[0][1]["copy/loss"] > 2.0
    assert lines[-1][1]["copy/val_match"] > 0.9 and lines[-1][1]["copy/loss"] < 0.2
    assert isinstance(params["embed"]["embedding"], np.ndarray)
    assert not np.allclose(params["embed"]["embedding"], prep.init_params["embed"]["embedding"])
