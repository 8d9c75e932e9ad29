"""Held-out imitation of a run's SFT checkpoint (for runs made before SFT logged it itself).

    python experiments/sft_imitation.py RUN_DIR [--by-tool] [--slots] [dotlist overrides of the run's config, e.g. sft.val_tasks=256]

Makes (or reads) <run_dir>/data/sft_val_trajectories.jsonl: the run's teachers on sft.val_tasks val-split tasks,
never trained on; prints ``sft/val_loss`` and ``sft/val_action_match`` of <run_dir>/sft, as SFT logs them
every sft.val_every steps (orchestra_jax.sft.imitation_metrics). ``--by-tool`` adds the same two figures
per tool the teacher called (``by_tool``: each scored on only that tool's actions, with their count and
``majority_share``, the match of always writing that tool's most frequent action: the level a policy that
does not read its context reaches), so a policy that learned which tool to call but not which menu entry
shows as such. ``--slots`` (slot aliases ``model-<k>``) adds ``slots``: the share of the teacher's calls whose
model-slot digit is the greedy policy's (given the teacher's history up to it), next to ``best_constant_share``
(always writing the teacher's most frequent slot) and the counts of the slots the policy writes: the binding of
a slot to its menu line, without the tool name's noise.
"""
import json
import os
import re
import sys
from collections import Counter

import jax
import jax.numpy as jnp
import numpy as np
from omegaconf import OmegaConf

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from orchestra_jax.checkpoint import Checkpointer  # noqa: E402
from orchestra_jax.config import to_config  # noqa: E402
from orchestra_jax.envs import make_env  # noqa: E402
from orchestra_jax.model import Policy, init_params  # noqa: E402
from orchestra_jax.parallel import MeshConfig, make_mesh, make_rules  # noqa: E402
from orchestra_jax.prepare import teacher_data  # noqa: E402
from orchestra_jax.sft import encode_teacher_trajectories, imitation_metrics, pack_sft_dataset  # noqa: E402
from orchestra_jax.text.tokenizer import load_tokenizer  # noqa: E402


_TOOL_NAME = re.compile(r'"name"\s*:\s*"([^"]+)"')


def tool_name(action: str) -> str | None:
    """The tool an action's call names (None when it names none)."""
    found = _TOOL_NAME.search(action)
    return found.group(1) if found else None


def action_runs(loss_mask_T: np.ndarray) -> list[tuple[int, int]]:
    """(start, end) of each maximal run of loss tokens: one per teacher action, in order."""
    on = np.concatenate([[0], (np.asarray(loss_mask_T) > 0).astype(np.int8), [0]])
    edges = np.flatnonzero(np.diff(on))
    return list(zip(edges[0::2], edges[1::2]))


def only_tool(seqs, trajectories, tool: str) -> list:
    """The sequences with the loss mask kept only on the actions that call ``tool``."""
    out = []
    for (tokens, mask), tr in zip(seqs, trajectories):
        runs = action_runs(mask)
        if len(runs) != len(tr.actions):
            raise ValueError(f"{tr.task['task_id']}: {len(runs)} loss-token runs for {len(tr.actions)} actions")
        keep = np.zeros_like(mask)
        for (lo, hi), action in zip(runs, tr.actions):
            if tool_name(action) == tool:
                keep[lo:hi] = mask[lo:hi]
        if keep.any():
            out.append((tokens, keep))
    return out


def slot_choices(model_cfg, params, tok, seqs) -> dict:
    """Per teacher action naming ``model-<k>``: the greedy (teacher-forced) slot digit vs the teacher's."""
    digits = {tok.encode(str(k))[0]: k for k in range(1, 10)}
    dash = tok.encode("-")[0]
    logits_fn = jax.jit(lambda p, t: Policy(model_cfg).apply({"params": p}, t, jnp.arange(t.shape[1])[None],
                                                             jnp.ones_like(t)))
    teacher, greedy = [], []
    for tokens, mask in seqs:
        width = 64 * -(-len(tokens) // 64)  # few distinct shapes, few compiles
        padded = np.zeros((1, width), np.int32)
        padded[0, :len(tokens)] = tokens
        pred = np.asarray(jnp.argmax(logits_fn(params, padded)[0], axis=-1))
        for lo, hi in action_runs(mask):
            at = [i for i in range(lo + 1, hi) if tokens[i] in digits and tokens[i - 1] == dash]
            if at:
                teacher.append(digits[int(tokens[at[-1]])])
                greedy.append(digits.get(int(pred[at[-1] - 1]), 0))  # 0: not a slot digit
    teacher, greedy = np.asarray(teacher), np.asarray(greedy)
    counts = Counter(teacher.tolist())
    return {"calls": len(teacher), "slot_match": float(np.mean(teacher == greedy)) if len(teacher) else 0.0,
            "best_constant_share": max(counts.values()) / len(teacher) if len(teacher) else 0.0,
            "teacher_slots": dict(sorted(counts.items())),
            "greedy_slots": dict(sorted(Counter(greedy.tolist()).items()))}


def main(argv) -> int:
    if not argv:
        sys.exit(__doc__)
    by_tool, slots = "--by-tool" in argv, "--slots" in argv
    argv = [a for a in argv if a not in ("--by-tool", "--slots")]
    run = argv[0]
    conf = OmegaConf.load(os.path.join(run, "config.yaml"))
    # runs made before sft.val_tasks existed: the defaults of conf/sft/default.yaml, then the overrides
    conf = OmegaConf.merge({"sft": {"val_tasks": 128, "val_every": 50}}, conf, OmegaConf.from_dotlist(argv[1:]))
    cfg = to_config(conf)
    ck = Checkpointer(os.path.join(run, "sft"), keep=1, async_save=False)
    if ck.latest_step() is None:
        sys.exit(f"no SFT checkpoint in {run}/sft")
    val = teacher_data(cfg, make_env(cfg.env), split="val")
    tok = load_tokenizer(os.path.join(run, "tokenizer"))
    seqs = encode_teacher_trajectories(tok, val, cfg.rollout.tools_format)
    state, _ = ck.restore(None, {"params": init_params(cfg.model, jax.random.PRNGKey(0))})
    mesh = make_mesh(MeshConfig(data=1, fsdp=1, tensor=1), jax.devices()[:1])
    data = pack_sft_dataset(seqs, cfg.sft.row_len).as_dict()
    rules = make_rules(())
    m = imitation_metrics(cfg.model, state["params"], data, cfg.sft.batch_rows, mesh, rules)
    if by_tool:
        called = [(tool_name(a), a) for tr in val for a in tr.actions]
        m["by_tool"] = {}
        for tool in sorted({t for t, _ in called if t is not None}):
            written = Counter(a for t, a in called if t == tool)
            part = pack_sft_dataset(only_tool(seqs, val, tool), cfg.sft.row_len).as_dict()
            m["by_tool"][tool] = {"actions": sum(written.values()),
                                  "majority_share": max(written.values()) / sum(written.values()),
                                  **imitation_metrics(cfg.model, state["params"], part, cfg.sft.batch_rows, mesh, rules)}
    if slots:
        m["slots"] = slot_choices(cfg.model, state["params"], tok, seqs)
    print(json.dumps({"run_dir": run, "val_trajectories": len(val), **m}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
