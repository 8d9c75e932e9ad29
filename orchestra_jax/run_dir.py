"""The run directory's record of the config its checkpoints were made with, and the resume check.

``<run_dir>/config.yaml`` is written at the first start. Every later start with the same run_dir compares
the new config with it (``check_resume``): a change to anything that shapes the training (model, algo,
reward, env and task data, rollout, SFT, tokenizer, seeds, batch shape) is refused with the differing keys
named, because resuming would silently mix two experiments; unless the caller allows it explicitly, and
then each change is appended to ``<run_dir>/config_changes.jsonl`` (old and new value) before the record is
updated. Changes that only affect how the run is observed or how far it goes (logging, evaluation, the
number of steps, checkpoint cadence, the mesh and process layout) pass silently.

Paths go through ``etils.epath`` so ``gs://bucket/run`` works as a run_dir (as in orbax).
"""
from __future__ import annotations

import json
import os
import time
from typing import Any, Mapping

import yaml
from etils import epath

CONFIG_FILE = "config.yaml"
CHANGES_FILE = "config_changes.jsonl"

# Dotted-key prefixes whose change does not alter what is trained (everything else is training-affecting,
# so a key added to the config later is protected by default).
NON_TRAINING_PREFIXES = (
    "run_dir", "eval.", "distributed.", "mesh.",
    "train.steps", "train.log_every", "train.samples_every", "train.num_samples", "train.progress_bar",
    "train.wandb_", "train.checkpoint_every", "train.checkpoint_keep", "train.async_checkpoint",
    "train.allow_config_change", "train.max_consecutive_skips", "train.alert_",
)


class ConfigChangeError(ValueError):
    """Resuming a run directory with a config that changes the training."""


def as_path(path: str | os.PathLike) -> epath.Path:
    """An ``epath.Path``: remote URLs (``gs://...``) as they are, local paths made absolute (orbax needs it)."""
    text = os.fspath(path)
    if "://" in text:
        return epath.Path(text)
    return epath.Path(os.path.abspath(text))


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists stay values (compared whole)."""
    out = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def affects_training(key: str) -> bool:
    return not any(key == p or key.startswith(p) for p in NON_TRAINING_PREFIXES)


def config_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{dotted key: (old, new)}`` for every leaf that differs (a missing side is ``"<absent>"``)."""
    a, b = flatten(old), flatten(new)
    missing = "<absent>"
    same = lambda x, y: json.dumps(x, sort_keys=True, default=str) == json.dumps(y, sort_keys=True, default=str)
    return {k: (a.get(k, missing), b.get(k, missing)) for k in sorted(set(a) | set(b))
            if not same(a.get(k, missing), b.get(k, missing))}


def read_record(run_dir: str | os.PathLike) -> dict | None:
    """The recorded config of ``run_dir`` (None when there is none); a broken file raises naming it."""
    path = as_path(run_dir) / CONFIG_FILE
    if not path.exists():
        return None
    try:
        record = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigChangeError(f"{path}: the recorded config is not valid YAML ({e}); "
                                f"restore it or start a new run_dir") from None
    if not isinstance(record, dict):
        raise ConfigChangeError(f"{path}: the recorded config is not a mapping; restore it or start a new run_dir")
    return record


def write_record(run_dir: str | os.PathLike, cfg: Mapping[str, Any]) -> None:
    """Writes ``cfg`` as the run's config record (temp file + rename where the filesystem allows)."""
    folder = as_path(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(json.loads(json.dumps(cfg, default=str)), sort_keys=False)
    tmp = folder / f"{CONFIG_FILE}.tmp{os.getpid()}"
    tmp.write_text(text)
    tmp.replace(folder / CONFIG_FILE)


def check_resume(run_dir: str | os.PathLike, cfg: Mapping[str, Any], allow_change: bool = False,
                 write: bool = True) -> dict[str, tuple[Any, Any]]:
    """Compares ``cfg`` (a plain dict) with the run's record, then records it.

    Returns the training-affecting changes that were accepted (empty when none). Raises ConfigChangeError
    naming every training-affecting key that differs, with both values, unless ``allow_change``; then the
    changes are appended to ``config_changes.jsonl``. ``write=False`` checks only (processes other than 0).
    """
    record = read_record(run_dir)
    cfg = json.loads(json.dumps(cfg, default=str))  # the form the record has on disk
    diff = {} if record is None else config_diff(record, cfg)
    refused = {k: v for k, v in diff.items() if affects_training(k)}
    if refused and not allow_change:
        shown = "; ".join(f"{k}: {o!r} -> {n!r}" for k, (o, n) in list(refused.items())[:8])
        more = f" (+{len(refused) - 8} more)" if len(refused) > 8 else ""
        raise ConfigChangeError(
            f"run_dir {as_path(run_dir)} was made with a different config; refusing to resume with changed "
            f"training keys: {shown}{more}. Use a new run_dir, or pass train.allow_config_change=true to "
            f"continue anyway (the change is then recorded in {CHANGES_FILE})")
    if write:
        if refused:
            line = json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                               "changes": {k: {"old": o, "new": n} for k, (o, n) in refused.items()}},
                              default=str)
            path = as_path(run_dir) / CHANGES_FILE
            old = path.read_text() if path.exists() else ""
            path.write_text(old + line + "\n")
        write_record(run_dir, cfg)
    return refused
