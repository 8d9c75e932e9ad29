"""Throughput of the GRPO loop's parts on the current backend: rollout (sampling + env), log-probs, update.

    python benchmarks/grpo_throughput.py [--steps 3] [--tasks 8] [--group 8] [--sft-from RUN_DIR] [KEY=VALUE ...]

--sft-from: a finished quickstart run directory; its tokenizer and SFT checkpoint (RUN_DIR/sft) replace the
random weights, so the episodes have the quickstart's real lengths (random weights run to max_seq_len).

KEY=VALUE: config overrides on top of the quickstart (e.g. train.row_len=1536 train.rows_per_step=32
train.row_bucket=2 to time bucketed rows).

Prints one JSON object: tokens/s of the rollout (sampled tokens), of the update (packed real tokens per
second of jitted forward+backward+AdamW) and of the log-prob pass, plus packing utilisation, measured
after one warm-up step (compilation excluded), on the quickstart model and env with random weights.
"""
import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _common import emit  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--tasks", type=int, default=8)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--sft-from", default="", help="a quickstart run dir: its tokenizer and SFT params")
    ap.add_argument("overrides", nargs="*", help="config overrides (KEY=VALUE) on top of the quickstart")
    args = ap.parse_args(argv)

    import jax
    import numpy as np
    from hydra import compose, initialize_config_dir

    from orchestra_jax.config import to_config
    from orchestra_jax.envs import make_env
    from orchestra_jax.prepare import Prepared, init_model
    from orchestra_jax.rl.batch import build_batch, step_rows
    from orchestra_jax.rl.grpo import global_batch, init_state, rollout_tasks, token_slots
    from orchestra_jax.text.chat import render_prompt
    from orchestra_jax.text.tokenizer import train_tokenizer
    from orchestra_jax.train import build_mesh, make_setup

    conf = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "conf")
    with initialize_config_dir(config_dir=conf, version_base="1.3"):
        raw = compose(config_name="config", overrides=[
            "+experiment=quickstart", f"run_dir={tempfile.mkdtemp()}", f"train.tasks_per_step={args.tasks}",
            f"rollout.group_size={args.group}", "algo.ppo_epochs=2", *args.overrides])  # 2 epochs: the log-prob pass runs too
    cfg = to_config(raw)
    env = make_env(cfg.env)
    tasks = env.sample_tasks(0, args.tasks * (args.steps + 1))
    _, prompts = env.reset(tasks[:64], 0)
    if args.sft_from:
        from _common import load_policy

        tok, model_cfg, params = load_policy(cfg, env, args.sft_from)
    else:
        tok = train_tokenizer([render_prompt(p["messages"], p["tools"], tools_format="compact") for p in prompts],
                              cfg.tokenizer_vocab_size)
        model_cfg, params, _ = init_model(cfg, tok)
    setup = make_setup(cfg, Prepared(env, tok, model_cfg, params, "random", "", []), build_mesh(cfg))
    state = init_state(setup, params, seed=0)
    totals = {"rollout_s": 0.0, "sampled": 0, "logp_s": 0.0, "update_s": 0.0, "tokens": 0, "util": [], "rows": [],
              "slots": 0, "update_steps_s": []}
    for step in range(args.steps + 1):
        chunk = tasks[step * args.tasks:(step + 1) * args.tasks]
        t0 = time.perf_counter()
        ro = rollout_tasks(setup, state.params, chunk, jax.random.PRNGKey(step), seed=step, first_task=0)
        t1 = time.perf_counter()
        # random-sign advantages so the update does real work even when every reward ties
        adv = np.random.default_rng(step).normal(size=ro.num_episodes).astype(np.float32)
        keep = np.ones(ro.num_episodes, bool)
        backend = setup.model_cfg.attention_backend
        rows = step_rows(ro, keep, setup.step, attention_backend=backend)
        packed, _ = build_batch(ro, adv, keep, setup.step, attention_backend=backend, num_rows=rows)
        buckets = global_batch(setup, packed)  # a list of buckets with train.row_bucket (the quickstart's)
        buckets = buckets if isinstance(buckets, list) else [buckets]
        t2 = time.perf_counter()
        for b in buckets:
            b["old_logp"], _ = setup.logprob(state.params, b)
        jax.block_until_ready([b["old_logp"] for b in buckets])
        t3 = time.perf_counter()
        params_, opt_state, m = setup.update(state.params, state.opt_state,
                                             buckets if setup.step.row_bucket else buckets[0], state.ref_params)
        jax.block_until_ready(m)
        state = state._replace(params=params_, opt_state=opt_state)
        t4 = time.perf_counter()
        if step == 0:
            continue  # warm-up: compilation
        totals["rollout_s"] += t1 - t0
        totals["sampled"] += int(np.sum(ro.turn_new_tokens))
        totals["logp_s"] += t3 - t2
        totals["update_s"] += t4 - t3
        totals["update_steps_s"].append(t4 - t3)
        totals["tokens"] += packed.num_tokens
        slots = token_slots(buckets)  # train.short_row_lens: fewer than rows x row_len
        totals["util"].append(packed.num_tokens / slots)
        totals["rows"].append(packed.num_rows)
        totals["slots"] += slots
    emit({
        "benchmark": "grpo_throughput", "backend": jax.default_backend(), "devices": jax.device_count(),
        "episodes_per_step": args.tasks * args.group, "steps": args.steps,
        "rollout_sampled_tokens_per_s": totals["sampled"] / totals["rollout_s"],
        "rollout_s_per_step": totals["rollout_s"] / args.steps,
        "logprob_tokens_per_s": totals["tokens"] / totals["logp_s"],
        "update_tokens_per_s": totals["tokens"] / totals["update_s"],
        "update_s_per_step": totals["update_s"] / args.steps,
        # a step whose row count is new compiles its update inside the timing: the median skips a few
        "update_s_median": float(np.median(totals["update_steps_s"])), "update_steps_s": totals["update_steps_s"],
        "packing_utilisation": float(np.mean(totals["util"])),
        "rows_per_step": totals["rows"], "row_len": setup.step.row_len, "row_bucket": setup.step.row_bucket,
        "token_slots_per_step": totals["slots"] / args.steps, "overrides": args.overrides,
        "weights": f"sft from {args.sft_from}" if args.sft_from else "random",
        "update_compiles": setup.update.num_compiled, "loss_positions": setup.step.loss_positions,
        "short_row_lens": list(setup.step.short_row_lens),
    })


if __name__ == "__main__":
    main()
