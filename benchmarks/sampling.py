"""Greedy sampling: orchestra_jax prefill + decode vs transformers.generate on the same weights.

    python benchmarks/sampling.py --size tiny|29m [--batch 32 --prompt 64 --new 64 --reps 3]

Both sides generate exactly --new tokens per row (no stop ids; transformers with min_new_tokens) from the
same random prompts; the runs alternate (ours, theirs, ours, ...) after one untimed warm-up each. Prints
one JSON object: tokens/s of each side, their ratio and whether the greedy ids are equal.

Beside the ratio: our time split into prefill and decode (``ours_prefill_s``, ``ours_decode_ms_per_step``) and
``decode_matmul_floor_ms_per_step``, one decode step's matmuls alone (every layer's projections and the
output head at the batch's rows, chained in one jitted loop: no attention, norms, cache writes or sampling),
so ``speedup_at_matmul_floor`` = transformers' time / (our prefill + new x that floor) bounds the ratio any
decode written with XLA's CPU matmuls could reach on this machine.

--dtype bfloat16 runs both sides in bf16 (weights, activations and our KV cache); greedy ids then need not
be equal (different kernels round differently and random weights give near-tied logits), so the share of
equal ids is printed beside. --torch-device auto puts transformers on the GPU when torch sees one.
"""
import argparse
import time

from _common import emit, hf_qwen3, ours_from_hf, timed, count_params


def matmul_floor_s(cfg, batch: int, steps: int, dtype: str, reps: int) -> float:
    """Seconds per decode step of the model's matmuls alone at ``batch`` rows (see the module docstring)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    d, q, kv, f = cfg.hidden_size, cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim, cfg.intermediate_size
    rng = np.random.default_rng(0)

    def w(*shape):
        return jnp.asarray(rng.standard_normal(shape, np.float32) / np.sqrt(shape[0]), dtype)
    layers = [dict(q=w(d, q), k=w(d, kv), v=w(d, kv), o=w(q, d), gate=w(d, f), up=w(d, f), down=w(f, d))
              for _ in range(cfg.num_layers)]
    head_VD = w(cfg.vocab_size, d)

    def step(x_BD, layers, head_VD):
        for p in layers:  # each product feeds the next, so none can be skipped or hoisted
            kv_BQ = jnp.tile((x_BD @ p["k"]) * (x_BD @ p["v"]), (1, q // kv))  # stands in for attention
            x_BD = x_BD + (x_BD @ p["q"] + kv_BQ) @ p["o"]
            x_BD = x_BD + ((x_BD @ p["gate"]) * (x_BD @ p["up"])) @ p["down"]
        logits_BV = jnp.einsum("bd,vd->bv", x_BD, head_VD)
        return x_BD * 1e-3 + logits_BV[:, :1]

    @jax.jit
    def run(x_BD, layers, head_VD):
        return jax.lax.fori_loop(0, steps, lambda _, x: step(x, layers, head_VD), x_BD)

    x_BD = jnp.ones((batch, d), dtype)
    want = 2 * batch * (cfg.num_layers * (2 * d * q + 2 * d * kv + 3 * d * f) + d * cfg.vocab_size)
    got = jax.jit(step).lower(x_BD, layers, head_VD).compile().cost_analysis().get("flops", want)
    if got < want:  # XLA must not have dropped a product as dead code
        raise RuntimeError(f"matmul floor: the compiled step has {got:.3g} FLOPs, its matmuls {want:.3g}")
    jax.block_until_ready(run(x_BD, layers, head_VD))
    return timed(lambda: jax.block_until_ready(run(x_BD, layers, head_VD)), reps) / steps


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="tiny")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--torch-threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    ap.add_argument("--torch-device", default="auto", help="auto (cuda when torch sees a GPU) | cpu | cuda")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--scan-layers", action="store_true", help="our layers under nn.scan (stacked KV cache)")
    args = ap.parse_args(argv)

    import jax
    import numpy as np
    import torch

    from orchestra_jax.model import init_cache, stack_layer_params
    from orchestra_jax.model.sampling import SamplingConfig, decode, prefill

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    device = args.torch_device if args.torch_device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    model = hf_qwen3(args.size)
    cfg, params = ours_from_hf(model, dtype=args.dtype, param_dtype=args.dtype, scan_layers=args.scan_layers)
    if args.scan_layers:
        params = stack_layer_params(params, cfg.num_layers)
    model = model.to(device=device, dtype=getattr(torch, args.dtype))
    rng = np.random.default_rng(0)
    prompts = rng.integers(1, cfg.vocab_size, (args.batch, args.prompt)).astype(np.int32)
    scfg = SamplingConfig(greedy=True, max_new_tokens=args.new)
    num_new = np.full(args.batch, args.prompt, np.int32)
    active = np.ones(args.batch, bool)

    split = {"prefill": [], "decode": []}

    def ours():
        cache = init_cache(cfg, args.batch, args.prompt + args.new)
        t0 = time.perf_counter()
        last, cache = prefill(cfg, params, cache, prompts, num_new)
        jax.block_until_ready(last)
        t1 = time.perf_counter()
        out = decode(cfg, params, cache, last, jax.random.key(0), active, [], scfg)
        ids = np.asarray(jax.block_until_ready(out.tokens_BN))
        split["prefill"].append(t1 - t0)
        split["decode"].append(time.perf_counter() - t1)
        return ids

    ids_t = torch.as_tensor(prompts, dtype=torch.long, device=device)

    def theirs():
        with torch.no_grad():
            out = model.generate(ids_t, attention_mask=torch.ones_like(ids_t), do_sample=False,
                                 max_new_tokens=args.new, min_new_tokens=args.new, eos_token_id=None,
                                 pad_token_id=0)
        return out[:, args.prompt:].cpu().numpy()  # .cpu() waits for the GPU

    ours_ids, their_ids = ours(), theirs()  # warm-up (compilation), and the ids to compare
    t_ours, t_theirs = [], []
    for _ in range(args.reps):
        t_ours.append(timed(ours, 1))
        t_theirs.append(timed(theirs, 1))
    tokens = args.batch * args.new
    s_ours, s_theirs = float(np.median(t_ours)), float(np.median(t_theirs))
    prefill_s, decode_s = (float(np.median(split[k][1:])) for k in ("prefill", "decode"))  # [0]: the warm-up
    floor_s = matmul_floor_s(cfg, args.batch, args.new, args.dtype, max(args.reps, 3))
    emit({"benchmark": "sampling", "size": args.size, "params": count_params(params), "batch": args.batch,
          "prompt": args.prompt, "new_tokens": args.new, "reps": args.reps,
          "torch_threads": torch.get_num_threads(), "torch_device": device, "dtype": args.dtype,
          "scan_layers": args.scan_layers,
          "orchestra_jax_tokens_per_s": tokens / s_ours, "transformers_tokens_per_s": tokens / s_theirs,
          "speedup": s_theirs / s_ours, "ids_equal": bool(np.array_equal(ours_ids, their_ids)),
          "ids_equal_share": float(np.mean(ours_ids == their_ids)),
          "ours_prefill_s": prefill_s, "ours_decode_ms_per_step": 1e3 * decode_s / args.new,
          "decode_matmul_floor_ms_per_step": 1e3 * floor_s,
          "speedup_at_matmul_floor": s_theirs / (prefill_s + args.new * floor_s),
          "target_speedup": 3.0 if args.size == "tiny" else 2.0})


if __name__ == "__main__":
    main()
