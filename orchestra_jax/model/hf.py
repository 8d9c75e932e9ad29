"""Hugging Face checkpoint import / export for Qwen2, Qwen3 and Llama (config.json + safetensors).

Reads and writes with `safetensors.numpy` only; transformers / torch are never imported here.
Mapping (HF Linear weights are [out, in]; ours are [in, out] with heads split out):
  model.embed_tokens.weight [V, D]                      -> embed/embedding [V, D]
  model.layers.i.self_attn.q_proj.weight [N*H, D]       -> layers_i/attn/q_proj/kernel [D, N, H]
  model.layers.i.self_attn.{k,v}_proj.weight [K*H, D]   -> layers_i/attn/{k,v}_proj/kernel [D, K, H]
  model.layers.i.self_attn.{q,k,v}_proj.bias            -> .../bias [N|K, H]          (Qwen2)
  model.layers.i.self_attn.o_proj.weight [D, N*H]       -> layers_i/attn/o_proj/kernel [N, H, D]
  model.layers.i.self_attn.{q,k}_norm.weight [H]        -> layers_i/attn/{q,k}_norm/scale (Qwen3)
  model.layers.i.{input,post_attention}_layernorm.weight -> layers_i/{input,post_attn}_norm/scale
  model.layers.i.mlp.{gate,up}_proj.weight [F, D]       -> layers_i/mlp/{gate,up}_proj/kernel [D, F]
  model.layers.i.mlp.down_proj.weight [D, F]            -> layers_i/mlp/down_proj/kernel [F, D]
  model.norm.weight [D]                                 -> final_norm/scale
  lm_head.weight [V, D]                                 -> lm_head/kernel [D, V]     (untied only)
"""
from __future__ import annotations

import json
import os
from typing import Callable, Mapping, NamedTuple

import jax.numpy as jnp
import numpy as np
from safetensors.numpy import load, load_file, save_file

from orchestra_jax.model.config import DTYPES, ModelConfig

ARCHITECTURES = {"qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM", "llama": "LlamaForCausalLM"}
# Buffers some older checkpoints store that carry no parameters.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


class HFCheckpointError(ValueError):
    """An HF checkpoint folder that cannot be loaded: names the file and the tensor."""


# dtypes a weight may be stored in (cast to cfg.param_dtype on load); anything else is a corrupt/foreign file
FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")


class _Tensor(NamedTuple):
    hf_name: str
    path: tuple  # path in our param tree
    hf_shape: tuple
    to_ours: Callable[[np.ndarray], np.ndarray]
    to_hf: Callable[[np.ndarray], np.ndarray]


def _ident(x):
    return x


def _tensor_specs(cfg: ModelConfig) -> list[_Tensor]:
    d, n, k, h, f, v = (cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim,
                        cfg.intermediate_size, cfg.vocab_size)
    specs = [_Tensor("model.embed_tokens.weight", ("embed", "embedding"), (v, d), _ident, _ident)]

    def proj_in(heads):  # [heads*H, D] <-> [D, heads, H]
        return (lambda w: w.T.reshape(d, heads, h), lambda kern: kern.reshape(d, heads * h).T)

    for i in range(cfg.num_layers):
        hf, ours = f"model.layers.{i}.", f"layers_{i}"
        for name, heads in (("q_proj", n), ("k_proj", k), ("v_proj", k)):
            specs.append(_Tensor(hf + f"self_attn.{name}.weight", (ours, "attn", name, "kernel"),
                                 (heads * h, d), *proj_in(heads)))
            if cfg.qkv_bias:
                specs.append(_Tensor(hf + f"self_attn.{name}.bias", (ours, "attn", name, "bias"),
                                     (heads * h,), lambda b, heads=heads: b.reshape(heads, h),
                                     lambda b, heads=heads: b.reshape(heads * h)))
        specs.append(_Tensor(hf + "self_attn.o_proj.weight", (ours, "attn", "o_proj", "kernel"), (d, n * h),
                             lambda w: w.T.reshape(n, h, d), lambda kern: kern.reshape(n * h, d).T))
        if cfg.qk_norm:
            for name in ("q_norm", "k_norm"):
                specs.append(_Tensor(hf + f"self_attn.{name}.weight", (ours, "attn", name, "scale"), (h,),
                                     _ident, _ident))
        specs.append(_Tensor(hf + "input_layernorm.weight", (ours, "input_norm", "scale"), (d,),
                             _ident, _ident))
        specs.append(_Tensor(hf + "post_attention_layernorm.weight", (ours, "post_attn_norm", "scale"),
                             (d,), _ident, _ident))
        for name in ("gate_proj", "up_proj"):
            specs.append(_Tensor(hf + f"mlp.{name}.weight", (ours, "mlp", name, "kernel"), (f, d),
                                 np.transpose, np.transpose))
        specs.append(_Tensor(hf + "mlp.down_proj.weight", (ours, "mlp", "down_proj", "kernel"), (d, f),
                             np.transpose, np.transpose))
    specs.append(_Tensor("model.norm.weight", ("final_norm", "scale"), (d,), _ident, _ident))
    if not cfg.tie_word_embeddings:
        specs.append(_Tensor("lm_head.weight", ("lm_head", "kernel"), (v, d), np.transpose, np.transpose))
    return specs


