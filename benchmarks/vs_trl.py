"""One GRPO step, orchestra_jax vs trl.GRPOTrainer, on trl's workload and the same tiny Qwen3 weights.

    python benchmarks/vs_trl.py [--side orchestra_jax|trl|both] [--size tiny | --model HF_DIR]
                                [--prompts 4 --group 8 --prompt-len 32 --completion 48 --steps 10]

Workload (both sides): P prompts x G samples, prompt --prompt-len tokens, completions forced to exactly
--completion tokens (no stop token; trl with min_new_tokens), temperature 1, a simple token reward (the share
of completion tokens with an even id), group-normalised advantages, beta 0.04 with the k3 KL to the initial
model, one PPO epoch (ratio 1, no separate old-log-prob pass, as trl), DAPO token-mean loss, AdamW, torch CPU
without vLLM and without gradient checkpointing. The first step is untimed (compilation / warm-up); prints
samples_per_s per side (P * G / median step time) and, with both, their ratio.

The orchestra_jax side is ONE function, `orchestra_jax_step`, composed of the training loop's pieces (group
prefill and decode as rl.rollout, pack_groups as rl.grpo.build_batch, rl.step's jitted update with the
reference log-probs inside it); not rl.grpo.grpo_step itself, which needs an environment.
"""
import argparse
import contextlib
import sys
import tempfile
import time

from _common import emit, hf_qwen3, ours_from_hf

BETA = 0.04


def token_reward(ids_GN):
    """Share of completion tokens with an even id (per sample)."""
    import numpy as np
    return (np.asarray(ids_GN) % 2 == 0).mean(axis=-1)


def group_advantages(rewards, group):
    import numpy as np
    r = np.asarray(rewards, np.float32).reshape(-1, group)
    return ((r - r.mean(1, keepdims=True)) / (r.std(1, ddof=1, keepdims=True) + 1e-4)).reshape(-1)  # as trl


