"""SFT warm start: behaviour cloning on teacher trajectories, loss on assistant tokens only, packed rows.

A trajectory becomes one token sequence laid out exactly as a rollout lays it out:

    tok(render_prompt(messages, tools))                      loss 0
    tok(action_1)                                            loss 1   (what the policy must write)
    [<|im_end|>]                                             loss 0   (appended by the rollout, as there)
    tok(tool_response_turn(observation_1))                   loss 0
    tok(action_2) + [<|im_end|>]                             loss 1
    ...

All sequences are packed once with first-fit-decreasing into rows of ``row_len``; every epoch the rows
are shuffled (seeded) and taken ``batch_rows`` at a time. The loss is the token mean of
-log p(assistant token | earlier tokens of the same segment). Its final params are what GRPO starts from.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from orchestra_jax.data.packing import pack
from orchestra_jax.model import ModelConfig, Policy, chunked_logprobs
from orchestra_jax.text.chat import render_prompt, tool_response_turn


@dataclasses.dataclass(frozen=True)
class Trajectory:
    """A teacher episode in text: the reset prompt and its (action, observation) turns.

    ``observations[i]`` follows ``actions[i]``; the last action normally has no observation (the episode
    ended), so ``len(observations)`` is ``len(actions)`` or ``len(actions) - 1``.
    """

    messages: tuple  # chat messages of the prompt (dicts with role, content)
    tools: tuple  # tool schemas shown in the prompt
    actions: tuple[str, ...]
    observations: tuple[str, ...]


def encode_trajectory(tokenizer, traj: Trajectory, tools_format: str = "qwen") -> tuple[np.ndarray, np.ndarray]:
    """Token ids int32 [T] and the assistant loss mask int32 [T] of one trajectory.

    The layout is the one ``rl.rollout`` produces, so SFT trains exactly the tokens the policy later
    samples: the action's tokens have mask 1; an ``<|im_end|>`` appended after an action that does not end
    with it (the sampler stops at ``</tool_call>``) is not a policy token (mask 0), nor are prompt and
    observations.
    """
    prompt = tokenizer.encode(render_prompt(list(traj.messages), list(traj.tools) or None,
                                            tools_format=tools_format))
    tokens, mask = list(prompt), [0] * len(prompt)
    for i, action in enumerate(traj.actions):
        a = tokenizer.encode(action)
        tokens += a
        mask += [1] * len(a)
        if not a or a[-1] != tokenizer.eos_id:
            tokens.append(tokenizer.eos_id)
            mask.append(0)
        if i < len(traj.observations) and i < len(traj.actions) - 1:
            o = tokenizer.encode(tool_response_turn(traj.observations[i]))
            tokens += o
            mask += [0] * len(o)
    return np.asarray(tokens, np.int32), np.asarray(mask, np.int32)


def encode_teacher_trajectories(tokenizer, trajectories, tools_format: str = "qwen") -> list:
    """`encode_trajectory` of each factory trajectory (envs.baselines.Trajectory: prompt dict, actions,
    observations), as SFT trains on them."""
    return [encode_trajectory(tokenizer, Trajectory(
        messages=tuple(tr.prompt["messages"]), tools=tuple(tr.prompt.get("tools") or ()),
        actions=tuple(tr.actions), observations=tuple(tr.observations)), tools_format=tools_format)
        for tr in trajectories]


def next_token_logprobs(model_cfg: ModelConfig, params, tokens_BT, positions_BT, segment_ids_BT):
    """log p(tokens[b, t] | same-segment prefix) [B, T], 0 at segment starts and padding (ARCHITECTURE.md)."""
    logits_BTV = Policy(model_cfg).apply({"params": params}, tokens_BT, positions_BT, segment_ids_BT)
    logp_BTV = jax.nn.log_softmax(logits_BTV[:, :-1].astype(jnp.float32), axis=-1)
    picked_BT = jnp.take_along_axis(logp_BTV, tokens_BT[:, 1:, None], axis=-1)[..., 0]
    same_segment = (segment_ids_BT[:, 1:] == segment_ids_BT[:, :-1]) & (segment_ids_BT[:, 1:] > 0)
    picked_BT = jnp.where(same_segment, picked_BT, 0.0)
    return jnp.pad(picked_BT, ((0, 0), (1, 0)))


def loss_targets(data: dict) -> dict:
    """The loss tokens of packed rows as K targets per row (K = the most any row has): ``target_tokens``
    int32 [R, K] and ``target_prev`` int32 [R, K], the index of the hidden state that predicts each (-1 on
    padding). A loss token is one with loss_mask > 0 whose predecessor is in its segment."""
    mask_RT = data["loss_mask"] > 0
    mask_RT[:, 1:] &= (data["segment_ids"][:, 1:] == data["segment_ids"][:, :-1]) & (data["segment_ids"][:, 1:] > 0)
    mask_RT[:, 0] = False
    width = max(int(mask_RT.sum(axis=1).max(initial=0)), 1)
    tokens_RK = np.zeros((len(mask_RT), width), np.int32)
    prev_RK = np.full((len(mask_RT), width), -1, np.int32)
    for r, t_K in enumerate(np.nonzero(row)[0] for row in mask_RT):
        tokens_RK[r, :len(t_K)] = data["tokens"][r, t_K]
        prev_RK[r, :len(t_K)] = t_K - 1
    return {"target_tokens": tokens_RK, "target_prev": prev_RK}


def sft_loss(model_cfg: ModelConfig, params, batch: dict) -> tuple[jax.Array, dict]:
    """Token-mean negative log-likelihood of a packed batch's loss tokens (`loss_targets`: the output head
    runs only at the positions that predict them, about a tenth of a row)."""
    policy = Policy(model_cfg)
    h_BTD = policy.apply({"params": params}, batch["tokens"], batch["positions"], batch["segment_ids"],
                         method=Policy.final_hidden)
    head_VD = policy.apply({"params": params}, method=Policy.head_VD)
    logp_BK, _ = chunked_logprobs(h_BTD, head_VD, batch["target_tokens"], batch["target_prev"], with_entropy=False)
    mask = (batch["target_prev"] >= 0).astype(jnp.float32)
    n = jnp.maximum(mask.sum(), 1.0)
    nll = -(logp_BK * mask).sum() / n
    return nll, {"sft/loss": nll, "sft/tokens": mask.sum(), "sft/mean_token_prob": (jnp.exp(logp_BK) * mask).sum() / n}


def imitation_sums(model_cfg: ModelConfig, params, batch: dict) -> dict:
    """Sums for held-out imitation metrics of a packed batch (loss_mask = the teacher's action tokens):
    negative log-likelihood and count of the action tokens, and the number of actions (maximal runs of
    loss tokens) and of those whose every token is the model's argmax (the greedy policy would write the
    teacher's action, given the teacher's history)."""
    tokens_BT, seg_BT = batch["tokens"], batch["segment_ids"]
    logits_BTV = Policy(model_cfg).apply({"params": params}, tokens_BT, batch["positions"], seg_BT)
    logp_BTV = jax.nn.log_softmax(logits_BTV[:, :-1].astype(jnp.float32), axis=-1)
    target_BT = tokens_BT[:, 1:]
    picked_BT = jnp.take_along_axis(logp_BTV, target_BT[..., None], axis=-1)[..., 0]
    right_BT = jnp.argmax(logp_BTV, axis=-1) == target_BT
    mask_BT = ((batch["loss_mask"][:, 1:] > 0) & (seg_BT[:, 1:] == seg_BT[:, :-1]) & (seg_BT[:, 1:] > 0))
    # an action = a maximal run of loss tokens; its id is the running count of run starts in the row
    start_BT = mask_BT & ~jnp.pad(mask_BT[:, :-1], ((0, 0), (1, 0)))
    rows, width = mask_BT.shape
    span_BT = jnp.cumsum(start_BT, axis=1) + jnp.arange(rows)[:, None] * width
    wrong_S = jax.ops.segment_sum((mask_BT & ~right_BT).reshape(-1).astype(jnp.int32), span_BT.reshape(-1),
                                  num_segments=rows * width + rows)
    n_actions = start_BT.sum()
    return {"nll": -(picked_BT * mask_BT).sum(), "tokens": mask_BT.sum(), "actions": n_actions,
            "actions_matched": n_actions - (wrong_S > 0).sum()}


def make_sft_optimizer(learning_rate: float, steps: int, warmup_steps: int, weight_decay: float,
                       grad_clip: float) -> optax.GradientTransformation:
    """AdamW with linear warm-up and cosine decay to 10% of the peak, after global-norm clipping."""
    warmup = min(warmup_steps, max(steps - 1, 0))
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0 if warmup else learning_rate, peak_value=learning_rate, warmup_steps=warmup,
        decay_steps=max(steps, warmup + 1), end_value=0.1 * learning_rate)
    return optax.chain(optax.clip_by_global_norm(grad_clip), optax.adamw(schedule, weight_decay=weight_decay))


def make_sft_update(model_cfg: ModelConfig, optimizer: optax.GradientTransformation) -> Callable:
    """Un-jitted (params, opt_state, batch, ref_params=None) -> (params, opt_state, metrics), the signature
    `parallel.make_sharded_update_fn` jits over a mesh (ref_params is unused: no KL in behaviour cloning)."""

    def update(params, opt_state, batch, ref_params=None):
        (loss, metrics), grads = jax.value_and_grad(lambda p: sft_loss(model_cfg, p, batch), has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        metrics = dict(metrics, **{"sft/grad_norm": optax.global_norm(grads)})
        return params, opt_state, metrics

    return update


def pack_sft_dataset(sequences: Sequence[tuple[np.ndarray, np.ndarray]], row_len: int):
    """All (tokens, loss_mask) sequences packed into one PackedBatch of rows (too-long ones truncated)."""
    if not sequences:
        raise ValueError("SFT dataset is empty: the factory kept no teacher trajectory")
    return pack([t for t, _ in sequences], row_len, fields={"loss_mask": [m for _, m in sequences]},
                truncate=True)


def train_sft(model_cfg: ModelConfig, params, sequences: Sequence[tuple[np.ndarray, np.ndarray]], *,
              steps: int, batch_rows: int, row_len: int, learning_rate: float, warmup_steps: int,
              weight_decay: float, grad_clip: float, seed: int,
              log_fn: Callable[[int, dict], Any] | None = None, log_every: int = 10, mesh=None, rules=None,
              val_sequences: Sequence[tuple[np.ndarray, np.ndarray]] = (), val_every: int = 0):
    """Runs ``steps`` AdamW steps of behaviour cloning on ``mesh`` (default: one device), the same sharded
    update path as GRPO (parameters and Adam state sharded by the logical rules, one compile); every
    process holds the same seeded data, so each batch is the global one. ``batch_rows`` is rounded up to a
    multiple of the mesh's data x fsdp devices. With ``val_sequences`` (held-out teacher trajectories), every
    ``val_every`` steps and at the last step the logged metrics add ``sft/val_loss`` and
    ``sft/val_action_match`` (`imitation_metrics`). Returns (params on the mesh, list of per-step metric dicts)."""
    from orchestra_jax.parallel import MeshConfig, batch_row_multiple, make_mesh, make_sharded_update_fn

    packed = pack_sft_dataset(sequences, row_len)
    data = packed.as_dict()
    data.update(loss_targets(data))
    del data["loss_mask"]  # now in the targets
    num_rows = packed.num_rows
    mesh = make_mesh(MeshConfig(data=1, fsdp=1, tensor=1), jax.devices()[:1]) if mesh is None else mesh
    optimizer = make_sft_optimizer(learning_rate, steps, warmup_steps, weight_decay, grad_clip)
    step_fn = make_sharded_update_fn(make_sft_update(model_cfg, optimizer), model_cfg, optimizer, mesh, rules)
    multiple = batch_row_multiple(mesh, step_fn.rules)
    batch_rows = -(-min(batch_rows, num_rows) // multiple) * multiple
    # float32 master weights (as GRPO: bf16 parameters would round small Adam updates away), a fresh copy:
    # the step donates its input
    params = step_fn.shard_params(jax.tree_util.tree_map(lambda x: np.asarray(x, np.float32), params))
    opt_state = step_fn.init_opt_state(params)
    val_rows = None
    if len(val_sequences):
        val_rows = -(-batch_rows // multiple) * multiple
        val_data = pack_sft_dataset(val_sequences, row_len).as_dict()
    rng = np.random.default_rng(seed)
    order = np.empty((0,), np.int64)
    history = []
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        while len(order) < batch_rows:  # new epoch: reshuffle all rows (leftover rows roll over first)
            order = np.concatenate([order, rng.permutation(num_rows)])
        idx, order = order[:batch_rows], order[batch_rows:]
        batch = {k: v[idx] for k, v in data.items()}
        params, opt_state, metrics = step_fn(params, opt_state, batch)
        validate = val_rows is not None and ((val_every > 0 and step % val_every == 0) or step == steps)
        if step % log_every == 0 or step == steps or validate:
            m = {k: float(v) for k, v in jax.device_get(metrics).items()}
            if validate:
                m.update(imitation_metrics(model_cfg, params, val_data, val_rows, mesh, step_fn.rules))
            m["sft/tokens_per_s"] = float(batch_rows * row_len * step / (time.perf_counter() - t0))
            m["sft/packing_utilisation"] = float(packed.utilisation)
            m["sft/rows_per_step"] = float(batch_rows)
            m["compiles/sft_update"] = float(step_fn.num_compiled)  # fixed rows: 1 over the run
            history.append({"step": step, **m})
            if log_fn is not None:
                log_fn(step, m)
    return params, history


_imitation_sums_jit = jax.jit(imitation_sums, static_argnums=0)


def imitation_metrics(model_cfg: ModelConfig, params, data: dict, batch_rows: int, mesh, rules) -> dict:
    """Held-out imitation of a packed dataset ``data`` (PackedBatch.as_dict with loss_mask), ``batch_rows``
    rows at a time on ``mesh``: ``sft/val_loss`` (token-mean NLL of the teacher's actions) and
    ``sft/val_action_match`` (share of actions the greedy policy writes token for token)."""
    from orchestra_jax.parallel import shard_batch

    total = {"nll": 0.0, "tokens": 0.0, "actions": 0.0, "actions_matched": 0.0}
    num_rows = len(data["tokens"])
    for lo in range(0, num_rows, batch_rows):
        chunk = {k: v[lo:lo + batch_rows] for k, v in data.items()}
        pad = batch_rows - len(chunk["tokens"])  # padding rows: segment 0, so no loss token
        chunk = {k: np.pad(v, ((0, pad),) + ((0, 0),) * (v.ndim - 1)) for k, v in chunk.items()}
        sums = jax.device_get(_imitation_sums_jit(model_cfg, params, shard_batch(chunk, mesh, rules)))
        for k in total:
            total[k] += float(sums[k])
    return {"sft/val_loss": total["nll"] / max(total["tokens"], 1.0),
            "sft/val_action_match": total["actions_matched"] / max(total["actions"], 1.0)}


# ------------------------------------------------------------------------------------- the run's stage
def sft_dir(cfg):
    """The SFT checkpoint folder: ``cfg.sft.checkpoint_dir``, or ``<run_dir>/sft`` when that is empty."""
    from etils import epath

    return epath.Path(cfg.sft.checkpoint_dir) if cfg.sft.checkpoint_dir else epath.Path(cfg.run_dir) / "sft"


def copy_warmup_stage(prep, s, seqs, log_fn, mesh, rules):
    """``s.copy_warmup_steps`` steps of the copying task (``copy_warmup``) from ``prep.init_params``, on runs
    of the tokens the teacher data uses; logs ``copy/loss`` and ``copy/val_match`` (256 held-out runs, each
    whole run written right counting as one) through ``log_fn``. Returns the params (host arrays)."""
    from orchestra_jax.copy_warmup import copying_examples, used_token_ids

    rng = np.random.default_rng([s.seed, 7])  # its own stream: the SFT data and order stay as without it
    separator = prep.tokenizer.encode("\n")[-1]
    ids = used_token_ids(seqs, exclude=[separator])
    train = copying_examples(rng, ids, separator, s.copy_warmup_examples)
    val = copying_examples(rng, ids, separator, 256)

    def log_copy(step, m):
        if log_fn is not None:
            log_fn(step, {"stage": "copy_warmup", "copy/loss": m["sft/loss"],
                          **({"copy/val_match": m["sft/val_action_match"]} if "sft/val_action_match" in m else {})})

    params, _ = train_sft(prep.model_cfg, prep.init_params, train, steps=s.copy_warmup_steps,
                          batch_rows=s.batch_rows, row_len=s.row_len, learning_rate=s.learning_rate,
                          warmup_steps=min(s.warmup_steps, s.copy_warmup_steps), weight_decay=s.weight_decay,
                          grad_clip=s.grad_clip, seed=s.seed, log_fn=log_copy, log_every=s.log_every, mesh=mesh,
                          rules=rules, val_sequences=val, val_every=max(s.copy_warmup_steps // 4, 1))
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(params, tiled=True)  # host arrays (the whole ones on every process)


def sft_stage(cfg, prep, mesh, rules) -> tuple[Any, str]:
    """The GRPO start and its honest name: behaviour cloning from ``prep.init_params`` (random or pretrained)
    on the factory's teacher data when ``cfg.sft.enabled`` ("sft"), restored from ``<run_dir>/sft`` if that
    checkpoint exists; else the initial params (``prep.init_name``). Trained and returned on ``mesh``
    (sharded by ``rules`` like the GRPO policy), so multi-host orbax saves work; every process feeds the same
    (seeded) global batches."""
    import json
    import sys

    from etils import epath

    from orchestra_jax.checkpoint import Checkpointer
    from orchestra_jax.parallel import param_shardings as make_param_shardings
    from orchestra_jax.parallel import put_on_mesh

    param_shardings = make_param_shardings(prep.model_cfg, mesh, rules)
    if not cfg.sft.enabled:
        return put_on_mesh(prep.init_params, param_shardings), prep.init_name
    s = cfg.sft
    ckpt = Checkpointer(str(sft_dir(cfg)), keep=1, async_save=False)
    if ckpt.latest_step() is not None:
        state, _ = ckpt.restore(None, {"params": put_on_mesh(prep.init_params, param_shardings)})
        ckpt.close()
        if jax.process_index() == 0:
            print("SFT checkpoint found, SFT skipped", flush=True)
        return state["params"], "sft"
    t0 = time.perf_counter()
    seqs = encode_teacher_trajectories(prep.tokenizer, prep.teacher, cfg.rollout.tools_format)
    val_seqs = encode_teacher_trajectories(prep.tokenizer, prep.teacher_val, cfg.rollout.tools_format)
    main = jax.process_index() == 0
    path = epath.Path(cfg.run_dir) / "sft_metrics.jsonl"
    if main and path.exists():
        path.unlink()
    bar = None
    if cfg.train.progress_bar and main:
        from tqdm.auto import tqdm

        bar = tqdm(total=s.steps, desc="sft", file=sys.stdout, dynamic_ncols=True)

    def log_fn(step, m):
        if not main:
            return
        with path.open("a") as f:
            f.write(json.dumps({"step": step, **m}) + "\n")
        if bar is not None and "sft/loss" in m:  # (the copying warm-up's lines have their own keys)
            bar.n = step
            extra = {"val_match": f"{m['sft/val_action_match']:.3f}"} if "sft/val_action_match" in m else {}
            bar.set_postfix(loss=f"{m['sft/loss']:.3f}", p=f"{m['sft/mean_token_prob']:.3f}", **extra)
            bar.refresh()

    params = prep.init_params
    if s.copy_warmup_steps > 0:
        params = copy_warmup_stage(prep, s, seqs, log_fn, mesh, rules)
    params, _ = train_sft(prep.model_cfg, params, seqs, steps=s.steps, batch_rows=s.batch_rows, row_len=s.row_len,
                          learning_rate=s.learning_rate, warmup_steps=s.warmup_steps, weight_decay=s.weight_decay,
                          grad_clip=s.grad_clip, seed=s.seed, log_fn=log_fn, log_every=s.log_every,
                          mesh=mesh, rules=rules, val_sequences=val_seqs, val_every=s.val_every)
    if bar is not None:
        bar.close()
    placed = jax.device_put(params, param_shardings)  # already there: the same mesh and rules
    ckpt.save(s.steps, {"params": placed}, force=True)
    ckpt.close()
    if main:
        print(f"SFT done on {len(seqs)} teacher trajectories from the {prep.init_name} start "
              f"({time.perf_counter() - t0:.0f}s)", flush=True)
    return placed, "sft"