def _require(hf: Mapping, key: str, model_type: str):
    if key not in hf:
        raise ValueError(f"config.json ({model_type}) is missing required key {key!r}")
    return hf[key]


def _rope_theta(hf: Mapping) -> float:
    """rope_theta from transformers-5 `rope_parameters` or the older top-level key / `rope_scaling`."""
    rope = hf.get("rope_parameters") or {}
    if isinstance(rope, Mapping) and "rope_type" not in rope and any(isinstance(x, Mapping)
                                                                    for x in rope.values()):
        raise ValueError(f"config.json rope_parameters per layer type is not supported: {rope!r}")
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    scaling = hf.get("rope_scaling") or {}
    scaling_type = scaling.get("rope_type", scaling.get("type", "default")) if scaling else "default"
    for key, kind in (("rope_parameters.rope_type", rope_type), ("rope_scaling.rope_type", scaling_type)):
        if kind != "default":
            raise ValueError(f"config.json {key}={kind!r} is not supported (only plain RoPE, 'default')")
    if "rope_theta" in rope:
        return float(rope["rope_theta"])
    if "rope_theta" in hf:
        return float(hf["rope_theta"])
    return 10000.0  # the transformers default for all three families


def config_from_hf(hf: Mapping, **overrides) -> ModelConfig:
    """ModelConfig from a Hugging Face config.json dict; `overrides` set ModelConfig fields (e.g. dtype)."""
    model_type = hf.get("model_type")
    if model_type not in ARCHITECTURES:
        raise ValueError(f"config.json model_type={model_type!r} is not supported; "
                         f"supported: {sorted(ARCHITECTURES)}")
    if hf.get("hidden_act", "silu") != "silu":
        raise ValueError(f"config.json hidden_act={hf['hidden_act']!r} is not supported (only 'silu')")
    if hf.get("mlp_bias", False):
        raise ValueError("config.json mlp_bias=true is not supported")
    if model_type in ("llama", "qwen3") and hf.get("attention_bias", False):
        raise ValueError(f"config.json attention_bias=true ({model_type}: bias on o_proj too) is not supported")
    if hf.get("use_sliding_window", False):
        raise ValueError("config.json use_sliding_window=true is not supported")
    if hf.get("pretraining_tp", 1) != 1:
        raise ValueError(f"config.json pretraining_tp={hf['pretraining_tp']} is not supported (only 1)")
    num_heads = int(_require(hf, "num_attention_heads", model_type))
    hidden = int(_require(hf, "hidden_size", model_type))
    head_dim = hf.get("head_dim")
    if head_dim is None:
        if hidden % num_heads:
            raise ValueError(f"config.json has no head_dim and hidden_size={hidden} is not a multiple of "
                             f"num_attention_heads={num_heads}")
        head_dim = hidden // num_heads
    fields = dict(
        vocab_size=int(_require(hf, "vocab_size", model_type)),
        hidden_size=hidden,
        num_layers=int(_require(hf, "num_hidden_layers", model_type)),
        num_heads=num_heads,
        num_kv_heads=int(hf.get("num_key_value_heads") or num_heads),
        head_dim=int(head_dim),
        intermediate_size=int(_require(hf, "intermediate_size", model_type)),
        rope_theta=_rope_theta(hf),
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),  # transformers default
        qk_norm=model_type == "qwen3",
        qkv_bias=model_type == "qwen2" or bool(hf.get("attention_bias", False)),
    )
    fields.update(overrides)
    return ModelConfig(**fields)


