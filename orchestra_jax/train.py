"""The main job: prepare -> SFT (if sft.enabled) -> GRPO -> held-out evaluation, all inside ``cfg.run_dir``.

    <run_dir>/config.yaml, tokenizer/, data/      written by orchestra_jax.prepare
    <run_dir>/sft/                                SFT checkpoint (the GRPO start; reused when it exists)
    <run_dir>/checkpoints/<step>/                 GRPO TrainState + data-iterator state (orbax)
    <run_dir>/metrics.jsonl, sft_metrics.jsonl, samples.jsonl, wandb/, summary.json

This module is the loop only: iterate over task batches, call ``rl.grpo.grpo_step``, log, checkpoint.
Every process reads the same global task order and takes its own ``tasks_per_step`` slice of each batch,
so a step trains on tasks_per_step x group_size x processes episodes. Rerunning with the same run_dir
resumes from the last checkpoint and reproduces the uninterrupted run exactly.
"""
from __future__ import annotations

import time

import jax
import numpy as np
from etils import epath

from orchestra_jax.checkpoint import Checkpointer, latest_step_in
from orchestra_jax.config import Config, mesh_device_count, to_dict
from orchestra_jax.divergence import DivergenceBounds, DivergenceMonitor
from orchestra_jax.faults import maybe_fault
from orchestra_jax.logging import RunLogger
from orchestra_jax.preemption import Preempted, PreemptionGuard
from orchestra_jax.rl.grpo import GRPOSetup, StepConfig, TrainState, grpo_step, init_state

CONSOLE_KEYS = ("reward/mean", "reward/preference_score", "rollout/accuracy", "rollout/cost_usd", "loss")
SAMPLE_COLUMNS = ["task_id", "episode", "solved", "reward", "cost_usd", "turns", "transcript"]
SMALL_KEYS = ("rng", "step", "reward_state")


def build_mesh(cfg: Config):
    """The device mesh (one device on the CPU default); checks it against the devices after any join."""
    from orchestra_jax.parallel import make_mesh

    n = mesh_device_count(cfg, jax.device_count(), jax.process_count())
    return make_mesh(cfg.mesh, None if n == jax.device_count() else jax.devices()[:n])


