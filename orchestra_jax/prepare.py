"""What every stage of a run needs, made once per run_dir: env, training task file, SFT teacher data,
tokenizer, the model config and its initial (float32) parameters.

    <run_dir>/config.yaml           resolved config of the run
    <run_dir>/tokenizer/            tokenizer.json (trained on the env's own text unless cfg.tokenizer)
    <run_dir>/data/train_tasks.jsonl, data/sft_trajectories.jsonl (the factory's pass@k teacher data),
    data/sft_val_trajectories.jsonl (the same on held-out val tasks: SFT's imitation metrics)
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np
from etils import epath

from orchestra_jax.config import Config, to_dict
from orchestra_jax.data.tasks import read_jsonl, write_jsonl
from orchestra_jax.model import ModelConfig, init_params


@dataclasses.dataclass
class Prepared:
    """The env, tokenizer, model config, initial params (host, float32), the training task file and the SFT
    teacher trajectories (envs.baselines.Trajectory; empty when SFT is off)."""

    env: Any
    tokenizer: Any
    model_cfg: ModelConfig
    init_params: Any
    init_name: str  # "random" or "pretrained": what the params are before SFT
    train_path: str
    teacher: list
    teacher_val: list = dataclasses.field(default_factory=list)  # on held-out val tasks: imitation metrics only


def save_config(cfg: Config, record: bool = True) -> None:
    """Records the config in <run_dir>/config.yaml; a run_dir made with a different training config is
    refused with the differing keys named, unless train.allow_config_change (run_dir.check_resume)."""
    from orchestra_jax.run_dir import check_resume

    epath.Path(cfg.run_dir).mkdir(parents=True, exist_ok=True)
    check_resume(cfg.run_dir, to_dict(cfg), allow_change=cfg.train.allow_config_change,
                 write=record and jax.process_index() == 0)


def teacher_data(cfg: Config, env, split: str = "train") -> list:
    """Pass@k-filtered teacher trajectories of the factory on sft.num_tasks training tasks, cached in
    <run_dir>/data/sft_trajectories.jsonl (identical on every process: seeded); with ``split="val"``, on
    sft.val_tasks held-out tasks (data/sft_val_trajectories.jsonl), never trained on."""
    from orchestra_jax.envs.factory import read_trajectories, teacher_dataset, write_trajectories

    name, seed, n = {"train": ("sft_trajectories.jsonl", 10_000, cfg.sft.num_tasks),
                     "val": ("sft_val_trajectories.jsonl", 20_000, cfg.sft.val_tasks)}[split]
    path = epath.Path(cfg.run_dir) / "data" / name
    if path.exists():
        return read_trajectories(str(path))
    tasks = env.sample_tasks(cfg.sft.seed + seed, n, split=split)
    trajs = teacher_dataset(env, tasks, seed=cfg.sft.seed, k=cfg.sft.teacher_samples, teachers=cfg.sft.teachers)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_trajectories(str(path), trajs)
    return read_trajectories(str(path))  # the same objects every process reads


def prepare_tokenizer(cfg: Config, texts_fn):
    """``cfg.tokenizer`` if given, else <run_dir>/tokenizer, else a BPE trained deterministically on
    ``texts_fn()`` (the env's own text) and saved there."""
    from orchestra_jax.text.tokenizer import load_tokenizer, train_tokenizer

    if cfg.tokenizer:
        return load_tokenizer(cfg.tokenizer)
    folder = epath.Path(cfg.run_dir) / "tokenizer"
    if (folder / "tokenizer.json").exists():
        return load_tokenizer(str(folder))
    train_tokenizer(texts_fn(), vocab_size=cfg.tokenizer_vocab_size).save(str(folder))
    return load_tokenizer(str(folder))


def init_model(cfg: Config, tokenizer) -> tuple[ModelConfig, Any, str]:
    """(model_cfg, float32 params, name) before SFT: random init of model.*, or a local HF checkpoint whose
    architecture comes from its config.json and whose dtype / remat / attention backend come from model.*."""
    if cfg.init.startswith("hf:"):
        from orchestra_jax.model.hf import load_hf_checkpoint

        folder = cfg.init[3:]
        try:
            model_cfg, params = load_hf_checkpoint(folder, dtype=cfg.model.dtype, remat=cfg.model.remat,
                                                   attention_backend=cfg.model.attention_backend,
                                                   param_dtype="float32")
        except (ValueError, FileNotFoundError) as e:
            raise ValueError(f"config error at init: hf:{folder}: {str(e).splitlines()[0]}") from None
        if model_cfg.vocab_size < tokenizer.vocab_size:
            raise ValueError(f"config error at init: hf:{folder} has vocab {model_cfg.vocab_size} < tokenizer "
                             f"vocab {tokenizer.vocab_size}")
        return model_cfg, params, "pretrained"
    model_cfg = cfg.model
    if model_cfg.vocab_size < tokenizer.vocab_size:
        raise ValueError(f"config error at model.vocab_size: {model_cfg.vocab_size} < tokenizer vocab "
                         f"{tokenizer.vocab_size} ({tokenizer.source})")
    # jitted: eager flax init dispatches hundreds of small ops (tens of seconds on a busy CPU)
    params = jax.jit(init_params, static_argnums=0)(model_cfg, jax.random.PRNGKey(cfg.train.seed))
    return model_cfg, params, "random"


def prepare(cfg: Config, record: bool = True) -> Prepared:
    """Env, task pool (written once, read through grain), teacher data, tokenizer, initial params."""
    from orchestra_jax.envs import make_env
    from orchestra_jax.text.chat import render_prompt

    save_config(cfg, record)  # record=False (a re-evaluation): check the run's record, never rewrite it
    env = make_env(cfg.env)
    train_path = epath.Path(cfg.run_dir) / "data" / "train_tasks.jsonl"

    def corpus():
        tasks = env.tasks_from_dicts(read_jsonl(str(train_path))[:256])
        _, prompts = env.reset(tasks, cfg.train.seed)
        texts = [render_prompt(p["messages"], p.get("tools"), tools_format=cfg.rollout.tools_format)
                 for p in prompts]
        for tr in teacher[:2000]:
            texts += list(tr.actions) + list(tr.observations)
        return texts

    # process 0 writes the run's files (run_dir is shared storage in a multi-host job), the others read them
    teacher, teacher_val, tokenizer = [], [], None
    for turn in ("writer", "readers"):
        if (turn == "writer") == (jax.process_index() == 0):
            if not train_path.exists():
                tasks = env.sample_tasks(cfg.train.seed, cfg.train.num_tasks, "train")
                write_jsonl(str(train_path), [t.to_dict() for t in tasks])
            teacher = teacher_data(cfg, env) if cfg.sft.enabled else []
            if cfg.sft.enabled and cfg.sft.val_tasks > 0:
                teacher_val = teacher_data(cfg, env, split="val")
            tokenizer = prepare_tokenizer(cfg, corpus)
        _sync(f"prepare-{turn}")
    model_cfg, params, name = init_model(cfg, tokenizer)
    n = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(params))
    if jax.process_index() == 0:
        print(f"run_dir {cfg.run_dir} | tokenizer {tokenizer.vocab_size} ids | model {n / 1e6:.2f}M params "
              f"({name}, compute {model_cfg.dtype}, float32 masters)", flush=True)
    return Prepared(env, tokenizer, model_cfg, params, name, str(train_path), teacher, teacher_val)


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