def config_to_hf(cfg: ModelConfig, architecture: str) -> dict:
    """A Hugging Face config.json dict for `cfg` as `architecture` (qwen2 | qwen3 | llama)."""
    if architecture not in ARCHITECTURES:
        raise ValueError(f"architecture={architecture!r} is not supported; supported: {sorted(ARCHITECTURES)}")
    wanted = {"qwen2": (False, True), "qwen3": (True, False), "llama": (False, False)}[architecture]
    if (cfg.qk_norm, cfg.qkv_bias) != wanted:
        raise ValueError(f"architecture={architecture!r} needs qk_norm={wanted[0]}, qkv_bias={wanted[1]}; "
                         f"the config has qk_norm={cfg.qk_norm}, qkv_bias={cfg.qkv_bias}")
    hf = {
        "architectures": [ARCHITECTURES[architecture]],
        "model_type": architecture,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "intermediate_size": cfg.intermediate_size,
        "hidden_act": "silu",
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "rope_theta": cfg.rope_theta,  # for readers older than transformers 5
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "max_position_embeddings": 32768,
        "dtype": cfg.param_dtype,
    }
    if architecture in ("llama", "qwen3"):
        hf["attention_bias"] = False
    if architecture == "llama":
        hf["mlp_bias"] = False
    return hf


def check_tensors(cfg: ModelConfig, tensors: Mapping[str, np.ndarray], origin: Mapping[str, str] | None = None,
                  source: str = "checkpoint") -> None:
    """Raises one HFCheckpointError naming the file and tensor if ``tensors`` (HF names) is not exactly what
    ``cfg`` needs: a tensor missing or unknown, a shape mismatch, or a non-floating dtype. ``origin`` maps a
    tensor name to the file it came from (sharded checkpoints)."""
    origin = origin or {}
    specs = _tensor_specs(cfg)
    known = {s.hf_name for s in specs}
    unexpected = sorted(name for name in tensors if name not in known
                        and not name.endswith(_IGNORED_SUFFIXES)
                        and not (cfg.tie_word_embeddings and name == "lm_head.weight"))
    if unexpected:
        where = origin.get(unexpected[0], source)
        raise HFCheckpointError(f"{where}: tensors the config does not use: {unexpected[:8]}"
                                f"{' ...' if len(unexpected) > 8 else ''} (a checkpoint of another architecture "
                                f"or size?)")
    for spec in specs:
        if spec.hf_name not in tensors:
            raise HFCheckpointError(f"{source}: missing tensor {spec.hf_name!r} (expected shape {spec.hf_shape})")
        array = tensors[spec.hf_name]
        where = origin.get(spec.hf_name, source)
        dtype = str(getattr(array, "dtype", type(array).__name__))
        if dtype not in FLOAT_DTYPES:
            raise HFCheckpointError(f"{where}: tensor {spec.hf_name!r} has dtype {dtype}; expected one of "
                                    f"{', '.join(FLOAT_DTYPES)}")
        if tuple(np.shape(array)) != spec.hf_shape:
            raise HFCheckpointError(f"{where}: tensor {spec.hf_name!r} has shape {tuple(np.shape(array))} in the "
                                    f"checkpoint but the config needs {spec.hf_shape}")


def params_from_hf(cfg: ModelConfig, tensors: Mapping[str, np.ndarray], origin: Mapping[str, str] | None = None,
                   source: str = "checkpoint"):
    """Our param tree (jnp arrays in cfg.param_dtype) from HF-named numpy tensors; strict on names, shapes
    and dtypes (``check_tensors``)."""
    check_tensors(cfg, tensors, origin, source)
    dtype = DTYPES[cfg.param_dtype]
    params: dict = {}
    for spec in _tensor_specs(cfg):
        array = np.asarray(tensors[spec.hf_name])
        node = params
        for key in spec.path[:-1]:
            node = node.setdefault(key, {})
        node[spec.path[-1]] = jnp.asarray(spec.to_ours(array), dtype=dtype)
    return params


