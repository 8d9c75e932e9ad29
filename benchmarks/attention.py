"""Packed-row attention, forward + backward: the dense xla path vs block_sparse (skips masked blocks).

    python benchmarks/attention.py [--rows 8 --row-len 1536 --prompt 300 --group 8 --continuation 100 --reps 5]
                                   [--blocks 64,128]

Two layouts of the quickstart's head shape (4 query heads, 2 key/value heads of 32): `shared`, rows of
prefix-shared groups as GRPO packs them (a prompt segment, `group` continuations that see it, then
padding), and `causal`, one segment filling each row (the worst case for skipping: only the upper
triangle goes). Prints per layout the seconds per jitted grad of sum(out * w) for each backend, the
speed-up, the share of (query block, key block) pairs block_sparse computes, and the largest difference
of the outputs and gradients (float32). --blocks also times block_sparse at each of these block sizes,
alternated in the same process (`block_sparse_s_by_block`; the block-size choice of BLOCK).
"""
import argparse

from _common import emit, timed


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--row-len", type=int, default=1536)
    ap.add_argument("--prompt", type=int, default=300)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--continuation", type=int, default=100)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--blocks", default="", help="comma-separated block sizes to time block_sparse at as well")
    args = ap.parse_args(argv)

    import jax
    import jax.numpy as jnp
    import numpy as np

    from orchestra_jax.model.attention import packed_attention
    from orchestra_jax.model.block_sparse_attention import BLOCK, block_flags, block_sparse_attention

    length = args.row_len
    blocks = [int(b) for b in args.blocks.split(",") if b]
    for block in [BLOCK] + blocks:
        if block <= 0 or length % block:
            raise SystemExit(f"--row-len {length} must be a multiple of every block size; got block {block}")
    seg = np.zeros((args.rows, length), np.int32)
    pre = np.zeros((args.rows, length), np.int32)
    group_len = min(args.prompt + args.group * args.continuation, length)
    seg[:, :args.prompt] = 1
    for c in range(args.group):
        start = args.prompt + c * args.continuation
        seg[:, start:min(start + args.continuation, group_len)] = 2 + c
    pre[:, args.prompt:group_len] = 1
    layouts = {"shared": (jnp.asarray(seg), jnp.asarray(pre)),
               "causal": (jnp.ones((args.rows, length), jnp.int32), None)}

    keys = jax.random.split(jax.random.key(0), 4)
    q = jax.random.normal(keys[0], (args.rows, length, 4, 32))
    k = jax.random.normal(keys[1], (args.rows, length, 2, 32))
    v = jax.random.normal(keys[2], (args.rows, length, 2, 32))
    w = jax.random.normal(keys[3], q.shape)

    def grad_step(attend):
        """Jitted (grads of sum(attend(q, k, v) * w), the output), compiled by a first call."""
        def loss(q, k, v):
            o = attend(q, k, v)
            return jnp.sum(o * w), o
        step = jax.jit(jax.grad(loss, argnums=(0, 1, 2), has_aux=True))
        jax.block_until_ready(step(q, k, v))
        return step

    out = {"benchmark": "attention", "rows": args.rows, "row_len": length, "block": BLOCK}
    for name, (seg_BT, pre_BT) in layouts.items():
        results = {}
        for backend in ("xla", "block_sparse"):
            step = grad_step(lambda q, k, v, backend=backend: packed_attention(q, k, v, seg_BT, backend, pre_BT))
            grads, o = jax.block_until_ready(step(q, k, v))
            seconds = timed(lambda: jax.block_until_ready(step(q, k, v)), args.reps)
            results[backend] = (seconds, o, grads)
        (t_x, o_x, g_x), (t_s, o_s, g_s) = results["xla"], results["block_sparse"]
        flags = block_flags(seg_BT, pre_BT, BLOCK)
        n = length // BLOCK
        out[name] = {"xla_s": t_x, "block_sparse_s": t_s, "speedup": t_x / t_s,
                     "pairs_computed": float(flags.sum()) / (args.rows * n * n),
                     "max_out_diff": float(jnp.max(jnp.abs(o_x - o_s))),
                     "max_grad_diff": max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(g_x, g_s))}
        if blocks:
            steps = {block: grad_step(lambda q, k, v, block=block: block_sparse_attention(q, k, v, seg_BT, pre_BT,
                                                                                         block=block))
                     for block in blocks}
            times = {block: [] for block in blocks}
            for _ in range(args.reps):  # alternated: each block size sees the same machine load
                for block, step_b in steps.items():
                    times[block].append(timed(lambda: jax.block_until_ready(step_b(q, k, v)), 1))
            out[name]["block_sparse_s_by_block"] = {str(b): float(np.median(t)) for b, t in times.items()}
    emit(out)


if __name__ == "__main__":
    main()
