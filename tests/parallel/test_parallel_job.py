"""The whole job through the CLI as two processes x 4 CPU devices (jax.distributed on loopback), with a
resume in the middle, matches one process x 8 devices on the same global tasks: metrics, summary, params."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 1200
COMMON = ["sft.steps=2", "sft.num_tasks=12", "sft.teacher_samples=1", "sft.batch_rows=2", "sft.row_len=1024",
          "sft.log_every=1", "train.steps=2", "train.num_tasks=16", "train.row_len=512", "train.checkpoint_every=1",
          "train.samples_every=0", "train.wandb_mode=disabled", "train.progress_bar=false",
          "train.rollout_batch_tasks=2", "rollout.group_size=2", "rollout.max_turns=2", "rollout.max_new_tokens=24",
          "rollout.max_seq_len=512", "rollout.tools_format=compact", "eval.num_tasks=2", "eval.group_size=2",
          "tokenizer_vocab_size=512", "model.vocab_size=1024", "model.hidden_size=32", "model.num_layers=1",
          "model.num_heads=2", "model.num_kv_heads=1", "model.head_dim=16", "model.intermediate_size=64",
          # Adam's eps: float32 summation-order noise on near-zero gradients stays below 1e-5 in the params
          "algo.optim.lr=1e-3", "algo.optim.eps=1e-4", "algo.loss.kl_coef=0.01", "mesh.data=-1"]
COMPARED = ("loss", "grad_norm", "kl_ref", "entropy", "reward/mean", "reward/preference_score", "rollout/accuracy",
            "rollout/cost_usd", "rollout/episodes", "rollout/tokens_per_episode", "adv/mean", "adv/abs_mean",
            "packing/episodes", "packing/rows", "num_tokens")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(devices: int) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_", "SLURM_", "TPU_"))}
    env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu",
               ORCHESTRA_DISTRIBUTED="", PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]))
    return env


def _cli(run_dir, *extra):
    return [sys.executable, str(ROOT / "experiments" / "train.py"), f"run_dir={run_dir}", *COMMON, *extra]


def _two_processes(run_dir, *extra):
    coordinator = f"127.0.0.1:{_free_port()}"
    procs = [subprocess.Popen(_cli(run_dir, *extra, "distributed.mode=on", f"distributed.coordinator_address={coordinator}",
                                   "distributed.num_processes=2", f"distributed.process_id={i}",
                                   "distributed.initialization_timeout_s=120"),
                              env=_env(4), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    try:
        outs = [p.communicate(timeout=TIMEOUT_S)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for i, (p, out) in enumerate(zip(procs, outs)):
        assert p.returncode == 0, f"process {i} failed:\n{out[-4000:]}"


def _metrics(run_dir):
    return [json.loads(line) for line in open(Path(run_dir) / "metrics.jsonl")]


def _params(run_dir, step):
    import jax
    import orbax.checkpoint as ocp

    path = str(Path(run_dir) / "checkpoints" / str(step) / "state")
    ckptr = ocp.StandardCheckpointer()
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])  # a multi-host checkpoint read by one process
    abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                            ckptr.metadata(path).item_metadata.tree)
    tree = ckptr.restore(path, abstract)
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(tree["params"])[0]}


@pytest.mark.slow  # two CLI jobs of two processes plus one of one process: minutes on 2 shared cores
def test_two_processes_run_the_job_like_one(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run(_cli(one, "train.tasks_per_step=4"), env=_env(8), cwd=ROOT, check=True, timeout=TIMEOUT_S,
                   capture_output=True)
    _two_processes(two, "train.tasks_per_step=2", "train.steps=1")  # stop after step 1 ...
    assert [r["step"] for r in _metrics(two)] == [1]
    _two_processes(two, "train.tasks_per_step=2")  # ... and resume to step 2
    a, b = _metrics(one), _metrics(two)
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2]
    for ra, rb in zip(a, b):
        assert rb["rollout/episodes"] == 2 * 2 * 2  # tasks_per_step x group_size x processes
        for k in COMPARED:
            np.testing.assert_allclose(rb[k], ra[k], rtol=1e-5, atol=1e-5, err_msg=f"step {ra['step']} {k}")
    sa, sb = (json.load(open(d / "summary.json")) for d in (one, two))
    assert set(sa["policies"]) == set(sb["policies"]) and "sft" in sa["policies"]
    for name in sa["policies"]:
        for k in ("accuracy", "mean_cost_usd", "mean_reward"):
            np.testing.assert_allclose(sb["policies"][name][k], sa["policies"][name][k], rtol=1e-5, atol=1e-5)
    pa, pb = _params(one, 2), _params(two, 2)
    assert pa.keys() == pb.keys() and pa
    for k in pa:
        np.testing.assert_allclose(pb[k], pa[k], rtol=1e-5, atol=1e-5, err_msg=k)
