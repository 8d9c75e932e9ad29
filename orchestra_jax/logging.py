"""Run logging: a tqdm progress bar on the console, ``<run_dir>/metrics.jsonl`` and wandb.

Only process 0 writes (``jax.process_index() == 0``). wandb runs ``offline`` by default (no login, no
network; files under ``<run_dir>/wandb/``; ``wandb sync`` uploads later), ``online`` when asked, and
``disabled`` writes nothing. A resumed run keeps its wandb run id (``<run_dir>/wandb_id.txt``) and drops
metric lines logged after the checkpoint it resumes from, so ``metrics.jsonl`` reads as one clean run.
Files go through ``etils.epath``, so run_dir may be ``gs://bucket/run`` (wandb's own files stay local: an
offline wandb run of a gs:// run_dir lives in ``./wandb``).
"""
from __future__ import annotations

import json
import math
import os
import sys
import uuid
from typing import Any, Sequence

import numpy as np
from etils import epath

WANDB_MODES = ("offline", "online", "disabled")
GRPO_STEP, SFT_STEP = "grpo/step", "sft/step"   # wandb step axes (define_metric); wandb's own step just counts logs
STEP_AXES = {GRPO_STEP: ("rollout/*", "reward/*", "loss", "loss/*", "calls/*", "done/*", "time/*", "throughput/*",
                         "packing/*", "update/*", "adv/*", "policy/*", "kl*", "entropy*", "compiles/*", "alert*",
                         "samples"),
             SFT_STEP: ("sft/*",)}


