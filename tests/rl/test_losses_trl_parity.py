"""policy_loss vs trl 1.16 GRPOTrainer._compute_loss (the real method, called on a stub object).

Mapping (see orchestra_jax/rl/losses.py): trl grpo -> seq_mean_token_mean, bnpo -> token_mean,
dapo -> token_mean, dr_grpo -> dr_grpo with max_tokens = max_completion_length.
"""
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import torch  # noqa: E402  (CI installs the test extras: a missing torch must fail, not skip)
import trl.trainer.grpo_trainer as grpo_trainer  # noqa: E402

from orchestra_jax.rl.losses import LossConfig, policy_loss

B, T = 4, 7
MAX_COMPLETION = 9
TRL_TO_AGGREGATION = {"grpo": "seq_mean_token_mean", "bnpo": "token_mean", "dapo": "token_mean",
                      "dr_grpo": "dr_grpo"}


def _inputs(seed):
    rng = np.random.default_rng(seed)
    logp = rng.normal(-1.5, 0.5, (B, T)).astype(np.float32)
    # old / ref near logp, with a few large gaps so that clipping (both sides) is exercised
    old_logp = (logp + rng.normal(0, 0.4, (B, T))).astype(np.float32)
    ref_logp = (logp + rng.normal(0, 0.3, (B, T))).astype(np.float32)
    advantages = (rng.uniform(0.3, 1.5, (B,)) * np.array([1, -1, 1, -1])).astype(np.float32)
    lengths = np.array([7, 6, 5, 2])  # right-padded completions, every sequence has >= 1 token
    mask = (np.arange(T)[None, :] < lengths[:, None]).astype(np.float32)
    entropy = rng.uniform(0.1, 2.0, (B, T)).astype(np.float32)
    return logp, old_logp, ref_logp, advantages, mask, entropy


def _trl_loss_and_grad(loss_type, beta, eps_low, eps_high, entropy_coef, logp, old_logp, ref_logp, advantages,
                       mask, entropy):
    logp_t = torch.tensor(logp, dtype=torch.float64, requires_grad=True)

    def per_token_logps_and_entropies(*args, **kwargs):
        return logp_t, torch.tensor(entropy, dtype=torch.float64), None

    accelerator = types.SimpleNamespace(num_processes=1, gather=lambda x: x, gather_for_metrics=lambda x: x,
                                        reduce=lambda x, reduction="sum": x, sync_gradients=True)
    stub = types.SimpleNamespace(
        _get_per_token_logps_and_entropies=per_token_logps_and_entropies,
        aux_loss_enabled=False, top_entropy_quantile=1.0, off_policy_mask_threshold=None,
        importance_sampling_level="token", beta=beta, loss_type=loss_type, epsilon_low=eps_low,
        epsilon_high=eps_high, use_vllm=False, vllm_importance_sampling_correction=False,
        model=types.SimpleNamespace(training=True), current_gradient_accumulation_steps=1,
        max_completion_length=MAX_COMPLETION, accelerator=accelerator,
        args=types.SimpleNamespace(use_bias_correction_kl=False, delta=None, steps_per_generation=1),
        _entropy_bonus_enabled=entropy_coef != 0.0, entropy_coef=entropy_coef, use_adaptive_entropy=False,
        _metrics={"train": __import__("collections").defaultdict(list)},
    )
    inputs = {
        "prompt_ids": torch.zeros((B, 2), dtype=torch.long), "prompt_mask": torch.ones((B, 2)),
        "completion_ids": torch.zeros((B, T), dtype=torch.long),
        "completion_mask": torch.tensor(mask, dtype=torch.float64),
        "advantages": torch.tensor(advantages, dtype=torch.float64),
        "old_per_token_logps": torch.tensor(old_logp, dtype=torch.float64),
        "ref_per_token_logps": torch.tensor(ref_logp, dtype=torch.float64),
        "num_items_in_batch": torch.tensor(float(mask.sum()), dtype=torch.float64),
    }
    loss = grpo_trainer.GRPOTrainer._compute_loss(stub, None, inputs)
    loss.backward()
    return loss.item(), logp_t.grad.numpy(), stub._metrics["train"]


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
@pytest.mark.parametrize("seed", [0, 1])
def test_policy_loss_matches_trl(loss_type, seed):
    logp, old_logp, ref_logp, advantages, mask, entropy = _inputs(seed)
    beta, eps_low, eps_high = 0.04, 0.2, 0.28
    trl_loss, trl_grad, trl_metrics = _trl_loss_and_grad(loss_type, beta, eps_low, eps_high, 0.0, logp, old_logp,
                                                         ref_logp, advantages, mask, entropy)

    cfg = LossConfig(clip_low=eps_low, clip_high=eps_high, kl_estimator="k3", kl_coef=beta,
                     aggregation=TRL_TO_AGGREGATION[loss_type], max_tokens=MAX_COMPLETION)
    segment_ids = np.ones((B, T), np.int32)  # trl: one sequence per row, padding still masked by loss_mask
    adv_BT = np.broadcast_to(advantages[:, None], (B, T))

    def loss_fn(lp):
        return policy_loss(lp, old_logp, adv_BT, mask, segment_ids, cfg, ref_logp=ref_logp, entropy=entropy)

    (loss, metrics), grad = jax.value_and_grad(loss_fn, has_aux=True)(jnp.asarray(logp))
    np.testing.assert_allclose(float(loss), trl_loss, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(grad), trl_grad, rtol=1e-5, atol=1e-6)
    # the inputs exercise the clip (otherwise the test would not test it) and metrics agree with trl's
    assert trl_metrics["clip_ratio/low_mean"][0] > 0 and trl_metrics["clip_ratio/high_mean"][0] > 0
    np.testing.assert_allclose(float(metrics["clip/low_frac"]), trl_metrics["clip_ratio/low_mean"][0], atol=1e-6)
    np.testing.assert_allclose(float(metrics["clip/high_frac"]), trl_metrics["clip_ratio/high_mean"][0], atol=1e-6)
    np.testing.assert_allclose(float(metrics["kl_ref"]), trl_metrics["kl"][0], rtol=1e-5)
    np.testing.assert_allclose(float(metrics["entropy"]), trl_metrics["entropy"][0], rtol=1e-5)


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo"])
def test_entropy_bonus_matches_trl(loss_type):
    logp, old_logp, ref_logp, advantages, mask, entropy = _inputs(3)
    trl_loss, trl_grad, _ = _trl_loss_and_grad(loss_type, 0.04, 0.2, 0.2, 0.01, logp, old_logp, ref_logp,
                                               advantages, mask, entropy)
    cfg = LossConfig(kl_estimator="k3", kl_coef=0.04, aggregation=TRL_TO_AGGREGATION[loss_type],
                     max_tokens=MAX_COMPLETION, entropy_coef=0.01)
    loss, _ = policy_loss(logp, old_logp, np.broadcast_to(advantages[:, None], (B, T)), mask,
                          np.ones((B, T), np.int32), cfg, ref_logp=ref_logp, entropy=entropy)
    np.testing.assert_allclose(float(loss), trl_loss, rtol=1e-5, atol=1e-6)
