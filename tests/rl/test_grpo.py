"""rl.grpo: float32 masters under bf16 compute, static shapes (one compile over a run), sampling refused for
training, identical evaluation episodes for learned and scripted policies."""
import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from orchestra_jax.config import to_config
from orchestra_jax.model import ModelConfig, init_params
from orchestra_jax.rl.losses import LossConfig
from orchestra_jax.rl.optim import OptimConfig, make_optimizer
from orchestra_jax.rl.step import AlgoConfig, make_update_fn

MICRO_MODEL = {"vocab_size": 1024, "hidden_size": 32, "num_layers": 1, "num_heads": 2, "num_kv_heads": 1,
               "head_dim": 16, "intermediate_size": 64}


def _batch(rows=4, row_len=32, vocab=64, seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, vocab, (rows, row_len)).astype(np.int32)
    positions = np.tile(np.arange(row_len, dtype=np.int32), (rows, 1))
    mask = np.ones((rows, row_len), np.float32)
    mask[:, 0] = 0
    return {"tokens": tokens, "positions": positions, "segment_ids": np.ones((rows, row_len), np.int32),
            "loss_mask": mask, "advantages": rng.normal(size=(rows, 1)).repeat(row_len, 1).astype(np.float32)}


def test_bf16_compute_with_float32_masters_moves_every_parameter_at_lr_1e6():
    """10 AdamW steps at the toolorchestra lr: float32 masters change (nearly) every weight, norm scales
    included; bf16 parameters would round most of these updates away (1.9% changed before the fix)."""
    cfg = ModelConfig(vocab_size=64, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=16,
                      intermediate_size=64, dtype="bfloat16", param_dtype="float32", attention_backend="xla")
    algo = AlgoConfig(loss=LossConfig(kl_coef=0.0), optim=OptimConfig(lr=1e-6, weight_decay=0.0))
    opt = make_optimizer(algo.optim)
    params = init_params(cfg, jax.random.PRNGKey(0))
    start = jax.tree.map(np.asarray, params)
    opt_state = opt.init(params)
    update = make_update_fn(cfg, algo, opt)
    batch = _batch()
    for _ in range(10):
        params, opt_state, m = update(params, opt_state, batch)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(opt_state) if hasattr(x, "dtype") and x.ndim)
    changed = [np.mean(np.asarray(a) != b) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(start))]
    sizes = [b.size for b in jax.tree.leaves(start)]
    assert np.average(changed, weights=sizes) > 0.95, changed
    flat = {jax.tree_util.keystr(p): (np.asarray(a), b) for (p, a), b in
            zip(jax.tree_util.tree_flatten_with_path(params)[0], jax.tree.leaves(start))}
    scales = [k for k in flat if "scale" in k]
    assert scales and all(np.any(flat[k][0] != flat[k][1]) for k in scales)
    # the same step with bf16 parameters is refused (no silent bf16 optimizer state)
    with pytest.raises(ValueError, match="float32 master weights"):
        update(jax.tree.map(lambda x: x.astype(jnp.bfloat16), params), opt_state, batch)


def _micro(run_dir, **over):
    raw = {"model": dict(MICRO_MODEL),
           "rollout": {"group_size": 2, "max_turns": 2, "max_new_tokens": 24, "max_seq_len": 512, "tools_format": "compact"},
           "train": {"steps": 5, "tasks_per_step": 2, "num_tasks": 16, "row_len": 512, "checkpoint_every": 5,
                     "wandb_mode": "disabled", "progress_bar": False, "samples_every": 0},
           "sft": {"enabled": False}, "eval": {"enabled": False}, "tokenizer_vocab_size": 512,
           "algo": {"optim": {"lr": 1e-3}, "loss": {"kl_coef": 0.01}}, "run_dir": str(run_dir)}
    for section, values in over.items():
        raw.setdefault(section, {}).update(values) if isinstance(values, dict) else raw.__setitem__(section, values)
    return to_config(raw)


