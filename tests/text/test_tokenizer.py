"""Tokenizer: deterministic training (across processes), single-id special tokens, exact unicode round trip,
save/load, loading files written by `tokenizers` and by transformers, clear errors for bad files."""
import hashlib
import json
import os
import random
import subprocess
import sys

import pytest
import tokenizers
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import decoders, models, pre_tokenizers, trainers

from orchestra_jax.text.chat import format_tool_call, render_prompt, tool_response_turn
from orchestra_jax.text.tokenizer import SPECIAL_TOKENS, Tokenizer, load_tokenizer, train_tokenizer


def make_corpus(seed: int = 0, n: int = 200) -> list[str]:
    """Synthetic chat transcripts (the shape of the project's own training text)."""
    rng = random.Random(seed)
    words = ["capital", "France", "price", "search", "answer", "model", "cost", "latency", "Paris", "token",
             "héllo", "naïve", "数学", "42", "3.14", "x+y=z", "tool", "call", "query", "document"]
    out = []
    for i in range(n):
        q = " ".join(rng.choices(words, k=rng.randint(3, 12)))
        text = render_prompt([{"role": "user", "content": q}], tools=[{"name": "search", "parameters": {}}],
                             tools_format="compact")
        text += f"<think>\n{rng.choice(words)}\n</think>\n\n" + format_tool_call("search", {"query": q, "k": i})
        text += "<|im_end|>" + tool_response_turn(" ".join(rng.choices(words, k=20)))
        out.append(text)
    return out


CORPUS = make_corpus()


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return train_tokenizer(CORPUS, vocab_size=1024)


def test_special_tokens_are_fixed_single_ids(tok):
    assert [tok.token_id(t) for t in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
    assert tok.pad_id == tok.token_id("<|endoftext|>") == 0
    assert tok.eos_id == tok.token_id("<|im_end|>") == 2
    for i, t in enumerate(SPECIAL_TOKENS):
        assert tok.encode(t) == [i]
        assert tok.encode("ab" + t + "cd").count(i) == 1
        assert tok.decode([i]) == t
    assert 300 < tok.vocab_size <= 1024
    with pytest.raises(ValueError, match="not a single token"):
        tok.token_id("<tool_call> ")


def test_encode_uses_learned_merges(tok):
    text = CORPUS[3]
    ids = tok.encode(text)
    assert len(ids) < len(text.encode()) / 2  # merges learned: far fewer ids than bytes
    assert tok.decode(ids) == text
    assert tok.encode_batch(CORPUS[:3]) == [tok.encode(t) for t in CORPUS[:3]]


texts_with_specials = st.lists(st.one_of(st.text(max_size=30), st.sampled_from(SPECIAL_TOKENS)),
                               max_size=8).map("".join)


@settings(max_examples=300, deadline=None)
@given(texts_with_specials)
def test_unicode_round_trip_and_specials_never_split(tok, text):
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    for i, t in enumerate(SPECIAL_TOKENS):
        assert ids.count(i) == text.count(t)
    assert all(0 <= x < tok.vocab_size for x in ids)


def test_round_trip_awkward_strings(tok):
    for s in ["", " ", "\n\n\r\n\t", "\x00\x01\x7f", "🤖👩‍👩‍👧‍👦", "e\u0301 vs é", "\ufeffbom", "a" * 5000,
              "<|im_start|><|im_start|>", "<tool_call", "</think>>", "１２３ ٣٤٥"]:
        assert tok.decode(tok.encode(s)) == s, s


def test_training_is_deterministic_across_processes(tmp_path):
    """Same texts -> byte-identical tokenizer.json, also in fresh processes with other hash seeds."""
    corpus_file = tmp_path / "corpus.json"
    corpus_file.write_text(json.dumps(CORPUS))
    script = ("import json,sys,hashlib; from orchestra_jax.text.tokenizer import train_tokenizer; "
              "t = train_tokenizer(json.load(open(sys.argv[1])), vocab_size=1024); "
              "print(hashlib.sha256(t.to_json().encode()).hexdigest())")
    here = hashlib.sha256(train_tokenizer(CORPUS, vocab_size=1024).to_json().encode()).hexdigest()
    digests = set()
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed, "TOKENIZERS_PARALLELISM": "true"}
        out = subprocess.run([sys.executable, "-c", script, str(corpus_file)], env=env, capture_output=True,
                             text=True, check=True)
        digests.add(out.stdout.strip())
    assert digests == {here}
    # and the trained tokenizer differs when the texts do (the digest is not a constant)
    other = hashlib.sha256(train_tokenizer(make_corpus(seed=1), vocab_size=1024).to_json().encode()).hexdigest()
    assert other != here


