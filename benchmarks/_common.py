"""Shared pieces of the benchmarks: tiny Qwen3 models built with transformers, timing, JSON output."""
from __future__ import annotations

import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# name -> Qwen3 shape (the two sampler sizes plus a middle one for update_step)
SIZES = {
    "tiny": dict(vocab_size=1024, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=32, intermediate_size=384),            # ~525k params
    "nano": dict(vocab_size=256, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                 num_key_value_heads=1, head_dim=16, intermediate_size=64),             # test mode only
    "10m": dict(vocab_size=4096, hidden_size=320, num_hidden_layers=6, num_attention_heads=5,
                num_key_value_heads=5, head_dim=64, intermediate_size=960),
    "29m": dict(vocab_size=8192, hidden_size=512, num_hidden_layers=8, num_attention_heads=8,
                num_key_value_heads=4, head_dim=64, intermediate_size=1536),           # ~29M params
    # Qwen3-0.6B's shape (the "~0.5B Qwen3 config" for the GPU figures): ~596M params with the table
    "0.6b": dict(vocab_size=151936, hidden_size=1024, num_hidden_layers=28, num_attention_heads=16,
                 num_key_value_heads=8, head_dim=128, intermediate_size=3072),
}


def hf_qwen3(size: str, seed: int = 0):
    """A random transformers Qwen3ForCausalLM (float32, eval mode, tied embeddings)."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    if size not in SIZES:
        raise SystemExit(f"unknown --size {size!r}; choose from {sorted(SIZES)}")
    torch.manual_seed(seed)
    conf = Qwen3Config(**SIZES[size], tie_word_embeddings=True, max_position_embeddings=16384,
                       rope_theta=1e6, torch_dtype="float32", attn_implementation="sdpa")
    return Qwen3ForCausalLM(conf).eval()


def random_ours(size: str, seed: int = 0, **overrides):
    """(ModelConfig, params) of SIZES[size] initialised by orchestra_jax itself (jitted, on the default device):
    for sizes too large to build in torch and copy through numpy quickly. Overrides set ModelConfig fields."""
    import jax

    from orchestra_jax.model import init_params
    from orchestra_jax.model.hf import config_from_hf

    cfg = config_from_hf({"model_type": "qwen3", **SIZES[size], "tie_word_embeddings": True, "rope_theta": 1e6},
                         **overrides)
    return cfg, jax.jit(init_params, static_argnums=0)(cfg, jax.random.PRNGKey(seed))


def ours_from_hf(model, **overrides):
    """(ModelConfig, params) with exactly the torch model's weights."""
    from orchestra_jax.model.hf import config_from_hf, params_from_hf

    cfg = config_from_hf(model.config.to_dict(), **overrides)
    tensors = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    return cfg, params_from_hf(cfg, tensors)


def count_params(params) -> int:
    import jax
    return int(sum(x.size for x in jax.tree.leaves(params)))


def timed(fn, reps: int):
    """Seconds per call of fn() (which must block until done), the median of reps calls."""
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def machine() -> str:
    import jax
    load = os.getloadavg()[0]  # shared machines: a high load makes absolute times meaningless, ratios noisy
    return (f"{platform.machine()} {os.cpu_count()} cpus (load {load:.1f}), jax {jax.__version__} on "
            f"{jax.default_backend()}")


def emit(result: dict) -> None:
    """Print the benchmark's one JSON object."""
    result = {"machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), **result}
    print(json.dumps(result, sort_keys=False))


def load_policy(cfg, env, sft_from: str):
    """(tokenizer, model_cfg, params): a finished quickstart run's SFT weights, or random weights."""
    from orchestra_jax.prepare import init_model
    from orchestra_jax.text.chat import render_prompt
    from orchestra_jax.text.tokenizer import load_tokenizer, train_tokenizer

    if not sft_from:
        _, prompts = env.reset(env.sample_tasks(0, 64), 0)
        tok = train_tokenizer([render_prompt(p["messages"], p["tools"], tools_format="compact") for p in prompts],
                              cfg.tokenizer_vocab_size)
        model_cfg, params, _ = init_model(cfg, tok)
        return tok, model_cfg, params
    from orchestra_jax.checkpoint import Checkpointer

    if not os.path.isdir(os.path.join(sft_from, "sft")):
        raise SystemExit(f"--sft-from {sft_from}: no sft/ checkpoint there (a finished quickstart run dir?)")
    tok = load_tokenizer(os.path.join(sft_from, "tokenizer"))
    model_cfg, params, _ = init_model(cfg, tok)
    ckpt = Checkpointer(os.path.join(sft_from, "sft"), keep=1, async_save=False)
    params = ckpt.restore(None, {"params": params})[0]["params"]
    ckpt.close()
    return tok, model_cfg, params