@pytest.mark.parametrize("devices", [8, 1])
def test_five_steps_micro_batches_on_fsdp8_compile_every_jitted_function_once(tmp_path, devices):
    """micro_batches=2 and ppo_epochs=2 on an 8-device fsdp mesh, SFT then 5 GRPO steps whose episode, prompt
    and observation lengths vary: a fixed row count (4 episodes rounded up to micro_batches x devices = 16
    rows), and every jitted function of the run compiles exactly one program: the SFT update, the prompt
    prefill (P rows), the params replica the rollout samples from, the old-log-prob forward and the GRPO
    update; the decode and the observation prefill one per cache row count (row compaction); prefix-shared
    packing on (its default)."""
    from orchestra_jax.logging import read_metrics
    from orchestra_jax.model.sampling import clear_compile_caches
    from orchestra_jax.parallel.sharding import clear_replicate_cache
    from orchestra_jax.train import run

    if devices == 1:  # the quickstart's mesh: the rollout samples from the state's own (one-device) params
        return _one_device_compiles_once(tmp_path)
    clear_compile_caches()  # module-level jits: an earlier test's programs would hide this run's count
    clear_replicate_cache()
    run(_micro(tmp_path, mesh={"data": 1, "fsdp": -1, "tensor": 1},
               algo={"micro_batches": 2, "ppo_epochs": 2, "optim": {"lr": 1e-3}, "loss": {"kl_coef": 0.01}},
               sft={"enabled": True, "num_tasks": 8, "teacher_samples": 1, "steps": 3, "batch_rows": 4,
                    "row_len": 512, "log_every": 1, "warmup_steps": 0}))
    rows = read_metrics(str(tmp_path))
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    assert len({r["rollout/tokens_per_episode"] for r in rows}) > 1  # episode lengths vary
    assert {r["packing/rows"] for r in rows} == {16.0}  # 4 episodes -> rounded up to 2 micro x 8 devices
    names = ("prefill_prompts", "replicate", "logprob", "update")
    for r in rows:
        assert {k: r[f"compiles/{k}"] for k in names} == dict.fromkeys(names, 1.0), r
        _compiles_per_row_count(r)
    assert all(r["rollout/episodes"] == 4.0 for r in rows)
    sft_rows = [json.loads(line) for line in (tmp_path / "sft_metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in sft_rows] == [1, 2, 3]
    assert [r["compiles/sft_update"] for r in sft_rows] == [1.0, 1.0, 1.0]
    assert {r["sft/rows_per_step"] for r in sft_rows} == {8.0}  # 4 rows rounded up to the 8 fsdp devices
    # train.share_prefix (default on): a group's prompt is computed once where its G = 2 episodes fit one row
    assert all(r["packing/tokens_computed"] <= r["packing/tokens_unshared"] for r in rows)
    assert any(r["packing/tokens_computed"] < r["packing/tokens_unshared"] for r in rows)


def _one_device_compiles_once(tmp_path):
    from orchestra_jax.logging import read_metrics
    from orchestra_jax.model.sampling import clear_compile_caches
    from orchestra_jax.train import run

    clear_compile_caches()
    run(_micro(tmp_path, mesh={"data": 1, "fsdp": 1, "tensor": 1},
               sft={"enabled": True, "num_tasks": 8, "teacher_samples": 1, "steps": 2, "log_every": 1}))
    rows = read_metrics(str(tmp_path))
    assert len({r["rollout/tokens_per_episode"] for r in rows}) > 1  # episode lengths vary
    names = ("prefill_prompts", "update")
    for r in rows:
        assert {k: r[f"compiles/{k}"] for k in names} == dict.fromkeys(names, 1.0), r
        _compiles_per_row_count(r)


def _compiles_per_row_count(r):
    """rollout.compact_rows (on by default) runs the decode and the observation prefill on 4, 2 or 1 cache
    rows (2 tasks x G = 2): at most one program per row count over the whole run, never one per step."""
    assert 1.0 <= r["compiles/decode"] <= 3.0 and 1.0 <= r["compiles/prefill"] <= 3.0, r


def test_training_refuses_tempered_or_truncated_sampling():
    for sampling in ({"temperature": 0.7}, {"top_p": 0.9}, {"greedy": True}):
        with pytest.raises(ValueError, match="rollout.sampling .*temperature=1.0, top_p=1.0") as e:
            to_config({"rollout": {"sampling": sampling}})
        assert "\n" not in str(e.value)
    to_config({"rollout": {"sampling": {"temperature": 0.7}}, "train": {"steps": 0}})  # no training: allowed


class RecordingEnv:
    """Delegates to an env and records every reset: (task ids, seed, episode ids)."""

    def __init__(self, env):
        self._env, self.resets = env, []

    def reset(self, tasks, seed, episode_ids=None):
        ids = list(range(len(tasks))) if episode_ids is None else [int(e) for e in episode_ids]
        self.resets.append(([json.dumps(t.to_dict(), sort_keys=True) for t in tasks], int(seed), ids))
        return self._env.reset(tasks, seed, episode_ids=episode_ids)

    def __getattr__(self, name):
        return getattr(self._env, name)


def _episodes(resets):
    """{episode id: (task, seed)} over all reset calls."""
    out = {}
    for tasks, seed, ids in resets:
        for t, e in zip(tasks, ids):
            out[e] = (t, seed)
    return out


def test_learned_and_scripted_policies_play_identical_episodes(tmp_path):
    """Same held-out task and env seed for every episode id, for a learned policy and a baseline."""
    from orchestra_jax.envs import make_env
    from orchestra_jax.evaluate import baseline_results, episode_plan, policy_results
    from orchestra_jax.text.chat import render_prompt
    from orchestra_jax.text.tokenizer import train_tokenizer

    cfg = _micro(tmp_path, eval={"num_tasks": 3, "group_size": 2, "batch_size": 4})
    env = make_env(cfg.env)
    tasks = env.sample_tasks(cfg.eval.seed, 3, split=cfg.eval.split)
    _, prompts = env.reset(tasks, 0)
    tok = train_tokenizer([render_prompt(p["messages"], p["tools"], tools_format="compact") for p in prompts], 512)
    model_cfg = ModelConfig(**MICRO_MODEL)
    params = init_params(model_cfg, jax.random.PRNGKey(0))
    learned, scripted = RecordingEnv(env), RecordingEnv(env)
    res_l = policy_results(cfg, learned, tok, model_cfg, params, tasks)
    res_s = baseline_results(cfg, scripted, tasks, "cheapest")
    plan = episode_plan(3, 2)
    ep_l, ep_s = _episodes(learned.resets), _episodes(scripted.resets)
    assert len(learned.resets) == 2  # two rollout batches of 2 tasks (the last one padded)
    assert {e: ep_l[e] for e in plan} == {e: ep_s[e] for e in plan}
    assert all(seed == cfg.eval.seed for _, seed in ep_s.values())
    assert list(res_l.task_ids) == list(res_s.task_ids) and len(res_l.task_ids) == 6


class _Episodes:
    """The parts of a Rollout that build_batch reads: G episodes per group, group-major."""

    def __init__(self, tokens, assistant_mask, group_size):
        self.tokens, self.assistant_mask, self.group_size = tokens, assistant_mask, group_size
        self.lengths = np.array([len(t) for t in tokens], np.int32)


def _grouped_episodes(n_groups=3, group_size=3, vocab=64, seed=0):
    """Each group: one prompt, then per episode sampled turns (mask 1) and observations (mask 0)."""
    rng = np.random.default_rng(seed)
    tokens, masks = [], []
    for _ in range(n_groups):
        prompt = rng.integers(1, vocab, int(rng.integers(12, 30)))
        for _ in range(group_size):
            toks, mask = [prompt], [np.zeros(len(prompt), np.int32)]
            for turn in range(int(rng.integers(1, 3))):
                n = int(rng.integers(3, 9))
                toks.append(rng.integers(1, vocab, n)), mask.append(np.ones(n, np.int32))
                if turn == 0:
                    k = int(rng.integers(2, 6))
                    toks.append(rng.integers(1, vocab, k)), mask.append(np.zeros(k, np.int32))
            tokens.append(np.concatenate(toks).astype(np.int32))
            masks.append(np.concatenate(mask))
    return _Episodes(tokens, masks, group_size), rng.normal(size=len(tokens)).astype(np.float32)


@pytest.mark.parametrize("loss", [LossConfig(kl_coef=0.0), LossConfig(kl_coef=0.05, aggregation="seq_mean_token_mean")])
def test_grpo_update_with_shared_prefix_equals_unshared(loss):
    """build_batch with share_prefix on (each group's prompt once per unit) vs off (every episode whole) on the
    same episodes: the update gives the same loss, metrics and parameters (float32, 1e-5) while computing
    fewer tokens."""
    from orchestra_jax.rl.grpo import StepConfig, build_batch

    cfg = ModelConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, head_dim=16,
                      intermediate_size=64, attention_backend="xla")
    algo = AlgoConfig(loss=loss, optim=OptimConfig(lr=1e-2, weight_decay=0.0))
    opt = make_optimizer(algo.optim)
    params = init_params(cfg, jax.random.PRNGKey(1))
    ref = jax.tree.map(lambda x: x + 0.01, params)
    ro, adv = _grouped_episodes()
    keep = np.ones(len(adv), bool)
    out = {}
    for share in (False, True):
        step_cfg = StepConfig(tasks_per_step=3, rows_per_host=4, row_len=128, truncate=False, seed=0,
                              share_prefix=share)
        batch, m = build_batch(ro, adv, keep, step_cfg, attention_backend="xla", dtype="float32")
        update = make_update_fn(cfg, algo, opt)
        p, _, metrics = update(jax.tree.map(jnp.copy, params), opt.init(params), batch.as_dict(),
                               ref if loss.kl_coef else None)
        out[share] = (jax.tree.map(np.asarray, p), jax.device_get(metrics), m, batch)
    (p0, m0, pk0, b0), (p1, m1, pk1, b1) = out[False], out[True]
    assert "prefix_segment_ids" in b1.as_dict() and "prefix_segment_ids" not in b0.as_dict()
    assert pk0["packing/tokens_computed"] == pk0["packing/tokens_unshared"] == pk1["packing/tokens_unshared"]
    assert pk1["packing/tokens_computed"] < 0.8 * pk1["packing/tokens_unshared"]  # 3 prompts stored once, not 9x
    assert pk1["packing/tokens_computed_ratio"] == pk1["packing/tokens_computed"] / pk1["packing/tokens_unshared"]
    assert sorted(m0) == sorted(m1)
    for k in m0:
        np.testing.assert_allclose(m1[k], m0[k], rtol=1e-5, atol=1e-5, err_msg=k)
    assert float(m0["grad_norm"]) > 0
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p0)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    moved = max(float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(p0), jax.tree.leaves(params)))
    assert moved > 1e-3  # the update really changed the parameters