def test_save_and_load(tok, tmp_path):
    path = tok.save(tmp_path / "tok")
    assert path == str(tmp_path / "tok" / "tokenizer.json")
    with open(path, encoding="utf-8") as f:
        assert f.read() == tok.to_json()
    for src in (tmp_path / "tok", path, tok.to_json()):
        loaded = load_tokenizer(src)
        assert loaded.to_json() == tok.to_json()
        assert loaded.encode_batch(CORPUS[:5]) == tok.encode_batch(CORPUS[:5])
        assert (loaded.pad_id, loaded.eos_id, loaded.vocab_size) == (tok.pad_id, tok.eos_id, tok.vocab_size)


def qwen_like_hf_tokenizer() -> tokenizers.Tokenizer:
    """A tokenizer built directly with `tokenizers`, special tokens appended at the END of the vocab (ids
    differ from ours) and a BOS post-processor, like real model files."""
    hf = tokenizers.Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    hf.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=600, show_progress=False,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    hf.add_special_tokens(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    hf.add_tokens(["<tool_call>", "</tool_call>", "<think>", "</think>"])
    bos = hf.token_to_id("<|im_start|>")
    hf.post_processor = tokenizers.processors.TemplateProcessing(single="<|im_start|> $A",
                                                                 special_tokens=[("<|im_start|>", bos)])
    return hf


def test_load_tokenizer_written_by_tokenizers_library(tmp_path):
    hf = qwen_like_hf_tokenizer()
    hf.save(str(tmp_path / "tokenizer.json"))
    loaded = load_tokenizer(tmp_path)
    assert loaded.pad_id == hf.token_to_id("<|endoftext|>") and loaded.eos_id == hf.token_to_id("<|im_end|>")
    assert loaded.eos_id >= 256  # appended after the trained vocab, not our 0..8 layout
    for text in CORPUS[:10] + ["héllo <tool_call>{}</tool_call><|im_end|>"]:
        # no BOS added by our encode, else the same ids as the library
        assert loaded.encode(text) == hf.encode(text, add_special_tokens=False).ids
        assert hf.encode(text).ids == [loaded.token_id("<|im_start|>")] + loaded.encode(text)  # BOS only there
        assert loaded.decode(loaded.encode(text)) == text
    with pytest.raises(ValueError, match="'<tool_response>' is not a single token"):
        loaded.token_id("<tool_response>")


def test_load_tokenizer_saved_by_transformers(tok, tmp_path):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(tokenizer_object=tok.hf, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.save_pretrained(str(tmp_path))
    assert (tmp_path / "tokenizer.json").exists()
    loaded = load_tokenizer(tmp_path)
    reloaded_hf = AutoTokenizer.from_pretrained(str(tmp_path))
    assert loaded.eos_id == reloaded_hf.eos_token_id and loaded.pad_id == reloaded_hf.pad_token_id
    for text in CORPUS[:10]:
        ids = loaded.encode(text)
        assert ids == reloaded_hf.encode(text, add_special_tokens=False)
        assert loaded.decode(ids) == reloaded_hf.decode(ids) == text


def test_bad_tokenizer_files(tmp_path, tok):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "empty" / "tokenizer.json")):
        (tmp_path / "empty").mkdir()
        load_tokenizer(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_tokenizer(tmp_path / "nope.json")
    truncated = tmp_path / "truncated.json"
    truncated.write_text(tok.to_json()[:500])
    with pytest.raises(ValueError, match="truncated.json is not a readable tokenizer JSON"):
        load_tokenizer(truncated)
    wrong = tmp_path / "wrong.json"
    wrong.write_text('{"model": {"type": "Nope"}}')
    with pytest.raises(ValueError, match="wrong.json is not a valid Hugging Face tokenizer.json"):
        load_tokenizer(wrong)
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ValueError, match="binary.json"):
        load_tokenizer(binary)
    hf = tokenizers.Tokenizer(models.BPE())  # valid file without the chat tokens
    hf.save(str(tmp_path / "bare.json"))
    with pytest.raises(ValueError, match=r"bare.json lacks the chat tokens \['<\|endoftext\|>'"):
        load_tokenizer(tmp_path / "bare.json")


