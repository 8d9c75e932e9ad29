"""One decode step of the quickstart's sampler, by the cache read's window step and sampling mode.

    python benchmarks/decode_step.py [--rows 64] [--cache 720] [--filled 64,300,600] [--new 40]
                                     [--window-steps 720,256,128,64] [--reps 3]

The quickstart's model shape (random weights, vocab 2048), --rows cache rows of --cache slots prefilled to
each --filled length, then --new tokens decoded greedily; per window step of the cached attention (the
windows it chooses from are the multiples of the step, then the whole cache: `cached_attention.WINDOW_STEP`
for this run; a step >= the cache reads the whole cache every time) the median milliseconds per decode step;
then at the sampler's own windows, per step greedy vs temperature 1 (the rollout's sampling). Prints one
JSON object.
"""
import argparse

from _common import emit, timed


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--cache", type=int, default=720)
    ap.add_argument("--filled", default="64,300,600")
    ap.add_argument("--new", type=int, default=40)
    ap.add_argument("--window-steps", default="720,256,128,64")
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
    steps = [int(b) for b in args.window_steps.split(",")]

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
    by_step, platform = {}, (attention.WINDOW_STEP, attention.MAX_WINDOWS)
    try:
        for step in steps:
            attention.WINDOW_STEP, attention.MAX_WINDOWS = step, 10**9  # exactly this step
            sampling.clear_compile_caches()
            by_step[str(step)] = {str(f): ms_per_step(f, greedy) for f in filled}
    finally:
        attention.WINDOW_STEP, attention.MAX_WINDOWS = platform
        sampling.clear_compile_caches()
    modes = {name: {str(f): ms_per_step(f, scfg) for f in filled} for name, scfg in (("greedy", greedy),
                                                                                       ("temperature_1", sampled))}
    emit({"benchmark": "decode_step", "rows": args.rows, "cache_slots": args.cache, "new_tokens": args.new,
          "reps": args.reps, "windows": list(attention.cache_windows(args.cache)),
          "ms_per_step_by_window_step": by_step, "ms_per_step_by_mode": modes})


if __name__ == "__main__":
    main()