def test_build_batch_fits_more_episodes_in_fixed_rows_when_prompts_are_shared():
    """Rows too few for the unshared episodes: sharing keeps every episode in the same rows where the unshared
    packing drops some (the latest first), and the rows stay exactly rows_per_host either way."""
    from orchestra_jax.rl.grpo import StepConfig, build_batch

    ro, adv = _grouped_episodes()
    keep = np.ones(len(adv), bool)
    total = int(np.sum(ro.lengths))
    row_len = 128
    rows = -(-(total - 20) // row_len) - 1  # fewer rows than the unshared tokens need
    out = {}
    for share in (False, True):
        cfg = StepConfig(tasks_per_step=3, rows_per_host=rows, row_len=row_len, truncate=False, seed=0,
                         share_prefix=share)
        out[share] = build_batch(ro, adv, keep, cfg, attention_backend="xla", dtype="float32")
    (b0, m0), (b1, m1) = out[False], out[True]
    assert b0.num_rows == b1.num_rows == rows
    assert m0["packing/dropped_episodes"] > 0 and m1["packing/dropped_episodes"] == 0
    assert m1["packing/episodes"] == len(adv) and m1["packing/tokens_unshared"] == total
    # the episodes kept unshared are the earliest ones, whole
    kept = int(m0["packing/episodes"])
    assert [len(x) for x in b0.unpack("tokens")] == [len(t) for t in ro.tokens[:kept]]
    assert all(np.array_equal(a, b) for a, b in zip(b1.unpack("tokens"), ro.tokens))


def test_row_bucket_packs_into_the_fewest_rows_with_the_same_update():
    """step_rows with row_bucket: the fewest multiple of the bucket that holds every episode (capped at
    rows_per_host); packed into those rows or padded out to rows_per_host, the update gives the same loss,
    metrics and parameters (padding rows carry no loss), with no episode dropped."""
    from orchestra_jax.rl.batch import StepConfig, build_batch, step_rows

    cfg = ModelConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, head_dim=16,
                      intermediate_size=64, attention_backend="xla")
    algo = AlgoConfig(loss=LossConfig(kl_coef=0.0), optim=OptimConfig(lr=1e-2, weight_decay=0.0))
    opt = make_optimizer(algo.optim)
    params = init_params(cfg, jax.random.PRNGKey(1))
    ro, adv = _grouped_episodes()
    keep = np.ones(len(adv), bool)
    for share in (False, True):
        fixed = StepConfig(tasks_per_step=3, rows_per_host=12, row_len=64, truncate=False, seed=0,
                           share_prefix=share)
        natural = build_batch(ro, adv, keep, dataclasses.replace(fixed, rows_per_host=100),
                              attention_backend="xla", dtype="float32")[0]
        natural = int(np.max(np.flatnonzero(natural.as_dict()["segment_ids"].any(axis=1)))) + 1
        for bucket in (1, 2, 4):
            got = step_rows(ro, keep, dataclasses.replace(fixed, row_bucket=bucket), attention_backend="xla")
            assert got == -(-natural // bucket) * bucket, (share, bucket)
        assert step_rows(ro, keep, dataclasses.replace(fixed, row_bucket=4, rows_per_host=4),
                         attention_backend="xla") == 4  # capped at rows_per_host
        assert step_rows(ro, keep, fixed) == 12  # no bucket: always rows_per_host
        out = {}
        for rows in (natural, 12):
            batch, m = build_batch(ro, adv, keep, fixed, attention_backend="xla", dtype="float32", num_rows=rows)
            assert batch.num_rows == rows and m["packing/dropped_episodes"] == 0
            p, _, metrics = make_update_fn(cfg, algo, opt)(jax.tree.map(jnp.copy, params), opt.init(params),
                                                             batch.as_dict(), None)
            out[rows] = (jax.tree.map(np.asarray, p), jax.device_get(metrics), m)
        (p0, m0, k0), (p1, m1, k1) = out[natural], out[12]
        assert k0["packing/utilisation"] > k1["packing/utilisation"]
        assert k0["packing/tokens_computed"] == k1["packing/tokens_computed"]
        for k in m0:
            np.testing.assert_allclose(m1[k], m0[k], rtol=1e-6, atol=1e-6, err_msg=k)
        for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p0)):  # Adam's first step: lr x sign-like
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_row_bucket_run_compiles_the_update_pieces_once_whatever_the_row_count(tmp_path):
    """A 5-step run with train.row_bucket=1 (rows_per_step 4, rows of 560 tokens: a group's prompt and its two
    episodes fit one row or not): each step packs into the rows it needs, which vary, no episode is dropped,
    and the GRPO update accumulates over the step's one-row buckets with the same four programs (count,
    init, accumulate, apply) from the first step on, instead of one whole update per row count."""
    from orchestra_jax.logging import read_metrics
    from orchestra_jax.train import run

    run(_micro(tmp_path, mesh={"data": 1, "fsdp": 1, "tensor": 1},
               train={"rows_per_step": 4, "row_bucket": 1, "row_len": 560, "seed": 3}))
    rows = read_metrics(str(tmp_path))
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    counts = [r["packing/rows"] for r in rows]
    assert all(1 <= c <= 4 for c in counts) and len(set(counts)) > 1, counts  # seed 3: 3, 3, 3, 4, 2
    assert all(r["packing/dropped_episodes"] == 0 for r in rows)
    assert [r["compiles/update"] for r in rows] == [4] * 5, counts