def test_train_tokenizer_bad_input():
    with pytest.raises(ValueError, match="vocab_size 100 is below 265"):
        train_tokenizer(["a"], vocab_size=100)
    with pytest.raises(ValueError, match=r"texts\[1\] must be a str"):
        train_tokenizer(["a", 3])
    with pytest.raises(ValueError, match="negative token id -1"):
        train_tokenizer(["a"], vocab_size=300).decode([3, -1])
    with pytest.raises(ValueError, match="JSON text passed to load_tokenizer"):
        load_tokenizer('{"model": 1}')
    with pytest.raises(ValueError, match="encode expects a str"):
        train_tokenizer(["a"], vocab_size=300).encode(b"x")


# ------------------------------------------------------------------------------------- hostile input
import random  # noqa: E402

from hypothesis import HealthCheck  # noqa: E402

_SMALL = train_tokenizer([f"<tool_call> answer-{i} the question {i * 7} </tool_call>" for i in range(40)],
                         vocab_size=300)
_SPEC = json.loads(_SMALL.hf.to_str())
_CHAT = "<|im_start|>user\nwhat is 2+2?<|im_end|>\n<tool_call>{\"name\": \"x\"}</tool_call>"


def _mutate_spec(rng):
    """A structurally plausible but hostile tokenizer.json: one node of the JSON tree deleted, retyped, or
    set to an extreme value (negative / huge / duplicate ids, empty strings, wrong containers)."""
    spec = json.loads(json.dumps(_SPEC))
    for _ in range(rng.randint(1, 3)):
        node, key = spec, None
        path = []
        while True:
            keys = list(node.keys()) if isinstance(node, dict) else list(range(len(node))) if isinstance(node, list) else []
            if not keys or (path and rng.random() < 0.35):
                break
            key = rng.choice(keys if len(keys) < 50 else keys[:5] + [rng.choice(keys)])
            path.append((node, key))
            node = node[key]
        if not path:
            continue
        parent, key = path[-1]
        choice = rng.randrange(5)
        if choice == 0 and isinstance(parent, dict):
            del parent[key]
        elif choice == 1:
            parent[key] = rng.choice([None, True, -1, 2**40, "", [], {}, "Ġ", 3.5])
        elif choice == 2 and isinstance(parent[key], int) and not isinstance(parent[key], bool):
            parent[key] = rng.choice([-parent[key] - 1, parent[key] + 10**6, 0])
        elif choice == 3 and isinstance(parent[key], str):
            parent[key] = rng.choice(["", "<|im_end|>", parent[key] * 3, "\x00"])
        else:
            parent[key] = json.loads(json.dumps(rng.choice([_SPEC["added_tokens"][:1], {"type": "BPE"}, [1, 2]])))
    return json.dumps(spec)


@settings(max_examples=10_000, deadline=None, suppress_health_check=list(HealthCheck))
@given(seed=st.integers(0, 2**32 - 1))
def test_hostile_tokenizer_json_is_one_clear_error_or_a_working_tokenizer(seed):
    """Mutated tokenizer.json text (structural edits, or byte flips / truncation for a third of the cases):
    load_tokenizer raises one ValueError naming the source, or returns a tokenizer that encodes and decodes
    the chat protocol without raising anything else (no Rust panic escapes)."""
    rng = random.Random(seed)
    if seed % 3:
        text = _mutate_spec(rng)
    else:
        raw = bytearray(_SMALL.hf.to_str().encode())
        if rng.random() < 0.5:
            raw = raw[: rng.randrange(1, len(raw))]
        for _ in range(rng.randint(0, 3)):
            raw[rng.randrange(len(raw))] = rng.randrange(32, 127)
        text = raw.decode("utf-8", "replace")
        if not text.lstrip().startswith("{"):
            text = "{" + text
    try:
        tok = load_tokenizer(text)
    except ValueError as e:
        assert str(e).startswith(("JSON text passed to load_tokenizer", "tokenizer JSON text passed")), str(e)
        return
    ids = tok.encode(_CHAT)
    assert all(isinstance(i, int) and i >= 0 for i in ids)
    tok.decode(ids)
    assert tok.token_id("<|im_end|>") >= 0
