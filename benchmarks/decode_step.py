"""One decode step of the quickstart's sampler, by cache block size and sampling mode.

    python benchmarks/decode_step.py [--rows 64] [--cache 720] [--filled 64,300,600] [--new 40]
                                     [--blocks 256,128,64,32] [--reps 3]

The quickstart's model shape (random weights, vocab 2048), --rows cache rows of --cache slots prefilled to
each --filled length, then --new tokens decoded greedily; per block size of the cached attention (the
sampler's `KV_BLOCKS` for this run) the median milliseconds per decode step; then at the platform's own
block size, per step greedy vs temperature 1 (the rollout's sampling). Prints one JSON object.
"""
import argparse

from _common import emit, timed


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--cache", type=int, default=720)
    ap.add_argument("--filled", default="64,300,600")
    ap.add_argument("--new", type=int, default=40)
    ap.add_argument("--blocks", default="256,128,64,32")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--vocab", type=int, default=2048)
    args = ap.parse_args(argv)

    import jax
    import numpy as np

    import orchestra_jax.model.cached_attention as attention
    from orchestra_jax.model import ModelConfig, init_cache, init_params
    from orchestra_jax.model import sampling

    cfg = ModelConfig(vocab_size=args.vocab, hidden_size=128, num_layers=2, num_heads=4, num_kv_heads=2,
                      head_dim=32, intermediate_size=384)  # conf/model/quickstart.yaml
    params = init_params(cfg, jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    filled = [int(f) for f in args.filled.split(",")]
    blocks = [int(b) for b in args.blocks.split(",")]

    def ms_per_step(fill, scfg):
        prompts = rng.integers(1, cfg.vocab_size, (args.rows, fill)).astype(np.int32)
        cache = init_cache(cfg, args.rows, args.cache)
        last, cache = sampling.prefill(cfg, params, cache, prompts, np.full(args.rows, fill, np.int32))
        active = np.ones(args.rows, bool)

        def once():
            out = sampling.decode(cfg, params, cache, last, jax.random.key(0), active, [], scfg)
            jax.block_until_ready(out.tokens_BN)

        once()  # compile
        return 1000 * timed(once, args.reps) / args.new

    greedy = sampling.SamplingConfig(greedy=True, max_new_tokens=args.new)
    sampled = sampling.SamplingConfig(temperature=1.0, max_new_tokens=args.new)
    by_block, platform_blocks = {}, (attention.KV_BLOCKS, attention.CPU_KV_BLOCKS)
    try:
        for block in blocks:
            attention.KV_BLOCKS = attention.CPU_KV_BLOCKS = (block,)
            sampling.clear_compile_caches()
            by_block[str(block)] = {str(f): ms_per_step(f, greedy) for f in filled}
    finally:
        attention.KV_BLOCKS, attention.CPU_KV_BLOCKS = platform_blocks
        sampling.clear_compile_caches()
    modes = {name: {str(f): ms_per_step(f, scfg) for f in filled} for name, scfg in (("greedy", greedy),
                                                                                       ("temperature_1", sampled))}
    emit({"benchmark": "decode_step", "rows": args.rows, "cache_slots": args.cache, "new_tokens": args.new,
          "reps": args.reps, "platform_block": attention.kv_block_size(args.cache),
          "ms_per_step_by_block": by_block, "ms_per_step_by_mode": modes})


if __name__ == "__main__":
    main()