def test_rollout_prefills_each_group_prompt_once_with_the_same_episodes(monkeypatch):
    """rl.rollout prefills a group's prompt once (prefill_groups) when its G prompts are equal: the episodes
    (tokens, sampled log-probs, end reasons) are exactly those of prefilling all G rows."""
    from orchestra_jax.config import EnvConfig
    from orchestra_jax.envs import make_env
    from orchestra_jax.model import sampling
    from orchestra_jax.model.kv_cache import init_cache
    from orchestra_jax.rl import rollout as rollout_mod
    from orchestra_jax.text.chat import render_prompt
    from orchestra_jax.text.tokenizer import train_tokenizer

    env = make_env(EnvConfig(setting="qa"))
    tasks = env.sample_tasks(0, 2)
    _, prompts = env.reset(env.sample_tasks(1, 20), 0)
    tok = train_tokenizer([render_prompt(p["messages"], p["tools"], tools_format="compact") for p in prompts], 600)
    model_cfg = ModelConfig(vocab_size=tok.vocab_size, hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1,
                            head_dim=16, intermediate_size=64)
    params = init_params(model_cfg, jax.random.PRNGKey(3))
    rcfg = rollout_mod.RolloutConfig(group_size=3, max_turns=2, max_new_tokens=12, max_seq_len=400,
                                     tools_format="compact")
    calls = []
    prefill = rollout_mod.prefill
    monkeypatch.setattr(rollout_mod, "prefill", lambda *a, **k: calls.append(a[3].shape) or prefill(*a, **k))
    shared = rollout_mod.rollout(model_cfg, params, env, tok, tasks, jax.random.key(1), rcfg, 7)
    assert calls and calls[0][0] == len(tasks)  # the prompts: one prefill row per group
    calls.clear()
    rcfg = dataclasses.replace(rcfg, share_prompt_prefill=False)
    full = rollout_mod.rollout(model_cfg, params, env, tok, tasks, jax.random.key(1), rcfg, 7)
    assert calls[0][0] == len(tasks) * 3  # every episode's row
    assert all(np.array_equal(a, b) for a, b in zip(shared.tokens, full.tokens))
    assert all(np.array_equal(a, b) for a, b in zip(shared.sampled_logp, full.sampled_logp))
    assert shared.done_reason == full.done_reason and sum(np.sum(t) for t in shared.turn_new_tokens) > 0


