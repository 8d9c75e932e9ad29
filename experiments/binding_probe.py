"""Can a policy of the quickstart's shape learn to bind a slot number to its menu line at all?

    python experiments/binding_probe.py [--extra 0] [--lr 1e-3] [--steps 1000] [--examples 4000] [--layout first]
                                        [--warm-steps 0] [--layers 2] [--hidden 128] [--aux-copy 0]
                                        [--induction-steps 0] [--induction-task recall] [--induction-mix 0]

A synthetic menu with the QA prompt's structure and none of its noise: five lines ``M <digit> : <attrs> NL``
(``--layout last``: ``<attrs> : M <digit> NL``; ``--layout each``: ``M <digit> : <digit> <attr> <digit> <attr> ... NL``,
the digit repeated before every attribute; ``--layout after``: ``M <digit> : <attr> <digit> <attr> <digit> ... NL``),
each holding one key token no other line has among ``--extra`` random other attributes, then ``Q <key> ->``
(``after``: ``Q -> <key>``, so the answer is the token that followed the key: an induction lookup) and the
target: that line's digit. Behaviour cloning with the
quickstart's SFT (orchestra_jax.sft.train_sft, the quickstart model shape, 16 rows of 8 examples per step);
prints one JSON line per log step with the held-out (256 fresh menus) ``sft/val_action_match``: 0.2 is
chance, 1 is binding learned. ``--warm-steps N`` is a curriculum: N steps on one-attribute lines
(``--extra 0``, fresh menus) first, then ``--steps`` on the ``--extra`` lines from those weights (stage 2's
optimiser starts afresh, with its own warm-up). ``--aux-copy F`` adds F x --examples auxiliary menus whose
query is a digit and whose targets are that line's attributes (the reverse lookup, every token a target: a
dense signal for the same line-to-digit binding; the held-out match still scores the digit task only).
``--induction-steps N`` first trains N steps on a dense associative-recall task (``induction_example``: key
value pairs, then every key again with its value as a target), then the menus from those weights;
``--induction-mix F`` keeps F x --examples of those examples among the menus (the held-out match scores the
menus only). ``--induction-task repeat`` uses a run of 20 attributes repeated instead (``repeat_example``).
The first stage's lines report that task's own held-out match (each recalled value, or each whole repeated
run, counts as one action).
"""
import argparse
import json
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from orchestra_jax.copy_warmup import copying_examples  # noqa: E402
from orchestra_jax.model import ModelConfig, init_params  # noqa: E402
from orchestra_jax.sft import train_sft  # noqa: E402

VOCAB, M, COLON, NL, Q, ARROW, DIGIT, FIRST_ATTR = 64, 1, 2, 3, 4, 5, 6, 11  # digits 6..10, attributes 11..63
Q_LINE = VOCAB  # the auxiliary query "which line has this digit" (--aux-copy); the model's vocabulary is VOCAB + 1


def menu_example(rng: np.random.Generator, layout: str, extra: int, copy: bool = False
                 ) -> tuple[np.ndarray, np.ndarray]:
    """copy: the auxiliary task instead (--aux-copy): ``Q_LINE <digit> ->`` then that line's attributes, every
    one a target (the reverse lookup, with a dense loss)."""
    keys = rng.choice(np.arange(FIRST_ATTR, VOCAB), 5, replace=False)
    others = np.setdiff1d(np.arange(FIRST_ATTR, VOCAB), keys)
    tokens, lines = [], []
    for k in range(5):
        attrs = list(rng.choice(others, extra))
        attrs.insert(int(rng.integers(0, extra + 1)), keys[k])
        lines.append(attrs)
        if layout == "first":
            tokens += [M, DIGIT + k, COLON] + attrs + [NL]
        elif layout == "last":
            tokens += attrs + [COLON, M, DIGIT + k, NL]
        else:  # each / after: the digit right before / after every attribute
            pairs = [(DIGIT + k, a) if layout == "each" else (a, DIGIT + k) for a in attrs]
            tokens += [M, DIGIT + k, COLON] + [t for pair in pairs for t in pair] + [NL]
    j = int(rng.integers(0, 5))
    if copy:
        tokens += [Q_LINE, DIGIT + j, ARROW]
        return (np.asarray(tokens + lines[j], np.int32),
                np.asarray([0] * len(tokens) + [1] * len(lines[j]), np.int32))
    query = [Q, ARROW, keys[j]] if layout == "after" else [Q, keys[j], ARROW]
    tokens += query + [DIGIT + j]
    return np.asarray(tokens, np.int32), np.asarray([0] * (len(tokens) - 1) + [1], np.int32)