def make_setup(cfg: Config, prep, mesh) -> GRPOSetup:
    """The static parts of a GRPO step: the sharded update (compiled once: fixed rows) and its shapes."""
    from orchestra_jax.parallel import make_rules, make_sharded_logprob_fn, make_sharded_update_fn
    from orchestra_jax.parallel.sharding import batch_row_multiple
    from orchestra_jax.rl.optim import make_optimizer
    from orchestra_jax.rl.step import build_update, token_logprobs

    t, algo, P = cfg.train, cfg.algo, jax.process_count()
    rules = make_rules(cfg.mesh)
    optimizer = make_optimizer(algo.optim)
    update = make_sharded_update_fn(build_update(prep.model_cfg, algo, optimizer), prep.model_cfg, optimizer,
                                    mesh, rules)
    row_devices = batch_row_multiple(mesh, update.rules)
    if row_devices % P:
        raise ValueError(f"config error at mesh: rows are split over data x fsdp = {row_devices} devices, not a "
                         f"multiple of the {P} processes")
    multiple = algo.micro_batches * row_devices // P  # rows per host: micro-batches x this host's row devices
    rows = t.rows_per_step or -(-t.tasks_per_step * cfg.rollout.group_size // multiple) * multiple
    if rows % multiple:
        raise ValueError(f"config error at train.rows_per_step: {rows} is not a multiple of algo.micro_batches x "
                         f"data x fsdp / processes = {multiple}")
    bucket = -(-t.row_bucket // multiple) * multiple  # buckets in whole multiples of the row devices
    rows = -(-rows // bucket) * bucket if bucket else rows
    step_cfg = StepConfig(tasks_per_step=t.tasks_per_step, rows_per_host=rows, row_len=t.row_len,
                          truncate=t.truncate, seed=t.seed, batch_tasks=t.rollout_batch_tasks,
                          share_prefix=t.share_prefix, fill_gaps=t.fill_gaps,
                          row_bucket=bucket, loss_positions=t.loss_positions,
                          short_row_lens=tuple(sorted(t.short_row_lens)))
    return GRPOSetup(prep.model_cfg, algo, cfg.reward, cfg.rollout, step_cfg, prep.env, prep.tokenizer, mesh,
                     update, make_sharded_logprob_fn(token_logprobs, prep.model_cfg, mesh, rules),
                     on_phase=maybe_fault)


# --------------------------------------------------------------------------------- state <-> checkpoint
def to_checkpoint(state: TrainState, mesh) -> dict:
    """The state as orbax saves it: a dict, small host leaves replicated on the mesh (multi-host saves)."""
    from orchestra_jax.parallel.sharding import put_on_mesh, replicated

    tree = {k: v for k, v in state._asdict().items() if v is not None}
    for k in SMALL_KEYS:
        tree[k] = put_on_mesh(jax.tree_util.tree_map(np.asarray, tree[k]), replicated(mesh))
    return tree


def from_checkpoint(tree: dict) -> TrainState:
    small = {k: jax.tree_util.tree_map(lambda x: np.asarray(x.addressable_data(0)), tree[k]) for k in SMALL_KEYS}
    return TrainState(params=tree["params"], opt_state=tree["opt_state"], ref_params=tree.get("ref_params"), **small)


def restore_state(ckpt: Checkpointer, setup: GRPOSetup, start, seed: int = 0) -> tuple[TrainState, dict | None]:
    """(state, data-iterator state): the latest checkpoint restored onto a fresh state's structure, or the
    fresh state (rng from ``seed``) and None when there is no checkpoint."""
    state = init_state(setup, start, seed=seed)
    if ckpt.latest_step() is None:
        return state, None
    tree, data_state = ckpt.restore(None, to_checkpoint(state, setup.mesh))
    return from_checkpoint(tree), data_state


def state_to_local(state: TrainState, mesh):
    from orchestra_jax.parallel.sharding import replicate_to_local

    return replicate_to_local(state.params, mesh)


def start_policy(cfg: Config, prep, setup: GRPOSetup):
    """(start params on the mesh, its name, a process-local copy for evaluation)."""
    from orchestra_jax.parallel import make_rules
    from orchestra_jax.parallel.sharding import replicate_to_local
    from orchestra_jax.sft import sft_stage

    start, name = sft_stage(cfg, prep, setup.mesh, make_rules(cfg.mesh))
    return start, name, replicate_to_local(start, setup.mesh)


# ------------------------------------------------------------------------------------------------ loop
def train_grpo(cfg: Config, setup: GRPOSetup, start, train_path: str, logger: RunLogger):
    """``cfg.train.steps`` GRPO steps from ``start`` (or the latest checkpoint); returns (state, history)."""
    from orchestra_jax.data.tasks import task_iterator
    from orchestra_jax.model.sampling import compile_counts

    t, P, p = cfg.train, jax.process_count(), jax.process_index()
    ckpt = Checkpointer(str(epath.Path(cfg.run_dir) / "checkpoints"), keep=t.checkpoint_keep,
                        async_save=t.async_checkpoint, save_every=t.checkpoint_every)
    state, data_state = restore_state(ckpt, setup, start, seed=t.seed + 1)
    if data_state is not None:
        logger.write(f"resumed GRPO from {ckpt.directory}/{int(state.step)}")
    tasks_it = task_iterator(train_path, t.tasks_per_step * P, t.seed, state=data_state or None)
    monitor = DivergenceMonitor(DivergenceBounds(t.max_consecutive_skips, t.alert_kl_max, t.alert_entropy_min,
                                                 t.alert_entropy_max))
    history, compiled_before = [], compile_counts()  # the sampler's jit cache is per process: count this run's
    with PreemptionGuard() as guard:  # SIGTERM / SIGINT: finish the step, save it, exit with a clear line
        for step in range(int(state.step) + 1, t.steps + 1):
            t0 = time.perf_counter()
            records = next(tasks_it)[p * t.tasks_per_step:(p + 1) * t.tasks_per_step]
            state, metrics, info = grpo_step(setup, state, setup.env.tasks_from_dicts(records))
            maybe_fault("update", step)  # test hook (ORCHESTRA_FAULT); "rollout" fires inside grpo_step
            dt = time.perf_counter() - t0
            metrics.update({"time/step_s": dt,
                            "throughput/sampled_tokens_per_s": metrics["rollout/sampled_tokens"] / dt,
                            **compile_metrics(setup, compiled_before)})
            try:
                metrics.update(monitor.observe(step, metrics))  # N skipped updates in a row: stop, no save
            except Exception:
                ckpt.close()
                raise
            if step % t.log_every == 0 or step == t.steps:
                logger.log(step, metrics)
            if t.samples_every and (step % t.samples_every == 0 or step == t.steps):
                logger.log_table(step, "samples", SAMPLE_COLUMNS, sample_rows(info, setup.tokenizer, t.num_samples))
            history.append({"step": step, **metrics})
            stop = guard.stop_requested() or ckpt.reached_preemption(step)
            ckpt.save(step, to_checkpoint(state, setup.mesh), tasks_it.get_state(), force=stop or step == t.steps)
            maybe_fault("save", step)
            if stop:
                ckpt.close()
                err = Preempted(guard.signum or 15, step, ckpt.step_path(step))
                logger.write(str(err))
                raise err
    ckpt.close()
    return state, history


def compile_metrics(setup: GRPOSetup, before: dict[str, int]) -> dict[str, float]:
    """Programs compiled by this run for each jitted function of a step (static shapes: 1 each): the sampler's
    (its jit cache is per process: counted from ``before``), the update, the old-log-prob forward and the
    params replica the rollout samples from."""
    from orchestra_jax.model.sampling import compile_counts
    from orchestra_jax.parallel.sharding import replicate_compile_count

    m = {f"compiles/{k}": float(n - before[k]) for k, n in compile_counts().items()}
    m["compiles/update"] = float(setup.update.num_compiled)
    if setup.algo.ppo_epochs > 1:
        m["compiles/logprob"] = float(setup.logprob.num_compiled())
    if setup.mesh.size > 1:
        m["compiles/replicate"] = float(replicate_compile_count())
    return m


def sample_rows(info: dict, tokenizer, n: int) -> list[list]:
    """Rows (task_id, episode, solved, reward, cost, turns, transcript) of this process's first n episodes."""
    ro, rewards = info["rollout"], info["rewards_N"]
    return [[ro.results.task_ids[i], i, bool(ro.results.solved[i]), float(rewards[i]), float(ro.results.cost_usd[i]),
             int(ro.n_turns[i]), tokenizer.decode(ro.tokens[i][int(ro.prompt_len[i]):].tolist())[:2000]]
            for i in range(min(n, ro.num_episodes))]


def make_logger(cfg: Config, initial_step: int, desc: str = "grpo") -> RunLogger:
    t = cfg.train
    return RunLogger(cfg.run_dir, config=to_dict(cfg), wandb_mode=t.wandb_mode, wandb_project=t.wandb_project,
                     wandb_name=t.wandb_name, wandb_group=t.wandb_group, wandb_tags=t.wandb_tags, total_steps=t.steps,
                     initial_step=initial_step, desc=desc, console_keys=CONSOLE_KEYS, progress_bar=t.progress_bar)


def log_sft_curve(cfg: Config, logger: RunLogger) -> None:
    """The SFT loss curve (sft_metrics.jsonl beside the SFT checkpoint, shared or the run's own) to wandb."""
    import json

    from orchestra_jax.sft import sft_dir

    path = sft_dir(cfg).parent / "sft_metrics.jsonl"
    if cfg.sft.enabled and path.exists():
        logger.log_sft_curve([json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()])


def run(cfg: Config) -> dict:
    """The whole job (module docstring). Returns the summary dict (also <run_dir>/summary.json)."""
    from orchestra_jax.evaluate import evaluate_policies
    from orchestra_jax.summary import eval_tables, flat_metrics, format_table
    from orchestra_jax.parallel.distributed import initialize
    from orchestra_jax.prepare import prepare

    t_start = time.perf_counter()
    initialize(cfg.distributed)  # joins a multi-host job before any device is touched
    mesh = build_mesh(cfg)
    prep = prepare(cfg)
    setup = make_setup(cfg, prep, mesh)
    start, start_name, start_local = start_policy(cfg, prep, setup)
    latest = latest_step_in(str(epath.Path(cfg.run_dir) / "checkpoints"))
    logger = make_logger(cfg, initial_step=latest)
    summary = {}
    try:
        log_sft_curve(cfg, logger)
        state, _ = train_grpo(cfg, setup, start, prep.train_path, logger)
        logger.write(f"GRPO done ({time.perf_counter() - t_start:.0f}s)")
        if cfg.eval.enabled:
            summary = evaluate_policies(cfg, prep.env, prep.tokenizer, prep.model_cfg,
                                        {"grpo": state_to_local(state, mesh), start_name: start_local},
                                        start_policy=start_name)
            logger.summary(flat_metrics(summary))
            logger.log_eval_tables(eval_tables(summary))
    finally:
        logger.close()
    if summary and jax.process_index() == 0:
        print(format_table(summary))
        print(f"summary: {cfg.run_dir}/summary.json | metrics: {cfg.run_dir}/metrics.jsonl | "
              f"total {time.perf_counter() - t_start:.0f}s", flush=True)
    return summary