def test_invalid_turns_drop_takes_every_refused_turn_out_of_the_loss(tmp_path):
    """The micro run's random policy never writes a valid call (rollout/invalid_turn_rate 1), so with
    algo.invalid_turns=drop every sampled token leaves the loss (num_tokens 0); with train every sampled token
    is in the loss."""
    from orchestra_jax.logging import read_metrics
    from orchestra_jax.train import run

    for mode in ("drop", "train"):
        run_dir = tmp_path / mode
        run(_micro(run_dir, mesh={"data": 1, "fsdp": 1, "tensor": 1}, train={"steps": 2},
                   algo={"invalid_turns": mode, "optim": {"lr": 1e-3}, "loss": {"kl_coef": 0.0}}))
        for r in read_metrics(str(run_dir)):
            assert r["rollout/invalid_turn_rate"] == 1.0 and r["rollout/sampled_tokens"] > 0
            if mode == "drop":
                assert r["loss/invalid_tokens_drop"] == r["rollout/sampled_tokens"]
                assert r["num_tokens"] == 0.0 and r["loss"] == 0.0
            else:
                assert not any(k.startswith("loss/invalid_tokens") for k in r)
                assert r["num_tokens"] == r["rollout/sampled_tokens"]


def test_token_advantages_treat_refused_turns_as_configured():
    """Two episodes of one group, each with a valid and a refused turn; advantages +1 and -1: train keeps
    everything, drop zeroes the refused turns' loss mask, penalise caps their advantage at 0."""
    from orchestra_jax.rl.batch import InvalidTurns, token_advantages

    mask = np.array([0, 0, 1, 1, 0, 1, 1, 1, 0], np.int32)  # prompt, turn 0 (2 tokens), obs, turn 1 (3 tokens), eos
    ro = _Episodes([np.arange(9, dtype=np.int32)] * 2, [mask, mask], group_size=2)
    ro.turn_start = np.array([[2, 5], [2, 5]], np.int32)
    ro.turn_new_tokens = np.array([[2, 3], [2, 3]], np.int32)
    ro.turn_valid = np.array([[True, False], [False, True]])
    adv = np.array([1.0, -1.0], np.float32)
    masks, advs = token_advantages(ro, adv, InvalidTurns.train)
    assert [m.tolist() for m in masks] == [mask.tolist()] * 2
    assert [a.tolist() for a in advs] == [[1.0] * 9, [-1.0] * 9]
    masks, advs = token_advantages(ro, adv, InvalidTurns.drop)
    assert masks[0].tolist() == [0, 0, 1, 1, 0, 0, 0, 0, 0] and masks[1].tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 0]
    assert [a.tolist() for a in advs] == [[1.0] * 9, [-1.0] * 9]
    masks, advs = token_advantages(ro, adv, InvalidTurns.penalise)
    assert [m.tolist() for m in masks] == [mask.tolist()] * 2
    assert advs[0].tolist() == [1.0] * 5 + [0.0] * 3 + [1.0] and advs[1].tolist() == [-1.0] * 9


