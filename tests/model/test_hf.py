"""HF parity: tiny random Qwen2 / Qwen3 / Llama built with transformers (no download) vs our Policy."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from orchestra_jax.model import ModelConfig, Policy  # noqa: E402
from orchestra_jax.model.hf import config_from_hf, load_hf_checkpoint, save_hf_checkpoint  # noqa: E402

VOCAB = 128
COMMON = dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, intermediate_size=96, rms_norm_eps=1e-6)
CASES = {
    # Qwen2: q/k/v bias, tied head, head_dim implied (64 / 4 = 16)
    "qwen2": (transformers.Qwen2Config, dict(tie_word_embeddings=True,
                                             rope_parameters={"rope_type": "default", "rope_theta": 1e4})),
    # Qwen3: q/k norm, explicit head_dim != hidden / heads, untied, non-default theta
    "qwen3": (transformers.Qwen3Config, dict(head_dim=24, tie_word_embeddings=False,
                                             rope_parameters={"rope_type": "default", "rope_theta": 5e5})),
    # Llama: untied, plain
    "llama": (transformers.LlamaConfig, dict(tie_word_embeddings=False, head_dim=16,
                                             rope_parameters={"rope_type": "default", "rope_theta": 2e4})),
}


def _hf_model(arch):
    config_cls, extra = CASES[arch]
    config = config_cls(**COMMON, **extra)
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():  # move norms / biases off their 1 / 0 init so their mapping is tested
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    return model


@pytest.fixture(scope="module", params=sorted(CASES))
def saved(request, tmp_path_factory):
    arch = request.param
    model = _hf_model(arch)
    folder = tmp_path_factory.mktemp(arch)
    model.save_pretrained(folder)
    return arch, model, str(folder)


def _batch():
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, VOCAB, size=(3, 11)).astype(np.int32)
    lengths = np.array([11, 7, 3])
    mask = (np.arange(11)[None] < lengths[:, None]).astype(np.int32)  # right padding
    tokens = tokens * mask
    return tokens, mask


def _hf_logits(model, tokens, mask):
    with torch.no_grad():
        out = model(input_ids=torch.tensor(tokens, dtype=torch.long),
                    attention_mask=torch.tensor(mask, dtype=torch.long))
    return out.logits.float().numpy()


def _our_logits(cfg, params, tokens, mask):
    positions = np.broadcast_to(np.arange(tokens.shape[1], dtype=np.int32), tokens.shape)
    return np.asarray(Policy(cfg).apply({"params": params}, jnp.asarray(tokens), jnp.asarray(positions),
                                        jnp.asarray(mask)))


def test_logits_match_transformers_with_right_padding(saved):
    arch, model, folder = saved
    cfg, params = load_hf_checkpoint(folder, attention_backend="xla")
    assert cfg.qk_norm == (arch == "qwen3") and cfg.qkv_bias == (arch == "qwen2")
    assert cfg.tie_word_embeddings == (arch == "qwen2")
    assert cfg.rope_theta == CASES[arch][1]["rope_parameters"]["rope_theta"]
    tokens, mask = _batch()
    ours, theirs = _our_logits(cfg, params, tokens, mask), _hf_logits(model, tokens, mask)
    valid = mask.astype(bool)
    diff = np.abs(ours - theirs)[valid].max()
    assert diff <= 1e-4, f"{arch}: max |ours - transformers| = {diff}"
    assert np.abs(theirs[valid]).max() > 0.1  # the comparison is not between near-zero logits


def test_export_reimport_round_trips_exactly_and_transformers_reads_it(saved, tmp_path):
    arch, model, folder = saved
    cfg, params = load_hf_checkpoint(folder)
    save_hf_checkpoint(str(tmp_path), cfg, params, architecture=arch)
    cfg2, params2 = load_hf_checkpoint(str(tmp_path))
    assert cfg2 == cfg
    assert jax.tree.structure(params2) == jax.tree.structure(params)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params2)):
        assert a.dtype == b.dtype and np.array_equal(np.asarray(a), np.asarray(b))
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), attn_implementation="eager")
    tokens, mask = _batch()
    diff = np.abs(_hf_logits(reloaded.float().eval(), tokens, mask) - _hf_logits(model, tokens, mask))
    assert diff[mask.astype(bool)].max() <= 1e-5


def test_sharded_checkpoint_loads(tmp_path):
    model = _hf_model("qwen3")
    model.save_pretrained(tmp_path / "single")
    model.save_pretrained(tmp_path / "sharded", max_shard_size="100KB")
    assert os.path.exists(tmp_path / "sharded" / "model.safetensors.index.json")
    assert len([f for f in os.listdir(tmp_path / "sharded") if f.endswith(".safetensors")]) > 1
    cfg_a, params_a = load_hf_checkpoint(str(tmp_path / "single"))
    cfg_b, params_b = load_hf_checkpoint(str(tmp_path / "sharded"))
    assert cfg_a == cfg_b
    for a, b in zip(jax.tree.leaves(params_a), jax.tree.leaves(params_b)):
        assert np.array_equal(np.asarray(a), np.asarray(b))


def test_mismatched_tensor_shape_names_key_and_both_shapes(tmp_path):
    cfg = ModelConfig(vocab_size=VOCAB, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
                      head_dim=16, intermediate_size=48, tie_word_embeddings=False, param_dtype="bfloat16")
    from orchestra_jax.model import init_params
    params = init_params(cfg, jax.random.key(0))
    save_hf_checkpoint(str(tmp_path), cfg, params, architecture="llama")
    # bfloat16 round trip is exact too; by default parameters load as float32
    cfg_bf16, params_bf16 = load_hf_checkpoint(str(tmp_path), param_dtype="bfloat16")
    assert cfg_bf16 == cfg
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params_bf16)):
        assert b.dtype == jnp.bfloat16 and np.array_equal(np.asarray(a), np.asarray(b))
    assert load_hf_checkpoint(str(tmp_path))[1]["lm_head"]["kernel"].dtype == jnp.float32
    with open(tmp_path / "config.json") as fh:
        hf = json.load(fh)
    hf["intermediate_size"] = 40
    with open(tmp_path / "config.json", "w") as fh:
        json.dump(hf, fh)
    with pytest.raises(ValueError, match=r"model\.layers\.0\.mlp\.\w+_proj\.weight.*\(48, 32\).*\(40, 32\)"):
        load_hf_checkpoint(str(tmp_path))


def test_config_errors_and_legacy_rope_theta():
    base = dict(model_type="llama", vocab_size=10, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                intermediate_size=16)
    assert config_from_hf({**base, "rope_theta": 123.0}).rope_theta == 123.0
    assert config_from_hf({**base, "rope_parameters": {"rope_type": "default", "rope_theta": 7.0}}).rope_theta == 7.0
    assert config_from_hf(base).head_dim == 4 and config_from_hf(base).num_kv_heads == 2
    with pytest.raises(ValueError, match="model_type='gpt2'"):
        config_from_hf({**base, "model_type": "gpt2"})
    with pytest.raises(ValueError, match="rope_type='yarn'"):
        config_from_hf({**base, "rope_parameters": {"rope_type": "yarn", "rope_theta": 1.0, "factor": 4.0}})
    with pytest.raises(ValueError, match="'intermediate_size'"):
        config_from_hf({k: v for k, v in base.items() if k != "intermediate_size"})
    with pytest.raises(ValueError, match="num_kv_heads"):
        config_from_hf({**base, "num_key_value_heads": 3, "num_attention_heads": 4})
    cfg = config_from_hf(base)
    with pytest.raises(ValueError, match="qwen3.*qk_norm=True"):
        save_hf_checkpoint("/nonexistent-never-written", cfg, {}, architecture="qwen3")
