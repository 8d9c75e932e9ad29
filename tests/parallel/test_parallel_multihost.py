"""Two local processes joined by jax.distributed (4 CPU devices each) train like one process."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

import parallel_common as pc
from orchestra_jax.rl.step import token_logprobs

HERE = Path(__file__).resolve().parent
STEPS = 3
TIMEOUT_S = 420


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def single_process_run():
    device = jax.devices()[0]
    optimizer = pc.optimizer()
    params = jax.device_put(pc.params(), device)
    opt_state = jax.jit(optimizer.init)(params)
    update = pc.single_device_update()
    batch = pc.batch()
    history = []
    for _ in range(STEPS):
        params, opt_state, metrics = update(params, opt_state, batch)
        history.append(pc.to_floats(metrics))
    return history, params


def test_two_processes_match_one(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_", "SLURM_", "TPU_"))}
    env.update(XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")]), ORCHESTRA_DISTRIBUTED="")
    coordinator = f"127.0.0.1:{free_port()}"
    procs = [subprocess.Popen([sys.executable, str(HERE / "multihost_worker.py"), coordinator, "2", str(i),
                               str(tmp_path), str(STEPS)], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=TIMEOUT_S)[0])
    except subprocess.TimeoutExpired:
        for proc in procs:
            proc.kill()
        pytest.fail(f"2-process jax.distributed run did not finish within {TIMEOUT_S} s (hang?)")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    for i, (proc, out) in enumerate(zip(procs, outputs)):
        assert proc.returncode == 0, f"process {i} failed:\n{out[-4000:]}"

    result = json.loads((tmp_path / "metrics.json").read_text())
    # Each process fed a different half of the rows.
    assert result["rows"] == [0, pc.ROWS // 2]
    assert json.loads((tmp_path / "rows_1.json").read_text()) == [pc.ROWS // 2, pc.ROWS]
    assert result["agreed_rows"] == [7, 9]  # rl.batch.agree_max: every process packs the largest row count
    assert result["agreed_lens"] == [512, 512, 128]  # rl.batch.agree_max_each: per bucket, the largest length

    want_history, want_params = single_process_run()
    assert len(result["history"]) == STEPS
    for step, (got, want) in enumerate(zip(result["history"], want_history)):
        assert got.keys() == want.keys()
        for key in want:
            np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-5, err_msg=f"step {step} {key}")
    assert want_history[0]["loss"] != want_history[-1]["loss"]  # the steps did change the model
    saved = np.load(tmp_path / "params.npz")
    flat = {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(want_params)[0]}
    assert saved.files and set(saved.files) == set(flat)
    for key in flat:
        np.testing.assert_allclose(saved[key], flat[key], rtol=1e-5, atol=1e-5, err_msg=key)
    batch = pc.batch()
    want_logp, _ = jax.jit(token_logprobs, static_argnums=0)(pc.MODEL, want_params, batch["tokens"],
                                                             batch["positions"], batch["segment_ids"])
    np.testing.assert_allclose(np.load(tmp_path / "logp.npy"), np.asarray(want_logp), rtol=1e-5, atol=1e-5)
