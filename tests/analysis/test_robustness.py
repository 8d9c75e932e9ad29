"""The robustness wrapper against the unwrapped env: identities at rate 0, exact effects at rate 1."""
import numpy as np
import pytest

from orchestra_jax.analysis.behaviours import behaviour_frequencies
from orchestra_jax.analysis.robustness import Perturbation, PerturbedEnv
from orchestra_jax.envs.baselines import make_policy, rollout, run_policy
from orchestra_jax.text.chat import format_tool_call, parse_tool_call


@pytest.fixture(scope="module")
def episodes(qa_env):
    tasks = qa_env.sample_tasks(3, 30, split="test")
    return [t for t in tasks for _ in range(2)]


def _same(a, b):
    for f in ("solved", "cost_usd", "latency_s", "n_turns", "n_invalid", "features"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f), err_msg=f)


@pytest.mark.parametrize("kind", ["tool_errors", "tool_timeouts", "latency_spikes", "search_injection",
                                  "noisy_search"])
def test_rate_zero_is_the_plain_env(qa_env, episodes, kind):
    plain = run_policy(qa_env, "rule_based", episodes, seed=4)
    perturbed = run_policy(PerturbedEnv(qa_env, Perturbation(kind, rate=0.0)), "rule_based", episodes, seed=4)
    assert len(perturbed.solved) == len(plain.solved) == len(episodes)
    _same(perturbed, plain)  # np.testing.assert_array_equal on every outcome field


def test_every_call_failing_solves_nothing_and_charges_timeouts(qa_env, episodes):
    env = PerturbedEnv(qa_env, Perturbation("tool_timeouts", rate=1.0, timeout_s=30.0))
    res = run_policy(env, "rule_based", episodes, seed=4)
    assert not res.solved.any()
    assert np.all(res.n_invalid == 0)  # the failures are the tools', not the policy's
    # scripted policies send no orchestrator tokens, so every second is a timeout
    np.testing.assert_allclose(res.latency_s, 30.0 * res.n_turns)
    log = env.collected_call_log()
    assert all(e["error"].startswith("Error: tool") for ep in log for e in ep)
    fr = behaviour_frequencies(log)
    assert fr["giving_up"] == 1.0


def test_latency_spikes_at_rate_one_multiply_latency(qa_env, episodes):
    plain = run_policy(qa_env, "cheapest", episodes, seed=4)
    spiked = run_policy(PerturbedEnv(qa_env, Perturbation("latency_spikes", rate=1.0, spike_factor=10.0)),
                        "cheapest", episodes, seed=4)
    np.testing.assert_allclose(spiked.latency_s, 10.0 * plain.latency_s, rtol=1e-9)
    np.testing.assert_array_equal(spiked.solved, plain.solved)


def test_partial_errors_are_seeded_and_hurt(qa_env, episodes):
    p = Perturbation("tool_errors", rate=0.3)
    a = run_policy(PerturbedEnv(qa_env, p), "rule_based", episodes, seed=4)
    b = run_policy(PerturbedEnv(qa_env, p), "rule_based", episodes, seed=4)
    _same(a, b)
    plain = run_policy(qa_env, "rule_based", episodes, seed=4)
    assert a.n_turns.sum() > plain.n_turns.sum()  # failed calls are retried


class Renaming:
    """rule_based on the original names, translated to the drifted schema shown in the prompt."""

    def __init__(self, env, suffix):
        self.base, self.suffix, self.name = make_policy("rule_based", env), suffix, "renaming"

    def act(self, prompt, history, rng):
        s = self.suffix
        orig = {**prompt, "tools": [{**t, "function": {**t["function"], "name": t["function"]["name"][:-len(s)]}}
                                    for t in prompt["tools"]]}
        hist = []
        for a, o in history:
            for k in ("search", "enhance_reasoning", "answer", "model"):
                a = a.replace(f'"{k}{s}"', f'"{k}"')
            hist.append((a, o))
        call = parse_tool_call(self.base.act(orig, hist, rng))
        return format_tool_call(call.name + s, {k + s: v for k, v in call.arguments.items()})


def test_schema_drift_renames_and_maps_back(qa_env, episodes):
    env = PerturbedEnv(qa_env, Perturbation("schema_drift"))
    _, prompts = env.reset(episodes[:2], 4)
    names = [t["function"]["name"] for t in prompts[0]["tools"]]
    assert names and all(n.endswith("_v2") for n in names)
    assert all(list(t["function"]["parameters"]["properties"]) == ["model_v2"] for t in prompts[0]["tools"])
    # a policy calling the old names fails; one that reads the new schema plays exactly the plain episodes
    old = run_policy(env, "rule_based", episodes, seed=4)
    assert not old.solved.any() and old.n_invalid.sum() > 0
    plain = run_policy(qa_env, "rule_based", episodes, seed=4)
    adapted, trajs = rollout(PerturbedEnv(qa_env, Perturbation("schema_drift")), Renaming(qa_env, "_v2"), episodes, seed=4)
    _same(adapted, plain)
    assert all('"answer_v2"' in t.actions[-1] for t in trajs)


def test_noisy_search_hides_every_found_document_and_costs_accuracy(qa_env):
    tasks = qa_env.sample_tasks(3, 120, split="test")
    episodes = [t for t in tasks for _ in range(2)]
    factual = np.array([t.domain == "factual" for t in episodes])
    assert 20 < factual.sum() < len(episodes)
    plain = run_policy(qa_env, "rule_based", episodes, seed=4)
    env = PerturbedEnv(qa_env, Perturbation("noisy_search", rate=1.0))
    noisy, trajs = rollout(env, make_policy("rule_based", qa_env), episodes, seed=4)
    # no hop document is ever retrieved, and every search observation is a look-alike of the task
    assert all(f == 0 for s in env.states for f in s.inner.found)
    looks = {(t.docs[t.hops + h][0]) for t in tasks for h in range(t.hops)}
    seen = [o.split("[", 1)[1].split("]", 1)[0] for tr in trajs for a, o in zip(tr.actions, tr.observations)
            if '"search"' in a and "[" in o]
    assert seen and all(e in looks for e in seen)
    # episodes without documents play exactly as in the plain env; factual accuracy falls
    for f in ("solved", "cost_usd", "latency_s", "n_turns"):
        np.testing.assert_array_equal(getattr(noisy, f)[~factual], getattr(plain, f)[~factual], err_msg=f)
    assert noisy.solved[factual].mean() < plain.solved[factual].mean() - 0.1
    assert np.all(noisy.n_invalid == plain.n_invalid)


def test_noisy_search_needs_documents():
    class NoDocs:
        def reset(self, tasks, seed, episode_ids=None):
            return object(), [{"messages": []} for _ in tasks]

    with pytest.raises(ValueError, match="noisy_search"):
        PerturbedEnv(NoDocs(), Perturbation("noisy_search")).reset([1], 0)


def test_bad_perturbation():
    with pytest.raises(ValueError, match="kind"):
        Perturbation("earthquake")
    with pytest.raises(ValueError, match="rate"):
        Perturbation("tool_errors", rate=2.0)
