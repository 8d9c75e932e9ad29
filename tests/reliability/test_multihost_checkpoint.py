"""Two real processes (jax.distributed on CPU, 4 devices each): every host's data-iterator state is saved
and each host restores its own (not process 0's); the save decision and the stop flag agree across hosts."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_pair(tmp_path, mode):
    coordinator = f"127.0.0.1:{_free_port()}"
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu",
               PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    outs = [tmp_path / f"{mode}_{i}.json" for i in range(2)]
    procs = [subprocess.Popen([sys.executable, str(HERE / "multihost_ckpt_worker.py"), coordinator, str(i),
                               str(tmp_path / "ck"), str(outs[i]), mode], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(2)]
    logs = [p.communicate(timeout=300)[0] for p in procs]
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-3000:]
    return [json.loads(o.read_text()) for o in outs]


def test_each_host_restores_its_own_data_state(tmp_path):
    saved = _run_pair(tmp_path, "save")
    assert [s["saved_4"] for s in saved] == [True, True]
    assert [s["should_save_3"] for s in saved] == [False, False]  # not an interval step, no preemption
    assert [s["stop_requested"] for s in saved] == [True, True]  # only process 1 got the signal
    restored = _run_pair(tmp_path, "restore")
    assert [r["data"] for r in restored] == [{"next_index": 100, "host": "p0"}, {"next_index": 101, "host": "p1"}]
    assert [r["step"] for r in restored] == [4, 4]
    # rows 0-3 on process 0, rows 4-7 on process 1 (data axis over 8 devices, 4 per process)
    full = list(range(24))
    assert [r["w_local_sum"] for r in restored] == [float(sum(full[:12])), float(sum(full[12:]))]
    assert restored[0]["keys"] == ["step", "w"]