def to_python(value: Any) -> Any:
    """Scalars of numpy/jax to float/int; NaN/inf to None (strict JSON); nested dicts/lists kept."""
    if isinstance(value, dict):
        return {str(k): to_python(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_python(v) for v in value]
    if isinstance(value, (str, bool)) or value is None:
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    arr = np.asarray(value)
    if arr.ndim == 0:
        if arr.dtype.kind in "iub":
            return int(arr)
        f = float(arr)
        return f if math.isfinite(f) else None
    return [to_python(v) for v in arr.tolist()]


def truncate_jsonl(path: str, max_step: int) -> None:
    """Keeps only the lines of ``path`` whose ``step`` <= ``max_step`` (lines written after the checkpoint
    a run resumes from would otherwise appear twice)."""
    path = epath.Path(path)
    if not path.exists():
        return
    lines = [ln + "\n" for ln in path.read_text().splitlines() if ln.strip()]
    kept = []
    for ln in lines:
        try:
            if json.loads(ln).get("step", -1) <= max_step:
                kept.append(ln)
        except json.JSONDecodeError:  # a line cut by a kill: drop it
            continue
    path.write_text("".join(kept))


def append_text(path, text: str) -> None:
    """Appends to a local file; object stores (gs://) cannot append, so the object is rewritten."""
    path = epath.Path(path)
    if "://" in str(path):
        path.write_text((path.read_text() if path.exists() else "") + text)
        return
    with path.open("a") as f:
        f.write(text)


def read_metrics(run_dir: str) -> list[dict]:
    """All lines of ``<run_dir>/metrics.jsonl`` as dicts."""
    text = (epath.Path(run_dir) / "metrics.jsonl").read_text()
    return [json.loads(ln) for ln in text.splitlines() if ln.strip()]


class RunLogger:
    """Console (tqdm) + metrics.jsonl + wandb for one run; a no-op on processes other than 0.

    ``log(step, metrics)`` appends ``{"step": step, **metrics}`` to metrics.jsonl, shows ``console_keys``
    on the progress bar and logs everything to wandb. ``log_table`` logs a wandb.Table (sample
    trajectories) and writes the same rows to ``<run_dir>/samples.jsonl``.
    """

    def __init__(
        self,
        run_dir: str,
        config: dict | None = None,
        wandb_mode: str = "offline",
        wandb_project: str = "orchestra_jax",
        wandb_name: str | None = None,
        wandb_group: str | None = None,
        wandb_tags: Sequence[str] = (),
        total_steps: int | None = None,
        initial_step: int = 0,
        desc: str = "train",
        console_keys: Sequence[str] = (),
        is_main: bool | None = None,
        progress_bar: bool = True,
    ):
        if wandb_mode not in WANDB_MODES:
            raise ValueError(f"wandb mode must be one of {WANDB_MODES}, got {wandb_mode!r}")
        if is_main is None:
            import jax

            is_main = jax.process_index() == 0
        self.is_main = is_main
        self.run_dir = run_dir
        self.console_keys = tuple(console_keys)
        self.metrics_path = epath.Path(run_dir) / "metrics.jsonl"
        self._wandb = None
        self._bar = None
        if not is_main:
            return
        epath.Path(run_dir).mkdir(parents=True, exist_ok=True)
        truncate_jsonl(str(self.metrics_path), initial_step)
        if progress_bar:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total_steps, initial=initial_step, desc=desc, file=sys.stdout,
                             dynamic_ncols=True, leave=True)
        if wandb_mode != "disabled":
            self._wandb = self._init_wandb(config, wandb_mode, wandb_project, wandb_name, wandb_group,
                                           wandb_tags)

    def _init_wandb(self, config, mode, project, name, group, tags):
        import wandb

        id_path = epath.Path(self.run_dir) / "wandb_id.txt"
        if id_path.exists():
            run_id = id_path.read_text().strip()
        else:
            run_id = uuid.uuid4().hex[:8]
            id_path.write_text(run_id)
        os.environ.setdefault("WANDB_SILENT", "true")
        run = wandb.init(
            project=project, name=name or epath.Path(self.run_dir).name, group=group,
            tags=[str(t)[:64] for t in tags], dir=self.run_dir if "://" not in str(self.run_dir) else None, mode=mode, id=run_id, resume="allow",
            config=to_python(config or {}), settings=wandb.Settings(silent=True, console="off"),
        )
        for axis, patterns in STEP_AXES.items():  # GRPO curves on grpo/step, SFT curves on sft/step
            run.define_metric(axis)
            for pattern in patterns:
                run.define_metric(pattern, step_metric=axis)
        return run

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.is_main:
            return
        row = {"step": int(step), **to_python(metrics)}
        append_text(self.metrics_path, json.dumps(row, sort_keys=True) + "\n")
        if self._bar is not None:
            self._bar.n = int(step)
            shown = {k.split("/")[-1]: row[k] for k in self.console_keys if row.get(k) is not None}
            self._bar.set_postfix({k: f"{v:.3g}" if isinstance(v, float) else v for k, v in shown.items()},
                                  refresh=False)
            self._bar.refresh()
        if self._wandb is not None:  # on the grpo/step axis (define_metric), so SFT rows can share the run
            self._wandb.log({**{k: v for k, v in row.items() if v is not None and k != "step"},
                             GRPO_STEP: int(step)})

    def log_sft_curve(self, rows: Sequence[dict]) -> int:
        """SFT metric rows (sft_metrics.jsonl: ``{"step", "sft/...": v}``) on the ``sft/step`` axis; returns
        how many rows were logged."""
        n = 0
        if self._wandb is None:
            return n
        for row in rows:
            vals = {k: v for k, v in to_python(row).items() if k.startswith("sft/") and isinstance(v, (int, float))}
            if vals:
                self._wandb.log({SFT_STEP: int(row["step"]), **vals})
                n += 1
        return n

    def log_eval_tables(self, tables: dict[str, tuple[Sequence[str], Sequence[Sequence[Any]]]]) -> None:
        """Evaluation tables ``{name: (columns, rows)}`` as wandb.Tables named ``eval/<name>``."""
        if self._wandb is None:
            return
        import wandb

        self._wandb.log({f"eval/{name}": wandb.Table(columns=list(cols), data=[to_python(list(r)) for r in rows])
                         for name, (cols, rows) in tables.items()})

    def log_table(self, step: int, name: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """Sample trajectories: a wandb.Table plus ``<run_dir>/samples.jsonl``."""
        if not self.is_main:
            return
        append_text(epath.Path(self.run_dir) / "samples.jsonl", "".join(
            json.dumps({"step": int(step), "table": name, **dict(zip(columns, to_python(list(r))))}) + "\n"
            for r in rows))
        if self._wandb is not None:
            import wandb

            self._wandb.log({name: wandb.Table(columns=list(columns), data=[list(r) for r in rows]),
                             GRPO_STEP: int(step)})

    def summary(self, values: dict[str, Any]) -> None:
        """Final numbers into the wandb run summary (e.g. the evaluation table)."""
        if self._wandb is not None:
            for k, v in to_python(values).items():
                self._wandb.summary[k] = v

    def write(self, text: str) -> None:
        """Prints a line without breaking the progress bar."""
        if not self.is_main:
            return
        if self._bar is not None:
            self._bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._wandb is not None:
            self._wandb.finish(quiet=True) if "quiet" in _finish_params() else self._wandb.finish()
            self._wandb = None


def _finish_params():
    import inspect

    import wandb

    try:
        return inspect.signature(wandb.sdk.wandb_run.Run.finish).parameters
    except Exception:
        return {}