def test_row_buckets_with_micro_batches_and_ppo_epochs_update_like_fixed_rows(tmp_path):
    """One GRPO step with ppo_epochs=2 and micro_batches=2 (old log-probs per bucket, each bucket scanned as
    two micro-batches) through the bucketed update (row_bucket=2: the fewest pairs of rows that hold the step)
    gives the update of the same step packed into fixed rows (rows_per_step=8, row_bucket=0: one whole
    program; the extra rows are padding): same loss, gradient norm, KL and ratio statistics. The bucketed run
    also runs the output head at 512 positions per row (train.loss_positions) instead of all 1,024. A third run
    cuts the bucket whose rows hold fewer tokens to a shorter length (train.short_row_lens): fewer slots, the
    same update."""
    from orchestra_jax.logging import read_metrics
    from orchestra_jax.train import run

    runs = {}
    for name, bucket, short in (("bucketed", 2, []), ("fixed", 0, []), ("short", 2, [256, 512, 768])):
        run_dir = tmp_path / name
        # zscore rewards: cost and latency differ between the random policy's (all unsolved) episodes, so
        # the advantages, the loss and the gradient are not zero
        run(_micro(run_dir, mesh={"data": 1, "fsdp": 1, "tensor": 1}, reward={"kind": "zscore"},
                   algo={"micro_batches": 2, "ppo_epochs": 2, "optim": {"lr": 1e-3}, "loss": {"kl_coef": 0.01}},
                   train={"steps": 1, "tasks_per_step": 4, "rows_per_step": 8, "row_bucket": bucket, "seed": 0,
                          "row_len": 1024, "loss_positions": 512 if bucket else 0, "short_row_lens": short}))
        runs[name] = read_metrics(str(run_dir))[0]
    b, f, s = runs["bucketed"], runs["fixed"], runs["short"]
    assert b["packing/rows"] < f["packing/rows"] == 8 and b["packing/episodes"] == f["packing/episodes"] == 8
    assert abs(b["loss"]) > 1e-3 and b["grad_norm"] > 1e-2
    assert b["compiles/update"] == 4 and f["compiles/update"] == 1
    assert b["packing/loss_positions"] == 512 and "packing/loss_positions" not in f
    # short rows: the same rows in fewer slots (a bucket cut below 1024 compiles its own count / accumulate)
    assert s["packing/rows"] == b["packing/rows"] and s["packing/tokens_computed"] == b["packing/tokens_computed"]
    assert b["packing/row_slots"] == b["packing/rows"] * 1024 > s["packing/row_slots"]
    assert s["packing/utilisation"] == s["packing/tokens_computed"] / s["packing/row_slots"] > b["packing/utilisation"]
    assert s["compiles/update"] > 4
    for k in ("loss", "grad_norm", "kl_ref", "num_tokens", "num_sequences", "ratio/min", "ratio/max", "entropy"):
        np.testing.assert_allclose(b[k], f[k], rtol=1e-5, atol=1e-6, err_msg=k)
        np.testing.assert_allclose(s[k], f[k], rtol=1e-5, atol=1e-6, err_msg=k)