def make_orchestra_jax_step(cfg, ref_params, prompts, group, completion, lr):
    """(init_state(params), step(state, key) -> (state, metrics)): the whole GRPO step behind one function,
    made of the training loop's pieces: group prefill + decode (as rl.rollout), pack_groups (as
    rl.grpo.build_batch, prompt once per group) and rl.step's jitted update (policy_loss, reference log-probs
    inside the update, the output head at the loss tokens only as with train.loss_positions)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from orchestra_jax.data.shared_packing import pack_groups
    from orchestra_jax.model import init_cache
    from orchestra_jax.model.sampling import SamplingConfig, decode, prefill_groups
    from orchestra_jax.rl.batch import loss_positions, max_loss_tokens_per_row
    from orchestra_jax.rl.losses import LossConfig
    from orchestra_jax.rl.optim import OptimConfig, make_optimizer
    from orchestra_jax.rl.step import AlgoConfig, make_update_fn

    num_p, prompt_len = prompts.shape
    scfg = SamplingConfig(temperature=1.0, max_new_tokens=completion)
    # trl's defaults: k3 KL (unclamped) in the loss, token mean over the batch (DAPO), AdamW, no weight
    # decay, gradient clipping at norm 1
    algo = AlgoConfig(loss=LossConfig(kl_coef=BETA, kl_estimator="k3", kl_clamp=None, aggregation="token_mean"),
                      optim=OptimConfig(lr=lr, weight_decay=0.0, grad_clip_norm=1.0))
    opt = make_optimizer(algo.optim)
    update = make_update_fn(cfg, algo, opt)
    row_len = prompt_len + group * completion  # one group per row, no padding (the kernel pads its blocks)

    def step(state, key):
        params, opt_state = state
        last, cache = prefill_groups(cfg, params, init_cache(cfg, num_p, prompt_len + completion), prompts,
                                     np.full(num_p, prompt_len, np.int32), group)
        out = decode(cfg, params, cache, last, key, np.ones(num_p * group, bool), [], scfg)
        ids = np.asarray(out.tokens_BN)
        adv = group_advantages(token_reward(ids), group)
        seqs = [np.r_[prompts[i // group], ids[i]] for i in range(num_p * group)]
        mask = [np.r_[np.zeros(prompt_len), np.ones(completion)].astype(np.float32)] * len(seqs)
        advs = [np.full(prompt_len + completion, a, np.float32) for a in adv]
        packed = pack_groups(seqs, [i // group for i in range(len(seqs))], row_len,
                             attention_backend=cfg.attention_backend, dtype=cfg.dtype,
                             fields={"loss_mask": mask, "advantages": advs}, num_rows=num_p)
        batch = packed.as_dict()
        # the output head at the completions only (train.loss_positions); completions are forced to full
        # length, so every step packs the same loss tokens per row (one program)
        width = max_loss_tokens_per_row(batch["loss_mask"], batch["segment_ids"])
        batch["loss_index"] = loss_positions(batch["loss_mask"], batch["segment_ids"], width)
        batch = {k: jnp.asarray(v) for k, v in batch.items()}
        params, opt_state, m = update(params, opt_state, batch, ref_params)
        jax.block_until_ready(params)
        return (params, opt_state), {"loss": float(m["loss"]), "reward": float(token_reward(ids).mean())}

    return (lambda params: (params, opt.init(params))), step


def run_orchestra_jax(model, args):
    import jax
    import numpy as np

    cfg, params = ours_from_hf(model)
    cfg = cfg.replace(attention_block=args.attention_block)
    prompts = np.random.default_rng(0).integers(2, cfg.vocab_size, (args.prompts, args.prompt_len)).astype(np.int32)
    init_state, step = make_orchestra_jax_step(cfg, params, prompts, args.group, args.completion, args.lr)
    state = init_state(params)
    times = []
    for i in range(args.steps + 1):
        t0 = time.perf_counter()
        state, metrics = step(state, jax.random.key(i))
        times.append(time.perf_counter() - t0)
    return times[1:], metrics


def run_trl(model, args):
    import numpy as np
    import torch
    from datasets import Dataset
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    vocab = model.config.vocab_size
    tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(vocab)}, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="w0", eos_token="w1", unk_token="w0")
    rng = np.random.default_rng(0)
    rows = [" ".join(f"w{t}" for t in rng.integers(2, vocab, args.prompt_len))
            for _ in range(args.prompts * (args.steps + 1))]
    dataset = Dataset.from_dict({"prompt": rows})

    def reward(prompts, completions, completion_ids, **_):
        return [float(np.mean(np.asarray(c) % 2 == 0)) for c in completion_ids]

    class StepTimer(TrainerCallback):
        times: list = []

        def on_step_begin(self, *a, **k):
            self.t0 = time.perf_counter()

        def on_step_end(self, *a, **k):
            self.times.append(time.perf_counter() - self.t0)

    timer = StepTimer()
    conf = GRPOConfig(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=args.prompts * args.group,
                      num_generations=args.group, max_completion_length=args.completion, beta=BETA,
                      learning_rate=args.lr, max_steps=args.steps + 1, temperature=1.0, top_p=1.0,
                      generation_kwargs={"min_new_tokens": args.completion}, use_vllm=False,
                      gradient_checkpointing=False, report_to="none", save_strategy="no", logging_steps=10_000,
                      use_cpu=True, bf16=False, mask_truncated_completions=False, shuffle_dataset=False, seed=0, dataloader_num_workers=0)
    folder = tempfile.mkdtemp()  # trl builds its reference model from the model's folder
    model.save_pretrained(folder)
    trainer = GRPOTrainer(model=folder, reward_funcs=reward, args=conf, train_dataset=dataset,
                          processing_class=tokenizer, callbacks=[timer])
    torch.manual_seed(0)
    with contextlib.redirect_stdout(sys.stderr):  # trl prints its train summary: stdout stays one JSON object
        trainer.train()
    return timer.times[1:]


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--side", choices=["orchestra_jax", "trl", "both"], default="both")
    ap.add_argument("--size", default="tiny")
    ap.add_argument("--model", default=None, help="a Hugging Face Qwen3 folder instead of a random --size model")
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--completion", type=int, default=48)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--lr", type=float, default=1e-6)
    ap.add_argument("--attention-block", type=int, default=0,
                    help="orchestra_jax's model.attention_block (block_sparse's block; 0: its default, 64)")
    ap.add_argument("--torch-threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    args = ap.parse_args(argv)

    import numpy as np
    import torch

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)

    def load():
        if args.model:
            from transformers import AutoModelForCausalLM
            return AutoModelForCausalLM.from_pretrained(args.model, torch_dtype="float32").eval()
        return hf_qwen3(args.size)

    samples = args.prompts * args.group
    result = {"benchmark": "vs_trl", "model": args.model or args.size, "prompts": args.prompts,
              "group": args.group, "prompt_len": args.prompt_len, "completion": args.completion,
              "steps_timed": args.steps, "beta": BETA, "attention_block": args.attention_block,
              "torch_threads": torch.get_num_threads()}
    if args.side in ("orchestra_jax", "both"):
        times, metrics = run_orchestra_jax(load(), args)
        result["orchestra_jax"] = {"step_s": float(np.median(times)), "samples_per_s": samples / np.median(times),
                                   "last_loss": metrics["loss"]}
    if args.side in ("trl", "both"):
        times = run_trl(load(), args)
        result["trl"] = {"step_s": float(np.median(times)), "samples_per_s": samples / np.median(times)}
    if args.side == "both":
        result["speedup"] = result["orchestra_jax"]["samples_per_s"] / result["trl"]["samples_per_s"]
        result["target_speedup"] = 2.5
    emit(result)


if __name__ == "__main__":
    main()
