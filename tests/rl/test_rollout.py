"""Multi-turn rollouts: token in / token out, masks, log-probs against a packed full forward pass.

The main test runs the real QA env. A tiny random policy never writes a valid tool call, so with the QA env
episodes only end by budgets; a small fake env (same API) that ends episodes after seeded numbers of turns
checks episodes that the env finishes at different turns.
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import orchestra_jax.rl.rollout as rollout_mod
from orchestra_jax.data.packing import pack
from orchestra_jax.envs import EnvConfig, make_env
from orchestra_jax.envs.base import Env, EpisodeResults, StepOutput, episode_rng
from orchestra_jax.envs.budget import Budget, Ledger
from orchestra_jax.model.config import ModelConfig
from orchestra_jax.model.sampling import SamplingConfig
from orchestra_jax.model.transformer import Policy, init_params
from orchestra_jax.rl.rewards import paper_reward
from orchestra_jax.rl.rollout import (DONE_FINISHED, DONE_LENGTH_BUDGET, DONE_REASONS, DONE_TURN_BUDGET,
                                      RolloutConfig, invalid_turn_tokens, rollout, rollout_to_sequences)
from orchestra_jax.text import chat
from orchestra_jax.text.tokenizer import train_tokenizer

WORDS = "alpha beta gamma delta search answer model result document price latency cost".split()


@dataclasses.dataclass(frozen=True)
class FakeTask:
    task_id: str
    domain: str
    question: str
    preference: tuple = (0.0, 0.0, 1.0, 0.5, 0.0)
    preference_text: str = ""

    def to_dict(self):
        return dataclasses.asdict(self)


@dataclasses.dataclass
class FakeState:
    tasks: list
    ledger: Ledger
    end_turn: np.ndarray
    seed: int
    received: list          # per episode: the action texts step() was given while running
    tokens_in: list
    tokens_out: list


class FakeEnv(Env):
    """Ends episode i after a seeded number of turns (1..4); observations of seeded lengths."""

    setting = "fake"
    tool_aliases = ("search-1", "answer-1")

    def __init__(self, max_turns=6):
        self.budget = Budget(max_turns=max_turns)

    def sample_tasks(self, seed, n, split="train"):
        rng = np.random.default_rng(seed)
        return [FakeTask(f"t{i}", "factual", " ".join(rng.choice(WORDS, rng.integers(3, 30)))) for i in range(n)]

    def task_from_dict(self, d):
        return FakeTask(**d)

    def reset(self, tasks, seed, episode_ids=None):
        n = len(tasks)
        end_turn = np.array([episode_rng(seed, i).integers(1, 5) for i in range(n)])
        state = FakeState(list(tasks), Ledger(n, 2, self.budget), end_turn, seed,
                          [[] for _ in range(n)], [[] for _ in range(n)], [[] for _ in range(n)])
        tools = [{"name": "search", "description": "find documents",
                  "parameters": {"type": "object", "properties": {"model": {"type": "string"}}}}]
        prompts = [{"messages": [{"role": "system", "content": "Route the task."},
                                 {"role": "user", "content": t.question}], "tools": tools} for t in tasks]
        return state, prompts

    def step(self, state, actions, policy_tokens_in=None, policy_tokens_out=None):
        n = len(actions)
        led = state.ledger
        obs, cost, lat = [""] * n, np.zeros(n), np.zeros(n)
        for i in range(n):
            if led.done[i]:
                continue
            state.received[i].append(actions[i])
            state.tokens_in[i].append(policy_tokens_in[i])
            state.tokens_out[i].append(policy_tokens_out[i])
            rng = episode_rng(state.seed, i, int(led.turns[i]) + 1)
            cost[i], lat[i] = 0.001 * (1 + rng.random()), 1.0 + rng.random()
            led.charge(i, cost[i], 10, lat[i])
            led.record_call(i, 0)
            obs[i] = " ".join(rng.choice(WORDS, rng.integers(1, 25)))
            if led.turns[i] + 1 == state.end_turn[i]:
                led.finish(i, solved=bool(rng.random() < 0.5), reason="answer")
            led.end_turn(i)
        return state, StepOutput(obs, led.done.copy(), cost, lat, np.zeros(n, np.int32), np.ones(n, bool))

    def results(self, state) -> EpisodeResults:
        pref = np.array([t.preference for t in state.tasks], np.float32)
        return state.ledger.results(self.tool_aliases, pref, [t.task_id for t in state.tasks],
                                    [t.domain for t in state.tasks])


@pytest.fixture(scope="module")
def fake_setup():
    env = FakeEnv()
    tasks = env.sample_tasks(0, 3)
    _, prompts = env.reset(tasks, 0)
    texts = 2 * [chat.render_prompt(p["messages"], p["tools"], tools_format="compact") for p in prompts]
    texts += [chat.tool_response_turn(" ".join(WORDS))] * 5 + [chat.format_tool_call("search", {"model": "m"})] * 5
    tok = train_tokenizer(texts, vocab_size=600)
    cfg = ModelConfig(vocab_size=tok.vocab_size, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                      head_dim=8, intermediate_size=64)
    params = random_params(cfg, 0, std=0.1)
    return env, tasks, tok, cfg, params


def random_params(cfg, seed, std=0.02, final_norm_scale=1.0):
    """Random parameters with init_params' structure, filled on the host (normal(std) weights, unit norm
    scales): skips init_params' eager per-op compilations, which dominate a tiny test's run time."""
    shapes = jax.eval_shape(lambda k: init_params(cfg, k), jax.random.key(0))
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = jax.tree_util.keystr(path)
        if "scale" in name:
            value = np.full(leaf.shape, final_norm_scale if "final_norm" in name else 1.0)
        elif "bias" in name:
            value = np.zeros(leaf.shape)
        else:
            value = rng.normal(0.0, std, leaf.shape)
        return jnp.asarray(value, leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def _logprobs(cfg, params, batch):
    try:
        from orchestra_jax.rl.step import token_logprobs
        logp, _ = jax.jit(token_logprobs, static_argnums=0)(
            cfg, params, jnp.asarray(batch.tokens), jnp.asarray(batch.positions), jnp.asarray(batch.segment_ids))
        return np.asarray(logp)
    except ImportError:  # pragma: no cover - before rl/step.py exists
        logits = Policy(cfg).apply({"params": params}, batch.tokens, batch.positions, batch.segment_ids)
        logp_TV = np.asarray(jax.nn.log_softmax(logits))
        out = np.zeros(batch.tokens.shape, np.float32)
        out[:, 1:] = np.take_along_axis(logp_TV[:, :-1], batch.tokens[:, 1:, None], -1)[..., 0]
        return np.where(batch.positions > 0, out, 0.0)


def _runs(mask):
    """Maximal runs [(start, end, value)] of a 0/1 mask."""
    edges = np.flatnonzero(np.diff(mask)) + 1
    starts = np.concatenate([[0], edges])
    ends = np.concatenate([edges, [len(mask)]])
    return [(int(s), int(e), int(mask[s])) for s, e in zip(starts, ends)]


def _run_recording(monkeypatch, *args):
    """rollout(*args) while recording every decode output (the raw sampled ids)."""
    calls = []
    real_decode = rollout_mod.decode

    def recording_decode(*a, **k):
        out = real_decode(*a, **k)
        rows = np.asarray(a[5])
        episode_R = np.arange(len(rows)) if k.get("row_ids_B") is None else np.asarray(k["row_ids_B"])
        calls.append((rows, np.asarray(out.tokens_BN), np.asarray(out.num_generated_B), episode_R))
        return out

    monkeypatch.setattr(rollout_mod, "decode", recording_decode)
    ro = rollout(*args)
    monkeypatch.setattr(rollout_mod, "decode", real_decode)
    return ro, calls


def check_rollout(ro, calls, env, tasks, tok, model_cfg, params, rcfg, seed):
    n = len(tasks) * rcfg.group_size
    assert ro.num_episodes == n and ro.n_groups == len(tasks)
    F = len(env.tool_aliases) + 3
    assert ro.features.shape == (len(tasks), rcfg.group_size, F)
    assert ro.solved.shape == (len(tasks), rcfg.group_size)
    assert ro.preference.shape == (len(tasks), F)
    assert all(r in DONE_REASONS for r in ro.done_reason)
    _, prompts = env.reset([t for t in tasks for _ in range(rcfg.group_size)], seed)
    eos = tok.eos_id
    for i in range(n):
        toks, mask, logp = ro.tokens[i], ro.assistant_mask[i], ro.sampled_logp[i]
        assert toks.dtype == np.int32 and len(toks) == len(mask) == len(logp) <= rcfg.max_seq_len
        # assistant tokens are exactly the ids the sampler returned, turn after turn
        sampled = [ids[r, :k[r]].tolist() for active, ids, k, episode_R in calls
                   for r in np.flatnonzero(active & (episode_R == i))]
        assert toks[mask == 1].tolist() == [t for turn in sampled for t in turn]
        assert [len(s) for s in sampled] == ro.turn_new_tokens[i][:len(sampled)].tolist()
        assert np.all(ro.turn_new_tokens[i][len(sampled):] == 0)
        assert len(sampled) in (ro.n_turns[i], ro.n_turns[i] + 1)  # + a turn cut off by max_seq_len
        # the env got the decoded text of exactly those ids
        assert ro.actions[i] == [tok.decode(s) for s in sampled]
        # non-assistant runs: the prompt, then ([<|im_end|>] +) each observation turn, then maybe <|im_end|>
        runs = _runs(mask)
        assert runs[0][2] == 0
        prompt = chat.render_prompt(prompts[i]["messages"], prompts[i]["tools"], tools_format=rcfg.tools_format)
        assert tok.decode(toks[:runs[0][1]]) == prompt
        assert int(ro.prompt_len[i]) == runs[0][1]
        obs_runs = [r for r in runs[1:] if r[2] == 0]
        for k, (s, e, _) in enumerate(obs_runs):
            text = tok.decode(toks[s:e])
            closed = "" if toks[s - 1] == eos else chat.IM_END
            if k < len(ro.observations[i]) and e < len(toks):
                assert text == closed + chat.tool_response_turn(ro.observations[i][k])
            else:  # trailing <|im_end|> appended after the final turn
                assert text == chat.IM_END and e == len(toks)
        assert np.all(logp[mask == 0] == 0.0) and np.all(logp[mask == 1] <= 0.0)
        assert np.all(ro.turn_cost_usd[i, ro.n_turns[i]:] == 0.0)
    # the sampled log-probs equal a full forward pass over the packed final sequences: the cache never diverged
    seqs, fields = rollout_to_sequences(ro)
    batch = pack(seqs, rcfg.max_seq_len, fields=fields)
    logp_ref = _logprobs(model_cfg, params, batch)
    m = batch.fields["loss_mask"] == 1
    assert m.sum() == sum(int(x.sum()) for x in ro.assistant_mask) > 0
    np.testing.assert_allclose(batch.fields["sampled_logp"][m], logp_ref[m], atol=1e-5)


@pytest.fixture(scope="module")
def qa_setup():
    env = make_env(EnvConfig(setting="qa", randomize_tools=False, randomize_prices=False))
    tasks = env.sample_tasks(0, 3)
    _, prompts = env.reset(env.sample_tasks(1, 20), 0)
    texts = [chat.render_prompt(p["messages"], p["tools"], tools_format="compact") for p in prompts]
    texts += [chat.tool_response_turn("Error: tool call is not valid JSON")] * 3
    tok = train_tokenizer(texts, vocab_size=1000)
    cfg = ModelConfig(vocab_size=tok.vocab_size, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                      head_dim=8, intermediate_size=64, tie_word_embeddings=False)
    return env, tasks, tok, cfg, stop_biased_params(cfg, tok, seed=1, stop_logit=STOP_LOGIT)


STOP_LOGIT = 3.0


def stop_biased_params(cfg, tok, seed, stop_logit):
    """Random untied params plus a constant hidden feature that adds ~stop_logit to the logits of the stop
    tokens (</tool_call>, <|im_end|>), so that a random policy ends its turns at different lengths."""
    params = random_params(cfg, seed, std=0.1)
    emb = np.array(params["embed"]["embedding"])
    emb[:, 0] = 1.0  # every token writes the same value to hidden dim 0: it dominates the normed dim 0
    head = np.array(params["lm_head"]["kernel"])
    head[0, :] = 0.0
    head[0, [tok.token_id(chat.TOOL_CALL_CLOSE), tok.eos_id]] = stop_logit
    params["embed"]["embedding"], params["lm_head"]["kernel"] = jnp.asarray(emb), jnp.asarray(head)
    return params


def test_rollout_with_qa_env(qa_setup, monkeypatch):
    env, tasks, tok, model_cfg, params = qa_setup
    rcfg = RolloutConfig(group_size=3, max_turns=4, max_new_tokens=16, max_seq_len=412, prefill_window=128,
                         tools_format="compact",
                         sampling=SamplingConfig(temperature=1.0))
    ro, calls = _run_recording(monkeypatch, model_cfg, params, env, tok, tasks, jax.random.key(1), rcfg, 7)
    check_rollout(ro, calls, env, tasks, tok, model_cfg, params, rcfg, 7)
    # the reward functions take the grouped results as they are
    rewards = paper_reward(ro.features, ro.solved, ro.preference)
    assert rewards.shape == (3, 3) and np.all(np.isfinite(np.asarray(rewards)))
    np.testing.assert_array_equal(ro.grouped(ro.results.task_ids), [[t.task_id] * 3 for t in tasks])
    # episodes of different lengths; some run out of max_seq_len (runaway: unsolved, outcome 0, env ended)
    assert len(set(ro.lengths.tolist())) > 1 and max(ro.lengths) <= rcfg.max_seq_len
    runaway = np.array([r == DONE_LENGTH_BUDGET for r in ro.done_reason])
    assert runaway.any() and not runaway.all(), ro.done_reason
    assert len(set(ro.n_turns.tolist())) > 1
    assert not ro.results.solved[runaway].any() and np.all(ro.results.features[runaway, -3] == 0.0)
    assert all(ro.results.end_reason[i] == rollout_mod.ENV_LENGTH_REASON for i in np.flatnonzero(runaway))
    np.testing.assert_allclose(ro.turn_cost_usd.sum(1), ro.results.cost_usd)
    # the random policy never writes a valid call: every turn the env took is invalid, and turn_valid says so
    np.testing.assert_array_equal(np.sum(~ro.turn_valid, axis=1), ro.results.n_invalid)
    assert np.all(ro.results.n_invalid == ro.n_turns)
    # reproducible: same key -> identical rollout; another key -> different samples
    again = rollout(model_cfg, params, env, tok, tasks, jax.random.key(1), rcfg, 7)
    assert all(np.array_equal(a, b) for a, b in zip(ro.tokens, again.tokens))
    assert all(np.array_equal(a, b) for a, b in zip(ro.sampled_logp, again.sampled_logp))
    np.testing.assert_array_equal(ro.turn_cost_usd, again.turn_cost_usd)
    assert ro.done_reason == again.done_reason
    other = rollout(model_cfg, params, env, tok, tasks, jax.random.key(2), rcfg, 7)
    assert not all(np.array_equal(a, b) for a, b in zip(ro.tokens, other.tokens))


def test_episodes_end_at_different_turns_with_fake_env(fake_setup, monkeypatch):
    env, tasks, tok, model_cfg, params = fake_setup
    rcfg = RolloutConfig(group_size=3, max_turns=3, max_new_tokens=12, max_seq_len=512, tools_format="compact",
                         sampling=SamplingConfig(temperature=1.0))
    ro, calls = _run_recording(monkeypatch, model_cfg, params, env, tok, tasks, jax.random.key(1), rcfg, 0)
    check_rollout(ro, calls, env, tasks, tok, model_cfg, params, rcfg, 0)
    state, _ = env.reset([t for t in tasks for _ in range(3)], 0)
    # episodes end at different turns and lengths, for the env's reason or the turn budget
    assert len(set(ro.n_turns.tolist())) > 1 and len(set(ro.lengths.tolist())) > 1
    assert {DONE_FINISHED, DONE_TURN_BUDGET} <= set(ro.done_reason)
    for i in range(ro.num_episodes):
        expected = min(int(state.end_turn[i]), rcfg.max_turns)
        assert ro.n_turns[i] == expected
        assert ro.done_reason[i] == (DONE_FINISHED if state.end_turn[i] <= rcfg.max_turns else DONE_TURN_BUDGET)


class HalfValidEnv(FakeEnv):
    """FakeEnv whose turns are valid or not by a seeded coin (recorded per episode)."""

    def reset(self, tasks, seed, episode_ids=None):
        state, prompts = super().reset(tasks, seed, episode_ids)
        state.valid = [[] for _ in tasks]
        return state, prompts

    def step(self, state, actions, policy_tokens_in=None, policy_tokens_out=None):
        running = ~state.ledger.done
        turns = state.ledger.turns.copy()
        state, out = super().step(state, actions, policy_tokens_in, policy_tokens_out)
        valid = np.array([episode_rng(state.seed + 99, i, int(turns[i])).random() < 0.5 for i in range(len(actions))])
        for i in np.flatnonzero(running):
            state.valid[i].append(bool(valid[i]))
        return state, dataclasses.replace(out, valid=valid)


def test_invalid_turns_are_recorded_with_their_tokens(fake_setup):
    _, tasks, tok, model_cfg, params = fake_setup
    env = HalfValidEnv()
    rcfg = RolloutConfig(group_size=3, max_turns=4, max_new_tokens=12, max_seq_len=512, tools_format="compact",
                         sampling=SamplingConfig(temperature=1.0))
    ro = rollout(model_cfg, params, env, tok, tasks, jax.random.key(3), rcfg, 0)
    state, _ = env.reset([t for t in tasks for _ in range(3)], 0)
    for _ in range(rcfg.max_turns):  # replay the env's validity coins for the turns each episode took
        env.step(state, ["x"] * ro.num_episodes, [1] * ro.num_episodes, [1] * ro.num_episodes)
    bad = invalid_turn_tokens(ro)
    for i in range(ro.num_episodes):
        n = int(ro.n_turns[i])
        assert ro.turn_valid[i, :n].tolist() == state.valid[i] and ro.turn_valid[i, n:].all()
        # the k-th run of assistant tokens is turn k; its tokens are marked iff the env refused turn k
        ones = [(s, e) for s, e, v in _runs(ro.assistant_mask[i]) if v == 1]
        assert [e - s for s, e in ones] == ro.turn_new_tokens[i, :len(ones)].tolist()
        expected = np.zeros(len(ro.tokens[i]), bool)
        for k, (s, e) in enumerate(ones):
            expected[s:e] = k < n and not state.valid[i][k]
        np.testing.assert_array_equal(bad[i], expected)
    assert 0 < sum(int(b.sum()) for b in bad) < sum(int(m.sum()) for m in ro.assistant_mask)


def test_env_sees_decoded_actions_and_orchestrator_token_counts(fake_setup, monkeypatch):
    env, tasks, tok, model_cfg, params = fake_setup
    rcfg = RolloutConfig(group_size=3, max_turns=3, max_new_tokens=12, max_seq_len=512, tools_format="compact")
    seen = {}
    real_step = env.step

    def spy_step(state, actions, policy_tokens_in=None, policy_tokens_out=None):
        seen["state"] = state
        return real_step(state, actions, policy_tokens_in, policy_tokens_out)

    monkeypatch.setattr(env, "step", spy_step)
    ro = rollout(model_cfg, params, env, tok, tasks, jax.random.key(3), rcfg, 5)
    state = seen["state"]
    for i in range(ro.num_episodes):
        assert state.received[i] == ro.actions[i]
        assert state.tokens_out[i] == ro.turn_new_tokens[i, :ro.n_turns[i]].tolist()
        # tokens in = the whole context before the turn: prompt + earlier turns + observations
        turn_starts = [s for s, e, v in _runs(ro.assistant_mask[i]) if v == 1]
        assert state.tokens_in[i] == turn_starts[:ro.n_turns[i]]
        np.testing.assert_allclose(ro.turn_cost_usd[i].sum(), ro.results.cost_usd[i])


def test_prompt_longer_than_max_seq_len_ends_at_once(fake_setup, monkeypatch):
    env, tasks, tok, model_cfg, params = fake_setup
    rcfg = RolloutConfig(group_size=1, max_turns=2, max_new_tokens=12, max_seq_len=96, tools_format="compact")
    ro, calls = _run_recording(monkeypatch, model_cfg, params, env, tok, tasks, jax.random.key(0), rcfg, 0)
    too_long = ro.prompt_len >= rcfg.max_seq_len
    assert too_long.any() and not too_long.all(), ro.prompt_len
    for i in np.flatnonzero(too_long):
        assert ro.done_reason[i] == DONE_LENGTH_BUDGET and ro.n_turns[i] == 0 and ro.actions[i] == []
        assert len(ro.tokens[i]) == rcfg.max_seq_len and not ro.assistant_mask[i].any()
        assert ro.results.end_reason[i] == rollout_mod.ENV_LENGTH_REASON and not ro.results.solved[i]
    for i in np.flatnonzero(~too_long):  # the others sample their first turn
        assert ro.assistant_mask[i].sum() > 0 and len(ro.tokens[i]) <= rcfg.max_seq_len
    seqs, fields = rollout_to_sequences(ro)
    pack(seqs, rcfg.max_seq_len, fields=fields)  # every sequence fits a row of max_seq_len


def test_rollout_config_rejects_bad_values():
    with pytest.raises(ValueError, match="RolloutConfig.group_size"):
        RolloutConfig(group_size=0)
    with pytest.raises(ValueError, match="RolloutConfig.max_seq_len"):
        RolloutConfig(max_seq_len=-5)
    assert RolloutConfig(max_new_tokens=7).sampling_config.max_new_tokens == 7


def test_prefill_window_does_not_change_the_episodes(qa_setup, fake_setup):
    """The fixed prefill window only splits the same tokens over more calls: a window of 8 (prompts of
    76-380 tokens in 10-48 calls, observations in several) and one window over the whole cache (one call
    per prefill, as the former power-of-two buckets did) give the same greedy and sampled tokens and the same
    log-probs, with the prompt shared per group or prefilled per episode (tokens equal the former bucketed
    sampler's too: checked once by hand against commit 2ff9290)."""
    for env, tasks, tok, model_cfg, params in (qa_setup, fake_setup):
        for greedy in (True, False):
            runs = []
            for window, share in ((8, True), (412, True), (8, False)):
                rcfg = RolloutConfig(group_size=3, max_turns=3, max_new_tokens=16, max_seq_len=412,
                                     prefill_window=window, share_prompt_prefill=share, tools_format="compact",
                                     sampling=SamplingConfig(greedy=greedy))
                runs.append(rollout(model_cfg, params, env, tok, tasks, jax.random.key(5), rcfg, 7))
            base = runs[0]
            assert min(base.prompt_len) > 8 * 8 and sum(base.n_turns) > len(base.n_turns)  # many windows, turns
            for other in runs[1:]:
                assert all(np.array_equal(a, b) for a, b in zip(base.tokens, other.tokens))
                for a, b in zip(base.sampled_logp, other.sampled_logp):
                    np.testing.assert_allclose(a, b, atol=1e-5)
                assert base.done_reason == other.done_reason


def test_compact_rows_drops_finished_rows_and_keeps_the_episodes_exact(fake_setup, qa_setup, monkeypatch):
    """rollout.compact_rows: once the running episodes fit in half the rows, the cache keeps only theirs.
    The episodes stay exact (check_rollout: sampled ids, transcripts, and log-probs equal to a full forward pass
    over the final sequences, so the gathered cache rows held the right history), the decode computes fewer
    rows in the later turns, and greedy episodes equal those of the uncompacted rollout."""
    from orchestra_jax.model.sampling import clear_compile_caches, compile_counts

    for env, tasks, tok, model_cfg, params in (fake_setup, qa_setup):
        base = dict(group_size=3, max_turns=4, max_new_tokens=12, max_seq_len=412, tools_format="compact")
        rcfg = RolloutConfig(**base, compact_rows=True, sampling=SamplingConfig(temperature=1.0))
        clear_compile_caches()
        ro, calls = _run_recording(monkeypatch, model_cfg, params, env, tok, tasks, jax.random.key(3), rcfg, 0)
        check_rollout(ro, calls, env, tasks, tok, model_cfg, params, rcfg, 0)
        rows_per_call = [len(c[0]) for c in calls]
        assert rows_per_call[0] == 9 and min(rows_per_call) < 9, rows_per_call  # 9 -> 5 -> 3 ...
        assert rows_per_call == sorted(rows_per_call, reverse=True)
        for active, _, _, episode_R in calls:  # every running episode has exactly one active row
            assert len(set(episode_R[active].tolist())) == int(active.sum())
        assert compile_counts()["take_rows"] >= 1
        assert len(set(ro.n_turns.tolist())) > 1
        runs = [rollout(model_cfg, params, env, tok, tasks, jax.random.key(3),
                        RolloutConfig(**base, compact_rows=compact, sampling=SamplingConfig(greedy=True)), 0)
                for compact in (False, True)]
        assert all(np.array_equal(a, b) for a, b in zip(runs[0].tokens, runs[1].tokens))
        for a, b in zip(runs[0].sampled_logp, runs[1].sampled_logp):
            np.testing.assert_allclose(a, b, atol=1e-5)
        assert runs[0].done_reason == runs[1].done_reason
        np.testing.assert_array_equal(runs[0].turn_cost_usd, runs[1].turn_cost_usd)


def test_compact_min_rows_stops_the_halving_with_the_same_episodes(fake_setup, monkeypatch):
    """rollout.compact_min_rows: compaction halves 9 -> 5 rows but not to 3 (fewer than 5), and the greedy
    episodes equal those of the uncompacted rollout."""
    env, tasks, tok, model_cfg, params = fake_setup
    base = dict(group_size=3, max_turns=4, max_new_tokens=12, max_seq_len=412, tools_format="compact",
                sampling=SamplingConfig(greedy=True))
    ro, calls = _run_recording(monkeypatch, model_cfg, params, env, tok, tasks, jax.random.key(3),
                               RolloutConfig(**base, compact_min_rows=5), 0)
    free = _run_recording(monkeypatch, model_cfg, params, env, tok, tasks, jax.random.key(3),
                          RolloutConfig(**base), 0)[1]
    assert min(len(c[0]) for c in free) < 5 <= min(len(c[0]) for c in calls) < 9  # it would have gone below
    full = rollout(model_cfg, params, env, tok, tasks, jax.random.key(3), RolloutConfig(**base, compact_rows=False), 0)
    assert all(np.array_equal(a, b) for a, b in zip(full.tokens, ro.tokens)) and full.done_reason == ro.done_reason
    with pytest.raises(ValueError, match="compact_min_rows must be a positive int"):
        RolloutConfig(compact_min_rows=0)
