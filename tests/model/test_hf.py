"""HF parity: tiny random Qwen2 / Qwen3 / Llama built with transformers (no download) vs our Policy."""
import json
import re
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import torch  # noqa: E402  (CI installs the test extras: a missing torch must fail, not skip)
import transformers  # noqa: E402

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


@pytest.mark.parametrize("backend", ["xla", "block_sparse"])
def test_logits_match_transformers_with_right_padding(saved, backend):
    arch, model, folder = saved
    cfg, params = load_hf_checkpoint(folder, attention_backend=backend)
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


# ------------------------------------------------------------------------------------- hostile input
import random  # noqa: E402

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from safetensors.numpy import save, save_file  # noqa: E402

from orchestra_jax.model.hf import (HFCheckpointError, check_tensors, params_to_hf,  # noqa: E402
                                    tensors_from_bytes)

TINY = ModelConfig(vocab_size=16, hidden_size=8, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=4,
                   intermediate_size=12, tie_word_embeddings=False)


def _tiny_tensors():
    from orchestra_jax.model import init_params

    return params_to_hf(TINY, init_params(TINY, jax.random.key(0)))


@pytest.fixture(scope="module")
def sharded_folder(tmp_path_factory):
    """A 2-shard folder of TINY written by hand (config.json, index, shards)."""
    folder = tmp_path_factory.mktemp("sharded")
    tensors = _tiny_tensors()
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for shard, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, str(folder / shard))
    index = {"metadata": {}, "weight_map": {k: s for s, keys in shards.items() for k in keys}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    from orchestra_jax.model.hf import config_to_hf

    (folder / "config.json").write_text(json.dumps(config_to_hf(TINY, "llama")))
    return folder


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_hand_written_sharded_folder_loads(sharded_folder):
    cfg, params = load_hf_checkpoint(str(sharded_folder))
    assert cfg.hidden_size == 8 and params["lm_head"]["kernel"].shape == (8, 16)


def test_missing_shard_names_index_and_shard(sharded_folder, tmp_path):
    folder = _copy(sharded_folder, tmp_path / "f")
    os.remove(folder / "model-00002-of-00002.safetensors")
    with pytest.raises(HFCheckpointError, match=r"index.json names shard 'model-00002-of-00002.safetensors', which is missing"):
        load_hf_checkpoint(str(folder))


def test_truncated_shard_names_the_file(sharded_folder, tmp_path):
    folder = _copy(sharded_folder, tmp_path / "f")
    shard = folder / "model-00001-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:-7])
    with pytest.raises(HFCheckpointError, match=r"model-00001-of-00002.safetensors is not a readable safetensors file"):
        load_hf_checkpoint(str(folder))


def test_wrong_dtype_names_file_and_tensor(sharded_folder, tmp_path):
    folder = _copy(sharded_folder, tmp_path / "f")
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    name = "model.norm.weight"
    shard = folder / index["weight_map"][name]
    from safetensors.numpy import load_file

    tensors = load_file(str(shard))
    tensors[name] = tensors[name].astype(np.int32)
    save_file(tensors, str(shard))
    with pytest.raises(HFCheckpointError, match=rf"{shard.name}: tensor '{name}' has dtype int32; expected one of"):
        load_hf_checkpoint(str(folder))


@pytest.mark.parametrize("index, problem", [("{not json", "is not readable JSON"),
                                            ('{"weight_map": ["a"]}', "no weight_map object"),
                                            ('{"weight_map": {"x": "../evil.safetensors"}}', "is not a file name")])
def test_broken_index_is_named(sharded_folder, tmp_path, index, problem):
    folder = _copy(sharded_folder, tmp_path / "f")
    (folder / "model.safetensors.index.json").write_text(index)
    with pytest.raises(HFCheckpointError, match=rf"model.safetensors.index.json.*{re.escape(problem)}"):
        load_hf_checkpoint(str(folder))


def test_broken_config_json_is_named(sharded_folder, tmp_path):
    folder = _copy(sharded_folder, tmp_path / "f")
    (folder / "config.json").write_text('{"model_type": "llama", "hidden_size": ')
    with pytest.raises(HFCheckpointError, match=r"config.json is not readable JSON"):
        load_hf_checkpoint(str(folder))
    (folder / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(HFCheckpointError, match=r"config.json: .*is missing required key"):
        load_hf_checkpoint(str(folder))


DEFECTS = ("none", "drop", "extra", "shape", "dtype")
BAD_DTYPES = (np.int32, np.int64, np.uint8, np.bool_, np.complex64)


@settings(max_examples=10_000, deadline=None, suppress_health_check=list(HealthCheck))
@given(seed=st.integers(0, 2**32 - 1))
def test_tensor_set_fuzz_one_error_naming_file_and_tensor(seed):
    """Random defects in a checkpoint's tensor set; the generator knows which tensor it broke, and the one
    error must name that tensor and its file (a clean set passes). One drawn seed per example."""
    rng = random.Random(seed)
    base = _TENSORS
    tensors = dict(base)
    origin = {n: f"/ckpt/shard-{rng.randrange(3)}.safetensors" for n in tensors}
    defect = DEFECTS[seed % len(DEFECTS)]
    name = rng.choice(sorted(tensors))
    if defect == "drop":
        del tensors[name]
    elif defect == "extra":
        name = rng.choice(["model.layers.1.mlp.up_proj.weight", "transformer.h.0.attn.c_attn.weight", "x"])
        tensors[name] = np.zeros((2,), np.float32)
        origin[name] = "/ckpt/extra.safetensors"
    elif defect == "shape":
        shape = list(tensors[name].shape)
        axis = rng.randrange(len(shape))
        shape[axis] += rng.choice([-1, 1, 3])
        tensors[name] = np.zeros(shape, np.float32)
    elif defect == "dtype":
        tensors[name] = tensors[name].astype(rng.choice(BAD_DTYPES))
    elif rng.random() < 0.5:  # a clean set in another float dtype still passes
        tensors = {k: v.astype(rng.choice([np.float16, np.float64])) for k, v in tensors.items()}
    if defect == "none":
        check_tensors(TINY, tensors, origin, "/ckpt")
        return
    with pytest.raises(HFCheckpointError) as err:
        check_tensors(TINY, tensors, origin, "/ckpt")
    msg = str(err.value)
    assert repr(name) in msg or (defect == "extra" and name in msg), (defect, name, msg)
    expected_file = "/ckpt" if defect == "drop" else origin[name]
    assert msg.startswith(expected_file) and "\n" not in msg, msg
    assert {"drop": "missing tensor", "extra": "does not use", "shape": "has shape", "dtype": "has dtype"}[defect] in msg


_TENSORS = _tiny_tensors()
_BYTES = save(_TENSORS)


@settings(max_examples=10_000, deadline=None, suppress_health_check=list(HealthCheck))
@given(seed=st.integers(0, 2**32 - 1))
def test_safetensors_bytes_fuzz_never_escape(seed):
    """Flipped bytes, truncation and garbage: one HFCheckpointError naming the file, or tensors that then
    go through check_tensors (which must raise HFCheckpointError or pass); nothing else escapes."""
    rng = random.Random(seed)
    data = bytearray(_BYTES)
    mode = seed % 3
    if mode == 0:
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(min(len(data), 400))] = rng.randrange(256)  # mostly the header
    elif mode == 1:
        data = data[: rng.randrange(len(data))]
    else:
        data = bytearray(rng.randrange(256) for _ in range(rng.randrange(64)))
    try:
        tensors = tensors_from_bytes(bytes(data), "/ckpt/model.safetensors")
    except HFCheckpointError as e:
        assert str(e).startswith("/ckpt/model.safetensors is not a readable safetensors file")
        return
    try:
        check_tensors(TINY, tensors, source="/ckpt")
    except HFCheckpointError:
        pass
