"""Tokens processed per episode: one packed sequence vs one training sample per turn with the context re-encoded.

    python benchmarks/episode_vs_turn.py [--episodes 1000 --prompt 300 --turns 1,4 --sampled 8,20 --obs 5,25]

Episodes are drawn with the quickstart's shape (issue 12: a ~300-token prompt, ~34 sampled and ~28 tool
tokens per episode over a few turns): turn i samples s_i tokens, then (except after the last turn) the
environment appends o_i observation tokens. One packed sequence processes P + sum(s_i + o_i) tokens; the
released code's per-turn samples process sum_i (P + sum_{j<i} (s_j + o_j) + s_i). Host-side arithmetic only;
also reports the ratio of the dense attention cost (sum of squared lengths).
"""
import argparse

from _common import emit


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--episodes", type=int, default=1000)
    ap.add_argument("--prompt", type=int, default=300)
    ap.add_argument("--turns", default="1,4", help="min,max turns per episode (uniform)")
    ap.add_argument("--sampled", default="8,20", help="min,max sampled tokens per turn")
    ap.add_argument("--obs", default="5,25", help="min,max observation tokens after a non-final turn")
    args = ap.parse_args(argv)

    import numpy as np

    rng = np.random.default_rng(0)
    lo_t, hi_t = map(int, args.turns.split(","))
    lo_s, hi_s = map(int, args.sampled.split(","))
    lo_o, hi_o = map(int, args.obs.split(","))
    packed, per_turn, packed_sq, per_turn_sq, turns_total = 0, 0, 0, 0, 0
    for _ in range(args.episodes):
        turns = int(rng.integers(lo_t, hi_t + 1))
        context = args.prompt
        for i in range(turns):
            s = int(rng.integers(lo_s, hi_s + 1))
            per_turn += context + s
            per_turn_sq += (context + s) ** 2
            context += s
            if i < turns - 1:
                context += int(rng.integers(lo_o, hi_o + 1))
        packed += context
        packed_sq += context ** 2
        turns_total += turns
    emit({"benchmark": "episode_vs_turn", "episodes": args.episodes, "prompt": args.prompt,
          "mean_turns": turns_total / args.episodes, "packed_tokens_per_episode": packed / args.episodes,
          "per_turn_tokens_per_episode": per_turn / args.episodes, "tokens_ratio": per_turn / packed,
          "attention_cost_ratio": per_turn_sq / packed_sq})


if __name__ == "__main__":
    main()
