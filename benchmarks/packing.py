"""Packing: packed vs padded on jagged lengths, and prefix-shared vs unshared groups on quickstart-like rollouts.

    python benchmarks/packing.py [--sequences 512 --tasks 8 --group 8 --row-len 1024 --reps 3 --size tiny]

1. Jagged: lengths 50..12,000 with a heavy (Pareto) tail; padded = one sequence per row padded to the
   longest; packed = first-fit-decreasing into rows of 12,288. Reports utilisation and tokens computed.
2. Groups: --tasks groups of --group episodes, each a ~300-token prompt shared by the group plus its own
   ~60-token continuation (sampled + tool tokens; the quickstart's measured shape, see issue 12), packed
   unshared (`pack`) vs shared (`pack_shared`, and without its gap filling) into rows of --row-len. Reports
   tokens computed, rows,
   utilisation, and the time of a jitted forward+backward of the log-prob loss on both packings (same
   model, alternated), plus the max difference of the per-episode log-probs (must be ~1e-6).
"""
import argparse

from _common import emit, timed


def jagged_lengths(rng, n):
    import numpy as np
    return np.clip((50 * (1 + rng.pareto(1.1, n))).astype(int), 50, 12_000)


def quickstart_groups(rng, tasks, group, vocab, prompt=(280, 320), cont=(40, 90)):
    import numpy as np
    seqs, gids, masks = [], [], []
    for t in range(tasks):
        p = rng.integers(1, vocab, int(rng.integers(*prompt)))
        for _ in range(group):
            c = rng.integers(1, vocab, int(rng.integers(*cont)))
            seqs.append(np.r_[p, c].astype(np.int32))
            gids.append(t)
            masks.append(np.r_[np.zeros(len(p)), np.ones(len(c))].astype(np.float32))
    return seqs, gids, masks


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--sequences", type=int, default=512)
    ap.add_argument("--tasks", type=int, default=8)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--row-len", type=int, default=1024)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--size", default="tiny")
    args = ap.parse_args(argv)

    import jax
    import jax.numpy as jnp
    import numpy as np

    from _common import hf_qwen3, ours_from_hf
    from orchestra_jax.data.packing import pack
    from orchestra_jax.data.shared_packing import pack_shared
    from orchestra_jax.model import token_logprobs

    rng = np.random.default_rng(0)
    lengths = jagged_lengths(rng, args.sequences)
    packed = pack([np.ones(n, np.int32) for n in lengths], 12_288)
    padded_tokens = len(lengths) * int(lengths.max())
    jagged = {"sequences": len(lengths), "min_len": int(lengths.min()), "median_len": int(np.median(lengths)),
              "max_len": int(lengths.max()), "padded_utilisation": float(lengths.sum() / padded_tokens),
              "packed_utilisation": packed.utilisation, "packed_rows": packed.num_rows,
              "padded_over_packed_tokens": padded_tokens / (packed.num_rows * packed.row_len)}

    cfg, params = ours_from_hf(hf_qwen3(args.size))
    seqs, gids, masks = quickstart_groups(rng, args.tasks, args.group, cfg.vocab_size)
    plain = pack(seqs, args.row_len, fields={"loss_mask": masks})
    shared = pack_shared(seqs, gids, args.row_len, fields={"loss_mask": masks})
    whole = pack_shared(seqs, gids, args.row_len, fields={"loss_mask": masks}, fill_gaps=False)

    def loss_fn(is_shared):
        def loss(p, b):
            logp, _ = token_logprobs(cfg, p, b["tokens"], b["positions"], b["segment_ids"],
                                     b["prefix_segment_ids"] if is_shared else None,
                                     b["prev_index"] if is_shared else None, with_entropy=False)
            return jnp.sum(logp * b["loss_mask"]) / jnp.sum(b["loss_mask"]), logp
        return jax.jit(jax.value_and_grad(loss, has_aux=True))

    runs = {}
    for name, batch, is_shared in (("unshared", plain, False), ("shared", shared, True)):
        b = {k: jnp.asarray(v) for k, v in batch.as_dict().items()}
        f = loss_fn(is_shared)
        (_, logp), _ = jax.block_until_ready(f(params, b))  # compile
        runs[name] = (f, b, batch.unpack(np.asarray(logp)))
    times = {"unshared": [], "shared": []}
    for _ in range(args.reps):
        for name in times:
            f, b, _ = runs[name]
            times[name].append(timed(lambda: jax.block_until_ready(f(params, b)), 1))
    diff = max(float(np.abs(a - c).max()) for a, c in zip(runs["unshared"][2], runs["shared"][2]))
    t_u, t_s = float(np.median(times["unshared"])), float(np.median(times["shared"]))
    groups = {"tasks": args.tasks, "group": args.group, "row_len": args.row_len,
              "episode_tokens": plain.num_tokens, "shared_tokens": shared.num_tokens,
              "tokens_ratio": plain.num_tokens / shared.num_tokens,
              "unshared_rows": plain.num_rows, "shared_rows": shared.num_rows,
              "unshared_utilisation": plain.utilisation, "shared_utilisation": shared.utilisation,
              # without splitting groups to fill the gaps rows leave (pack_shared fill_gaps=False)
              "whole_group_rows": whole.num_rows, "whole_group_tokens": whole.num_tokens,
              "whole_group_utilisation": whole.utilisation,
              "unshared_step_s": t_u, "shared_step_s": t_s, "step_speedup": t_u / t_s,
              "max_logp_diff": diff, "model": args.size}
    emit({"benchmark": "packing", "jagged": jagged, "groups": groups,
          "targets": {"tokens_ratio": 3.0, "shared_utilisation": 0.95}})


if __name__ == "__main__":
    main()
