"""End to end on a micro config: SFT -> GRPO -> checkpoint -> summary.json; resume equals an uninterrupted run."""
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from orchestra_jax.checkpoint import Checkpointer
from orchestra_jax.config import to_config
from orchestra_jax.summary import check_summary
from orchestra_jax.logging import read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
POLICIES = ("grpo", "sft", "always_strongest", "cheapest", "random", "rule_based")

MICRO = {
    "model": {"vocab_size": 1024, "hidden_size": 32, "num_layers": 1, "num_heads": 2, "num_kv_heads": 1,
              "head_dim": 16, "intermediate_size": 64},
    "rollout": {"group_size": 2, "max_turns": 2, "max_new_tokens": 24, "max_seq_len": 512,
                "tools_format": "compact"},
    "train": {"steps": 2, "tasks_per_step": 2, "num_tasks": 16, "row_len": 1024,
              "checkpoint_every": 1, "wandb_mode": "disabled", "progress_bar": False, "samples_every": 1,
              "num_samples": 2},
    "sft": {"num_tasks": 12, "teacher_samples": 1, "steps": 3, "batch_rows": 2, "row_len": 1024, "log_every": 1},
    "eval": {"num_tasks": 2, "group_size": 2},
    "algo": {"optim": {"lr": 1e-3}, "loss": {"kl_coef": 0.01}},
    "tokenizer_vocab_size": 512,
    "mesh": {"data": 1, "fsdp": 1, "tensor": 1},
}


def _cfg(run_dir, **over):
    raw = json.loads(json.dumps(MICRO))
    for section, values in over.items():
        if isinstance(values, dict):
            raw.setdefault(section, {}).update(values)
        else:
            raw[section] = values
    raw["run_dir"] = str(run_dir)
    return to_config(raw)


@pytest.fixture(autouse=True, scope="module")
def _compile_cache(tmp_path_factory):
    """Identical programs compile once across the runs of this module."""
    old = jax.config.jax_compilation_cache_dir
    jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("xla")))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    yield
    jax.config.update("jax_compilation_cache_dir", old)


def _params_of(run_dir, template):
    ck = Checkpointer(os.path.join(run_dir, "checkpoints"))
    state, data = ck.restore(None, template)
    return state, data


def test_end_to_end_micro(tmp_path):
    from orchestra_jax.train import run

    run_dir = tmp_path / "run"
    summary = run(_cfg(run_dir))
    check_summary(summary, POLICIES)
    assert summary["eval"]["start_policy"] == "sft"
    on_disk = json.load(open(run_dir / "summary.json"))
    check_summary(on_disk, POLICIES)
    for name in POLICIES:
        m = on_disk["policies"][name]
        assert 0.0 <= m["accuracy"] <= 1.0 and m["n_tasks"] == 2 and np.isfinite(m["mean_reward"])
    # scripted baselines behave as the env says: the monolith is the most expensive
    pols = on_disk["policies"]
    assert pols["always_strongest"]["mean_cost_usd"] > pols["cheapest"]["mean_cost_usd"]
    rows = read_metrics(str(run_dir))
    assert [r["step"] for r in rows] == [1, 2]
    assert all(np.isfinite(r["loss"]) for r in rows)
    for r in rows:  # the step's wall time splits into its phases (measured inside it: they sum to less)
        phases = [r["time/rollout_s"], r["time/rewards_pack_s"], r["time/update_s"]]
        assert min(phases) >= 0 and r["time/rollout_s"] > 0 and sum(phases) <= r["time/step_s"]
    sft_rows = [json.loads(l) for l in open(run_dir / "sft_metrics.jsonl")]
    assert len(sft_rows) == 3 and all(np.isfinite(r["sft/loss"]) for r in sft_rows)
    assert os.path.exists(run_dir / "tokenizer" / "tokenizer.json")
    assert os.path.exists(run_dir / "samples.jsonl")
    # checkpoint written at every step, keep=2, and restorable onto the live structure
    ck = Checkpointer(os.path.join(run_dir, "checkpoints"))
    assert ck.all_steps() == [1, 2]
    ck.close()
    # experiments/evaluate.py's path: the latest checkpoint re-evaluated gives the same numbers
    from orchestra_jax.evaluate import evaluate_run

    again = evaluate_run(_cfg(run_dir))
    assert again["eval"]["grpo_step"] == 2
    for name in POLICIES:
        assert again["policies"][name]["mean_reward"] == summary["policies"][name]["mean_reward"], name


