"""sft: behaviour cloning runs on the same sharded mesh path as GRPO; a mesh of 8 equals one device."""
from collections import Counter

import jax
import numpy as np
import pytest

from orchestra_jax.model import ModelConfig, init_params
from orchestra_jax.parallel import MeshConfig, make_mesh, make_rules
from orchestra_jax.sft import train_sft


def _sequences(n=48, vocab=64, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        length = int(rng.integers(12, 40))
        tokens = rng.integers(1, vocab, length).astype(np.int32)
        mask = (np.arange(length) >= length // 2).astype(np.int32)  # loss on the second half
        out.append((tokens, mask))
    return out


def test_sft_on_an_fsdp_mesh_of_8_equals_one_device():
    cfg = ModelConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
                      intermediate_size=64)
    params = jax.tree_util.tree_map(np.asarray, init_params(cfg, jax.random.PRNGKey(0)))
    kw = dict(steps=4, batch_rows=8, row_len=64, learning_rate=1e-2, warmup_steps=1, weight_decay=0.01,
              grad_clip=1.0, seed=0, log_every=1)
    one, hist_one = train_sft(cfg, params, _sequences(), **kw)
    mesh = make_mesh(MeshConfig(data=2, fsdp=4, tensor=1))
    eight, hist_eight = train_sft(cfg, params, _sequences(), mesh=mesh, rules=make_rules(()), **kw)
    assert len(jax.tree_util.tree_leaves(eight)[0].sharding.device_set) == 8  # trained on the mesh
    for a, b in zip(jax.tree_util.tree_leaves(one), jax.tree_util.tree_leaves(eight)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
    np.testing.assert_allclose([h["sft/loss"] for h in hist_one], [h["sft/loss"] for h in hist_eight], rtol=1e-5)
    assert hist_one[-1]["sft/loss"] < hist_one[0]["sft/loss"]  # it learns
    # params moved from the start (the input was not donated away either)
    assert max(float(np.abs(np.asarray(a) - b).max()) for a, b in
               zip(jax.tree_util.tree_leaves(one), jax.tree_util.tree_leaves(params))) > 1e-3


def _tiny_cfg(vocab=64):
    return ModelConfig(vocab_size=vocab, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
                       intermediate_size=64)


def _spans(mask):
    """(start, end) of the maximal runs of 1 in mask (end exclusive)."""
    out, start = [], None
    for t, m in enumerate(list(mask) + [0]):
        if m and start is None:
            start = t
        if not m and start is not None:
            out.append((start, t))
            start = None
    return out


def test_imitation_metrics_equal_a_per_sequence_reference():
    from orchestra_jax.model import Policy
    from orchestra_jax.sft import imitation_metrics, pack_sft_dataset

    cfg = _tiny_cfg(vocab=8)  # 8 ids: a random model's argmax hits some actions
    params = init_params(cfg, jax.random.PRNGKey(3))
    rng = np.random.default_rng(1)
    seqs = []
    for _ in range(11):
        length = int(rng.integers(10, 30))
        mask = np.zeros(length, np.int32)
        for _ in range(3):  # up to three separate actions, never at position 0 (nothing predicts it)
            a = int(rng.integers(1, length - 1))
            mask[a:a + int(rng.integers(1, 4))] = 1
        seqs.append((rng.integers(0, 8, length).astype(np.int32), mask))  # a small alphabet: some argmax hits
    nll, tokens, actions, matched = 0.0, 0, 0, 0
    for toks, mask in seqs:
        logits = Policy(cfg).apply({"params": params}, toks[None], np.arange(len(toks))[None],
                                   np.ones((1, len(toks)), np.int32))[0]
        logp = np.asarray(jax.nn.log_softmax(np.asarray(logits, np.float32), axis=-1))
        for s, e in _spans(mask):
            actions += 1
            matched += all(int(np.argmax(logp[t - 1])) == toks[t] for t in range(s, e))
            nll -= sum(logp[t - 1, toks[t]] for t in range(s, e))
            tokens += e - s
    data = pack_sft_dataset(seqs, 64).as_dict()
    mesh = make_mesh(MeshConfig(data=1, fsdp=1, tensor=1), jax.devices()[:1])
    m = imitation_metrics(cfg, params, data, 2, mesh, make_rules(()))  # 2 rows at a time: padded chunks too
    assert 0 < matched < actions  # the reference exercises both outcomes
    assert m["sft/val_action_match"] == matched / actions
    np.testing.assert_allclose(m["sft/val_loss"], nll / tokens, rtol=1e-5)


def test_held_out_action_match_rises_when_the_action_is_learnable():
    # the action copies the sequence's first token: learnable, so held-out imitation goes from chance to ~1
    rng = np.random.default_rng(0)

    def copy_task(n):
        out = []
        for _ in range(n):
            body = rng.integers(2, 12, 9).astype(np.int32)
            out.append((np.concatenate([body, [1], body[:1]]).astype(np.int32), np.r_[np.zeros(10), 1].astype(np.int32)))
        return out

    cfg = _tiny_cfg(vocab=16)
    params = jax.tree_util.tree_map(np.asarray, init_params(cfg, jax.random.PRNGKey(0)))
    _, hist = train_sft(cfg, params, copy_task(256), steps=200, batch_rows=8, row_len=64, learning_rate=1e-2,
                        warmup_steps=10, weight_decay=0.0, grad_clip=1.0, seed=0, log_every=100,
                        val_sequences=copy_task(64), val_every=100)
    assert [h["step"] for h in hist] == [100, 200]
    assert hist[-1]["sft/val_action_match"] > 0.9 and hist[-1]["sft/val_loss"] < 0.3


def test_sft_loss_on_selected_targets_equals_the_full_logits_loss():
    from orchestra_jax.sft import loss_targets, next_token_logprobs, pack_sft_dataset, sft_loss

    cfg = _tiny_cfg()
    params = init_params(cfg, jax.random.PRNGKey(1))
    data = pack_sft_dataset(_sequences(n=20), 64).as_dict()
    batch = dict(data, **loss_targets(data))
    assert batch["target_tokens"].shape[1] < 64  # the head runs on fewer positions than the row holds
    logp = np.asarray(next_token_logprobs(cfg, params, data["tokens"], data["positions"], data["segment_ids"]))
    mask = (data["loss_mask"] > 0) & (data["positions"] > 0) & (data["segment_ids"] > 0)
    loss, m = sft_loss(cfg, params, batch)
    assert m["sft/tokens"] == mask.sum()
    np.testing.assert_allclose(float(loss), -logp[mask].mean(), rtol=1e-5)
    np.testing.assert_allclose(float(m["sft/mean_token_prob"]), np.exp(logp[mask]).mean(), rtol=1e-5)
    g_sel = jax.grad(lambda p: sft_loss(cfg, p, batch)[0])(params)
    g_ref = jax.grad(lambda p: -(next_token_logprobs(cfg, p, data["tokens"], data["positions"],
                                                     data["segment_ids"]) * mask).sum() / mask.sum())(params)
    for a, b in zip(jax.tree_util.tree_leaves(g_sel), jax.tree_util.tree_leaves(g_ref)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=1e-4)


def _load_experiment(name):
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[1] / "experiments" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sft_imitation_by_tool_keeps_only_that_tools_actions():
    from types import SimpleNamespace

    script = _load_experiment("sft_imitation")
    rng = np.random.default_rng(0)
    mask = np.array([0, 0, 1, 1, 0, 0, 1, 1, 1, 0, 1, 0, 0, 1, 1], np.float32)
    assert script.action_runs(mask) == _spans(mask)
    tokens = rng.integers(1, 50, len(mask)).astype(np.int32)
    call = '<tool_call>\n{{"name": "{}", "arguments": {{"model": "model-2"}}}}\n</tool_call>'
    tr = SimpleNamespace(actions=[call.format(n) for n in ("search", "answer", "search", "call_expert")],
                         task={"task_id": "t"})
    (kept_tokens, kept_mask), = script.only_tool([(tokens, mask)], [tr], "search")
    np.testing.assert_array_equal(kept_tokens, tokens)
    assert script.action_runs(kept_mask) == [(2, 4), (10, 11)]
    assert script.only_tool([(tokens, mask)], [tr], "respond") == []  # no such action: the sequence is dropped
    with pytest.raises(ValueError, match="4 loss-token runs for 3 actions"):
        script.only_tool([(tokens, mask)], [SimpleNamespace(actions=tr.actions[:3], task={"task_id": "t"})], "search")


@pytest.mark.parametrize("layout", ["first", "last", "each", "after"])
def test_binding_probe_menus_target_the_key_lines_digit(layout):
    """Every probe layout asks for the digit of the one line holding the queried key; with ``after`` that
    digit is the token right after the key in the menu (the induction lookup), with ``each`` right before."""
    probe = _load_experiment("binding_probe")
    rng = np.random.default_rng(3)
    for _ in range(50):
        tokens, mask = probe.menu_example(rng, layout, extra=3)
        assert mask.sum() == 1 and mask[-1] == 1
        target = int(tokens[-1])
        key = int(tokens[-2] if layout == "after" else tokens[-3])
        lines = np.split(tokens[:-4], np.flatnonzero(tokens[:-4] == probe.NL) + 1)[:5]
        holding = [line for line in lines if key in line]
        assert len(holding) == 1 and probe.DIGIT <= target < probe.DIGIT + 5
        assert list(holding[0]).count(target) == {"first": 1, "last": 1, "each": 5, "after": 5}[layout]
        at = list(tokens[:-4]).index(key)
        if layout == "after":
            assert tokens[at + 1] == target
        elif layout == "each":
            assert tokens[at - 1] == target


def test_binding_probe_recall_examples_target_each_keys_value():
    """The recall task's targets are the values, each the one paired with the key just before it; every key
    is queried once, in a shuffled order, and the pair counts span 4..12."""
    probe = _load_experiment("binding_probe")
    rng = np.random.default_rng(0)
    sizes = set()
    for _ in range(200):
        tokens, mask = probe.induction_example(rng)
        sep = int(np.flatnonzero(tokens == probe.NL)[0])
        pairs = dict(zip(tokens[:sep:2].tolist(), tokens[1:sep:2].tolist()))
        assert len(pairs) == sep // 2 and sorted(tokens[sep + 1::2].tolist()) == sorted(pairs)
        assert mask[:sep + 1].sum() == 0 and mask[sep + 1::2].sum() == 0 and mask[sep + 2::2].all()
        for q in range(sep + 1, len(tokens), 2):
            assert tokens[q + 1] == pairs[int(tokens[q])]
        sizes.add(sep // 2)
    assert sizes == set(range(4, 13))


def test_binding_probe_repeat_examples_target_the_repeat():
    probe = _load_experiment("binding_probe")
    tokens, mask = probe.repeat_example(np.random.default_rng(0))
    np.testing.assert_array_equal(tokens[:20], tokens[21:])
    assert tokens[20] == probe.NL and tokens[:20].min() >= probe.FIRST_ATTR
    assert mask.tolist() == [0] * 21 + [1] * 20


def test_sft_imitation_slots_score_the_slot_digit_against_a_naive_reference():
    from orchestra_jax.model import Policy
    from orchestra_jax.text.tokenizer import train_tokenizer

    script = _load_experiment("sft_imitation")
    call = '{{"name": "search", "arguments": {{"model": "model-{}"}}}}'
    tok = train_tokenizer(["Models: model-1 model-2 model-3 model-4 model-5 3B 8B " + call.format(k) for k in range(1, 6)]
                          * 10, vocab_size=300)
    rng = np.random.default_rng(1)
    seqs, teacher_digits = [], []
    for _ in range(12):
        prompt = tok.encode(f"Models: model-{rng.integers(1, 6)} 3B model-{rng.integers(1, 6)} 8B ")
        tokens, mask = list(prompt), [0] * len(prompt)
        for _ in range(int(rng.integers(1, 4))):
            k = int(rng.integers(1, 6))
            teacher_digits.append(k)
            action = tok.encode(call.format(k))
            tokens += action + tok.encode(" 8B ")
            mask += [1] * len(action) + [0] * len(tok.encode(" 8B "))
        seqs.append((np.asarray(tokens, np.int32), np.asarray(mask, np.int32)))
    cfg = _tiny_cfg(vocab=320)
    params = jax.tree_util.tree_map(np.asarray, init_params(cfg, jax.random.PRNGKey(2)))
    # a little behaviour cloning on these sequences, so the greedy policy writes slot digits, not all the same
    params, _ = train_sft(cfg, params, seqs, steps=150, batch_rows=4, row_len=256, learning_rate=1e-2,
                          warmup_steps=5, weight_decay=0.0, grad_clip=1.0, seed=0)
    got = script.slot_choices(cfg, params, tok, seqs)
    assert len(got["greedy_slots"]) >= 2 and 0 < got["slot_match"] < 1  # the comparison below is not vacuous
    # reference: one unpadded forward per sequence; the slot digit found in each action's decoded text
    greedy = []
    for tokens, mask in seqs:
        logits = Policy(cfg).apply({"params": params}, tokens[None], np.arange(len(tokens))[None],
                                   np.ones((1, len(tokens)), np.int32))[0]
        for lo, hi in script.action_runs(mask):
            text = ""
            for i in range(lo, hi):
                text += tok.decode([int(tokens[i])])
                if text.endswith("model-"):  # '"model": "model-' -> the slot digit is next
                    guess = tok.decode([int(np.argmax(logits[i]))])
                    greedy.append(int(guess) if guess in "12345" and guess else 0)
                    break
    assert got["calls"] == len(teacher_digits) == len(greedy)
    assert got["slot_match"] == pytest.approx(np.mean(np.asarray(teacher_digits) == np.asarray(greedy)))
    assert got["teacher_slots"] == dict(sorted(Counter(teacher_digits).items()))
    assert got["greedy_slots"] == dict(sorted(Counter(greedy).items()))
    assert got["best_constant_share"] == max(Counter(teacher_digits).values()) / len(teacher_digits)