def induction_example(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Associative recall with dense targets: 4-12 pairs ``key value`` (distinct attribute keys, digit or
    attribute values), NL, then every key again in a random order, each followed by its value (the target).
    A query's key generally follows another token than in the pairs, so matching the key itself finds it:
    the lookup the ``after`` menus ask for, with a target per query instead of one per menu."""
    n = int(rng.integers(4, 13))
    keys = rng.choice(np.arange(FIRST_ATTR, VOCAB), n, replace=False)
    values = rng.integers(DIGIT, VOCAB, n)
    order = rng.permutation(n)
    tokens = [t for k, v in zip(keys, values) for t in (k, v)] + [NL]
    tokens += [t for i in order for t in (keys[i], values[i])]
    return np.asarray(tokens, np.int32), np.asarray([0] * (2 * n + 1) + [0, 1] * n, np.int32)


def repeat_example(rng: np.random.Generator, n: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """``--induction-task repeat``: n random attributes, NL, the same n again, every repeated token a target
    (a fixed look-back of n + 1 tokens solves it as well as matching content does)."""
    return copying_examples(rng, range(FIRST_ATTR, VOCAB), NL, 1, run_len=n)[0]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layout", choices=("first", "last", "each", "after"), default="first")
    ap.add_argument("--extra", type=int, default=0, help="other attributes per line")
    ap.add_argument("--examples", type=int, default=4000, help="training menus")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--lr", type=float, default=1e-3, help="peak SFT learning rate (the quickstart's: 3e-3)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--warm-steps", type=int, default=0, help="curriculum: steps on --extra 0 lines first")
    ap.add_argument("--aux-copy", type=float, default=0.0,
                    help="add this fraction of auxiliary examples (a digit -> its line's attributes, all targets)")
    ap.add_argument("--layers", type=int, default=2, help="decoder layers (the quickstart's: 2)")
    ap.add_argument("--hidden", type=int, default=128, help="model width (the quickstart's: 128); heads of 32")
    ap.add_argument("--induction-steps", type=int, default=0, help="steps of the dense recall task first")
    ap.add_argument("--induction-task", choices=("recall", "repeat"), default="recall",
                    help="the dense task: associative recall, or a run of attributes repeated")
    ap.add_argument("--induction-mix", type=float, default=0.0,
                    help="this fraction of --examples recall examples kept among the menus")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    heads = args.hidden // 32  # the defaults are conf/model/quickstart.yaml's shape
    cfg = ModelConfig(vocab_size=VOCAB + (args.aux_copy > 0), hidden_size=args.hidden, num_layers=args.layers,
                      num_heads=heads, num_kv_heads=max(heads // 2, 1), head_dim=32, intermediate_size=3 * args.hidden)
    params = jax.tree_util.tree_map(np.asarray, init_params(cfg, jax.random.PRNGKey(args.seed)))
    t0 = time.perf_counter()
    dense_example = induction_example if args.induction_task == "recall" else repeat_example
    stages = [("induction", None, args.induction_steps), ("warm", 0, args.warm_steps), ("main", args.extra, args.steps)]
    for stage, extra, steps in [s for s in stages if s[2] > 0]:
        if stage == "induction":
            irng = np.random.default_rng([args.seed, 1])  # its own stream: the menus stay those of the other commands
            train = [dense_example(irng) for _ in range(args.examples)]
            val = [dense_example(irng) for _ in range(256)]
            params, history = train_sft(cfg, params, train, steps=steps, batch_rows=16, row_len=80 * 8,
                                        learning_rate=args.lr, warmup_steps=20, weight_decay=0.01, grad_clip=1.0,
                                        seed=args.seed, log_every=max(steps // 4, 1), val_sequences=val,
                                        val_every=max(steps // 4, 1))
            params = jax.tree_util.tree_map(np.asarray, params)
            for h in history:
                print(json.dumps({**vars(args), "stage": stage, "step": h["step"], "sft/loss": round(h["sft/loss"], 4),
                                  "sft/val_action_match": round(h["sft/val_action_match"], 4)}), flush=True)
            continue
        train = [menu_example(rng, args.layout, extra) for _ in range(args.examples)]
        if args.aux_copy > 0:  # (without it the rng stream, hence every earlier command's menus, is unchanged)
            train += [menu_example(rng, args.layout, extra, copy=True)
                      for _ in range(int(args.aux_copy * args.examples))]
            train = [train[i] for i in rng.permutation(len(train))]
        if args.induction_mix > 0 and stage == "main":
            mrng = np.random.default_rng([args.seed, 2])
            train += [dense_example(mrng) for _ in range(int(args.induction_mix * args.examples))]
            train = [train[i] for i in mrng.permutation(len(train))]
        val = [menu_example(rng, args.layout, extra) for _ in range(256)]
        every = max(steps // 8, 1)
        row_len = max(max(len(t) for t, _ in train), 80 if args.induction_mix > 0 else 0) * 8
        params, history = train_sft(cfg, params, train, steps=steps, batch_rows=16, row_len=row_len,
                                    learning_rate=args.lr, warmup_steps=20, weight_decay=0.01, grad_clip=1.0,
                                    seed=args.seed, log_every=every, val_sequences=val, val_every=every)
        params = jax.tree_util.tree_map(np.asarray, params)
        for h in history:
            print(json.dumps({**vars(args), "stage": stage, "stage_extra": extra, "step": h["step"],
                              "sft/loss": round(h["sft/loss"], 4),
                              "sft/val_action_match": round(h["sft/val_action_match"], 4)}), flush=True)
    print(json.dumps({"seconds": round(time.perf_counter() - t0, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