def params_to_hf(cfg: ModelConfig, params) -> dict[str, np.ndarray]:
    """HF-named numpy tensors (contiguous, param dtype kept) from our param tree."""
    out = {}
    for spec in _tensor_specs(cfg):
        node = params
        try:
            for key in spec.path:
                node = node[key]
        except (KeyError, TypeError) as err:
            raise ValueError(f"params are missing {'/'.join(spec.path)} (for {spec.hf_name})") from err
        tensor = np.ascontiguousarray(spec.to_hf(np.asarray(node)))
        if tuple(tensor.shape) != spec.hf_shape:
            raise ValueError(f"param {'/'.join(spec.path)} gives {spec.hf_name!r} shape {tuple(tensor.shape)} "
                             f"but the config needs {spec.hf_shape}")
        out[spec.hf_name] = tensor
    return out


def tensors_from_bytes(data: bytes, source: str) -> dict[str, np.ndarray]:
    """The tensors of safetensors ``data`` (the loader minus the file read); bad bytes raise naming ``source``."""
    try:
        return load(data)
    except Exception as e:  # safetensors raises SafetensorError / ValueError / OverflowError ...
        raise HFCheckpointError(f"{source} is not a readable safetensors file ({type(e).__name__}: {e})") from None


def _load_shard(path: str) -> dict[str, np.ndarray]:
    if not os.path.isfile(path):
        raise HFCheckpointError(f"missing shard {path}")
    try:
        return load_file(path)
    except Exception as e:
        raise HFCheckpointError(f"{path} is not a readable safetensors file ({type(e).__name__}: {e})") from None


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise HFCheckpointError(f"{path} is not readable JSON ({e})") from None
    if not isinstance(data, dict):
        raise HFCheckpointError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def read_tensors(folder: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """(tensors, origin file of each) of an HF folder: model.safetensors, or the shards named by
    model.safetensors.index.json (every shard must exist and hold the tensors the index assigns it)."""
    index_path = os.path.join(folder, "model.safetensors.index.json")
    single_path = os.path.join(folder, "model.safetensors")
    if os.path.exists(index_path):
        weight_map = _read_json(index_path).get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise HFCheckpointError(f"{index_path}: no weight_map object of tensor name -> shard file")
        tensors, origin = {}, {}
        for shard in sorted(set(weight_map.values())):
            path = os.path.join(folder, shard)
            if os.path.basename(shard) != shard:
                raise HFCheckpointError(f"{index_path}: shard name {shard!r} is not a file name in the folder")
            if not os.path.isfile(path):
                raise HFCheckpointError(f"{index_path} names shard {shard!r}, which is missing from {folder}")
            for name, array in _load_shard(path).items():
                tensors[name] = array
                origin[name] = path
        missing = sorted(n for n, shard in weight_map.items() if origin.get(n) != os.path.join(folder, shard))
        if missing:
            raise HFCheckpointError(f"{index_path} lists tensors not found in their shards: {missing[:8]}")
        return tensors, origin
    if os.path.exists(single_path):
        tensors = _load_shard(single_path)
        return tensors, {name: single_path for name in tensors}
    raise FileNotFoundError(f"no model.safetensors or model.safetensors.index.json in {folder}")


def load_hf_checkpoint(folder: str, **overrides):
    """(ModelConfig, params) from a local HF folder (config.json + safetensors, single or sharded).

    overrides: ModelConfig fields to set, e.g. dtype="bfloat16", attention_backend="xla". Every problem with
    the folder (missing or corrupt files and shards, tensors missing, unknown, of the wrong shape or dtype)
    raises one error naming the file and the tensor, before any parameter is built.
    """
    config_path = os.path.join(folder, "config.json")
    if not os.path.exists(config_path):
        raise FileNotFoundError(f"no config.json in {folder}")
    try:
        cfg = config_from_hf(_read_json(config_path), **overrides)
    except HFCheckpointError:
        raise
    except (ValueError, TypeError, KeyError) as e:
        raise HFCheckpointError(f"{config_path}: {e}") from None
    tensors, origin = read_tensors(folder)
    return cfg, params_from_hf(cfg, tensors, origin, source=folder)


def save_hf_checkpoint(folder: str, cfg: ModelConfig, params, architecture: str) -> None:
    """Write config.json + model.safetensors that transformers (and load_hf_checkpoint) can read."""
    hf_config = config_to_hf(cfg, architecture)
    tensors = params_to_hf(cfg, params)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w") as fh:
        json.dump(hf_config, fh, indent=2)
    save_file(tensors, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
