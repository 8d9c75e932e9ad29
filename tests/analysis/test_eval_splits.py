"""eval.splits / eval.robustness: one summary.json with every policy on every split, the same episodes
for all of them, and numbers that equal an independent replay of each split."""
import json

import jax
import numpy as np
import pytest

from orchestra_jax.analysis.robustness import ROBUSTNESS_SPLITS, PerturbedEnv
from orchestra_jax.config import to_config
from orchestra_jax.envs import make_env
from orchestra_jax.envs.baselines import run_policy
from orchestra_jax.evaluate import BASELINE_NAMES, evaluate_policies, evaluation_plan
from orchestra_jax.model import ModelConfig, init_params
from orchestra_jax.text.chat import render_prompt
from orchestra_jax.text.tokenizer import train_tokenizer

MODEL = {"vocab_size": 512, "hidden_size": 32, "num_layers": 1, "num_heads": 2, "num_kv_heads": 1,
         "head_dim": 16, "intermediate_size": 64}


def _cfg(run_dir, **eval_over):
    return to_config({"model": MODEL, "run_dir": str(run_dir), "tokenizer_vocab_size": 512,
                      "rollout": {"group_size": 2, "max_turns": 2, "max_new_tokens": 16, "max_seq_len": 512,
                                  "tools_format": "compact"},
                      "train": {"tasks_per_step": 2, "row_len": 512, "wandb_mode": "disabled"},
                      "eval": {"num_tasks": 6, "group_size": 2, "greedy": True, "seed": 7, **eval_over}})


@pytest.fixture(scope="module")
def setup():
    cfg = _cfg("/unused")
    env = make_env(cfg.env)
    _, prompts = env.reset(env.sample_tasks(0, 8, split="test"), 0)
    tok = train_tokenizer([render_prompt(p["messages"], p["tools"], tools_format="compact") for p in prompts], 512)
    model_cfg = ModelConfig(**MODEL)
    return env, tok, model_cfg, init_params(model_cfg, jax.random.PRNGKey(0))


def test_plan_orders_primary_then_splits_then_robustness(tmp_path):
    cfg = _cfg(tmp_path, splits=["unseen_tools", "test"], robustness=["tool_errors"])
    assert evaluation_plan(cfg) == [("test", "test", None), ("unseen_tools", "unseen_tools", None),
                                    ("tool_errors", "test", "tool_errors")]


def test_every_policy_on_every_split_in_one_summary(tmp_path, setup):
    env, tok, model_cfg, params = setup
    cfg = _cfg(tmp_path, splits=["unseen_tools", "unseen_prices"], robustness=["tool_errors", "noisy_search"],
               robustness_tasks=4)
    s = evaluate_policies(cfg, env, tok, model_cfg, {"grpo": params})
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    names = ["test", "unseen_tools", "unseen_prices", "tool_errors", "noisy_search"]
    assert list(s["splits"]) == names + ["test[:4]"] == on_disk["eval"]["splits"]
    # the robustness splits' unperturbed reference: the primary split's first 4 tasks, same episodes
    ref, full = s["splits"]["test[:4]"]["policies"]["rule_based"], s["policies"]["rule_based"]
    assert ref["n_tasks"] == 4 and full["n_tasks"] == 6
    for split in names + ["test[:4]"]:
        assert set(on_disk["splits"][split]["policies"]) == {"grpo", *BASELINE_NAMES}
    assert s["policies"] == s["splits"]["test"]["policies"] and s["primary_split"] == "test"
    assert s["splits"]["noisy_search"]["policies"]["grpo"]["n_tasks"] == 4
    assert s["splits"]["unseen_tools"]["policies"]["grpo"]["n_tasks"] == 6
    # the primary split is unchanged by evaluating more splits (same episodes, same numbers)
    alone = evaluate_policies(_cfg(tmp_path / "alone"), env, tok, model_cfg, {"grpo": params})
    assert alone["policies"]["grpo"]["accuracy"] == s["policies"]["grpo"]["accuracy"]
    assert alone["policies"]["grpo"]["mean_cost_usd"] == s["policies"]["grpo"]["mean_cost_usd"]
    # each split's baseline numbers equal an independent replay of that split's episodes
    for split, env_split, kind in [("unseen_prices", "unseen_prices", None), ("tool_errors", "test", "tool_errors"),
                                   ("test[:4]", "test", "none")]:
        tasks = env.sample_tasks(7, 6, split=env_split)[:4 if kind else 6]
        play_env = PerturbedEnv(env, ROBUSTNESS_SPLITS[kind]) if kind and kind != "none" else env
        res = run_policy(play_env, "rule_based", [t for t in tasks for _ in range(2)], seed=7)
        m = s["splits"][split]["policies"]["rule_based"]
        assert m["accuracy"] == pytest.approx(float(np.mean(res.solved)))
        assert m["mean_cost_usd"] == pytest.approx(float(np.mean(res.cost_usd)))
    # the splits really differ: unseen prices change what the cheapest baseline pays
    c = {k: s["splits"][k]["policies"]["cheapest"]["mean_cost_usd"] for k in ("test", "unseen_prices")}
    assert c["test"] != c["unseen_prices"]


def test_unknown_robustness_split_names_the_key(tmp_path):
    with pytest.raises(ValueError, match="eval.robustness"):
        _cfg(tmp_path, robustness=["earthquake"])


def test_sweep_objective_is_on_a_fixed_scale():
    from orchestra_jax.summary import sweep_objective

    s = {"policies": {"grpo": {"accuracy": 0.5, "mean_cost_usd": 0.01, "fixed_reward": 0.3, "mean_reward": 0.9}}}
    assert sweep_objective(s) == 0.3                      # not the pool-normalised mean_reward
    assert sweep_objective(s, 2) == (0.5, 0.01)           # optuna [maximize, minimize]
    assert np.isnan(sweep_objective({"policies": {}}))    # no evaluation: NaN, not a crash
    with pytest.raises(ValueError, match="directions"):
        sweep_objective(s, 3)


def test_reevaluation_with_other_settings_is_named(tmp_path):
    from orchestra_jax.config import to_dict
    from orchestra_jax.evaluate import reevaluation_name
    from orchestra_jax.summary import summary_filename
    from orchestra_jax.run_dir import write_record

    cfg = _cfg(tmp_path)
    assert reevaluation_name(cfg) is None                      # no record yet: the run's own evaluation
    write_record(str(tmp_path), json.loads(json.dumps(to_dict(cfg), default=str)))
    assert reevaluation_name(cfg) is None                      # same settings: summary.json
    assert reevaluation_name(_cfg(tmp_path, num_tasks=500, split="unseen_tools")) == \
        "eval.num_tasks=500,eval.split=unseen_tools"
    assert summary_filename(reevaluation_name(_cfg(tmp_path, splits=["a b"]))) == "summary-eval.splits=__a_b__.json"