def test_resume_equals_uninterrupted(tmp_path):
    """steps=1 then steps=2 in the same run_dir == steps=2 at once (params, opt state, metrics)."""
    from orchestra_jax.train import run

    # the default mesh (fsdp over all 8 test devices): the sharded update path, resumed
    over = {"sft": {"enabled": False}, "eval": {"enabled": False},
            "mesh": {"data": 1, "fsdp": -1, "tensor": 1}}
    full, split = tmp_path / "full", tmp_path / "split"
    run(_cfg(full, **over))
    run(_cfg(split, **over, train={"steps": 1}))
    assert [r["step"] for r in read_metrics(str(split))] == [1]
    run(_cfg(split, **over))
    a, b = read_metrics(str(full)), read_metrics(str(split))
    assert [r["step"] for r in b] == [1, 2]
    for ra, rb in zip(a, b):
        for k in ("loss", "reward/mean", "rollout/accuracy", "rollout/cost_usd", "entropy", "kl_ref", "grad_norm"):
            assert k in ra and k in rb, (k, sorted(ra))  # the metrics compared exist
            assert ra[k] == rb[k], (ra["step"], k, ra[k], rb[k])
    import orbax.checkpoint as ocp
    sa = ocp.StandardCheckpointer().restore(os.path.join(full, "checkpoints", "2", "state"))
    sb = ocp.StandardCheckpointer().restore(os.path.join(split, "checkpoints", "2", "state"))
    la, lb = jax.tree_util.tree_leaves(sa), jax.tree_util.tree_leaves(sb)
    assert len(la) == len(lb) > 0
    for x, y in zip(la, lb):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.slow
def test_kill9_mid_training_then_rerun_matches(tmp_path):
    """A real SIGKILL during GRPO; rerunning the same command resumes and ends like an uninterrupted run."""
    def cmd(run_dir):
        over = [f"run_dir={run_dir}", "sft.enabled=false", "eval.enabled=false",
                "train.steps=6", "train.checkpoint_every=1", "train.wandb_mode=disabled", "train.progress_bar=false",
                "train.tasks_per_step=2", "train.num_tasks=16", "rollout.group_size=2", "rollout.max_turns=2",
                "rollout.max_new_tokens=24", "rollout.max_seq_len=512", "rollout.tools_format=compact",
                "train.row_len=1024", "tokenizer_vocab_size=512",
                "model.vocab_size=1024", "model.hidden_size=32", "model.num_layers=1", "model.num_heads=2",
                "model.num_kv_heads=1", "model.head_dim=16", "model.intermediate_size=64"]
        return [sys.executable, os.path.join(ROOT, "experiments", "train.py"), *over]

    full, killed = tmp_path / "full", tmp_path / "killed"
    subprocess.run(cmd(full), check=True, timeout=900, cwd=ROOT)
    proc = subprocess.Popen(cmd(killed), cwd=ROOT)
    deadline = time.time() + 900
    while time.time() < deadline:  # wait until step 3 is in metrics.jsonl, then kill -9
        path = killed / "metrics.jsonl"
        if path.exists() and sum(1 for _ in open(path)) >= 3:
            break
        time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL  # it was killed mid-run, not finished
    assert sum(1 for _ in open(killed / "metrics.jsonl")) < 6
    subprocess.run(cmd(killed), check=True, timeout=900, cwd=ROOT)
    a, b = read_metrics(str(full)), read_metrics(str(killed))
    assert [r["step"] for r in b] == list(range(1, 7))
    for k in ("loss", "reward/mean", "rollout/accuracy", "entropy"):
        assert a[-1][k] == b[-1][k], k


@pytest.mark.slow  # ~2.5 min on 2 shared cores (bf16 + remat compiles)
def test_hf_start_with_model_overrides_then_sft_then_grpo(tmp_path):
    """init=hf:DIR on a tiny Qwen3 folder: the architecture comes from its config.json, dtype and remat from
    model.*; SFT runs on top of it (its own switch), then GRPO; the summary names the start honestly."""
    from orchestra_jax.model import ModelConfig, init_params
    from orchestra_jax.model.hf import save_hf_checkpoint
    from orchestra_jax.prepare import prepare
    from orchestra_jax.train import run

    hf_cfg = ModelConfig(vocab_size=1024, hidden_size=48, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=16,
                         intermediate_size=96, qk_norm=True, tie_word_embeddings=True)
    folder = tmp_path / "qwen3_tiny"
    save_hf_checkpoint(str(folder), hf_cfg, init_params(hf_cfg, jax.random.PRNGKey(3)), architecture="qwen3")
    over = {"init": f"hf:{folder}", "model": {"dtype": "bfloat16", "remat": True, "hidden_size": 32},
            "train": {"steps": 1, "samples_every": 0}, "sft": {"steps": 2},
            "eval": {"num_tasks": 1, "group_size": 2}}
    cfg = _cfg(tmp_path / "run", **over)
    prep = prepare(cfg)
    m = prep.model_cfg
    assert (m.hidden_size, m.dtype, m.remat, m.param_dtype, prep.init_name) == (48, "bfloat16", True, "float32",
                                                                                   "pretrained")
    summary = run(cfg)
    assert set(summary["policies"]) >= {"grpo", "sft"} and summary["eval"]["start_policy"] == "sft"
    assert np.isfinite(read_metrics(str(tmp_path / "run"))[0]["loss"])
    # without SFT the start is the pretrained checkpoint, and is called so
    from orchestra_jax.sft import sft_stage
    from orchestra_jax.parallel import make_rules
    from orchestra_jax.train import build_mesh

    no_sft = _cfg(tmp_path / "run2", **{**over, "sft": {"enabled": False}})
    prep2 = prepare(no_sft)
    _, name = sft_stage(no_sft, prep2, build_mesh(no_sft), make_rules(no_sft.mesh))
    assert name == "pretrained"
