"""Tokenizers as Hugging Face ``tokenizers`` JSON files: a deterministic locally trained byte-level BPE
(the default; no download) and loading of a real model's ``tokenizer.json`` from a local folder.

The trained tokenizer mirrors Qwen2/Qwen3's design: Qwen's pre-tokenisation regex (digits split one by
one) followed by byte-level BPE with all 256 bytes in the base alphabet, no normaliser, so every string
encodes and decodes back exactly. The chat tokens in ``SPECIAL_TOKENS`` are single ids 0..8, never split:
``<|endoftext|>`` is the pad token and ``<|im_end|>`` the end of a turn (eos).
"""
from __future__ import annotations

import json
import os
from typing import Iterable, Sequence

import tokenizers
from etils import epath
from tokenizers import decoders, models, pre_tokenizers, trainers

PAD_TOKEN = "<|endoftext|>"
EOS_TOKEN = "<|im_end|>"
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<tool_call>", "</tool_call>",
                  "<tool_response>", "</tool_response>", "<think>", "</think>")
# Control tokens (special=True, dropped by decode(skip_special_tokens=True)); the tags stay visible text,
# as in Qwen's own tokenizer.json.
_CONTROL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
# Required by the chat protocol in any tokenizer we load.
_REQUIRED_TOKENS = (PAD_TOKEN, "<|im_start|>", EOS_TOKEN)
# exercised once at load: a file the library accepts but cannot run fails there, not mid-training
_PROBE = "<|im_start|>user\nWhat is 2 + 2? caf\u00e9 \U0001f600<|im_end|>\n<tool_call>{\"name\": \"a\"}</tool_call>"
# Qwen2/Qwen3 pre-tokeniser split pattern (from their tokenizer.json).
QWEN_SPLIT_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                      r"|\s*[\r\n]+|\s+(?!\S)|\s+")
TOKENIZER_FILE = "tokenizer.json"


class Tokenizer:
    """Thin wrapper around a ``tokenizers.Tokenizer`` with the ids the chat protocol needs.

    ``encode`` never adds BOS/EOS (chat rendering writes every control token explicitly).
    """

    def __init__(self, hf_tokenizer: tokenizers.Tokenizer, source: str = "<memory>"):
        self.hf = hf_tokenizer
        self.source = source
        missing = [t for t in _REQUIRED_TOKENS if hf_tokenizer.token_to_id(t) is None]
        if missing:
            raise ValueError(f"tokenizer {source} lacks the chat tokens {missing} (needs each as one id)")
        self.pad_id = hf_tokenizer.token_to_id(PAD_TOKEN)
        self.eos_id = hf_tokenizer.token_to_id(EOS_TOKEN)

    @property
    def vocab_size(self) -> int:
        """Number of ids including added tokens (an embedding table needs at least this many rows)."""
        return self.hf.get_vocab_size(with_added_tokens=True)

    def token_id(self, token: str) -> int:
        """Id of a single vocabulary entry, meant for special tokens (e.g. ``"<tool_call>"``); ValueError if
        it is not one. (Ordinary byte-level entries are spelled in the byte alphabet, e.g. ``"Ġthe"``.)"""
        idx = self.hf.token_to_id(token)
        if idx is None:
            raise ValueError(f"{token!r} is not a single token of tokenizer {self.source}")
        return idx

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise ValueError(f"encode expects a str, got {type(text).__name__}")
        return self.hf.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        texts = list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise ValueError(f"encode_batch expects strs, item {i} is {type(t).__name__}")
        return [e.ids for e in self.hf.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """Text of ``ids``. Ids >= ``vocab_size`` (e.g. from a padded embedding table) decode to nothing,
        as in ``tokenizers``; negative ids are a ValueError."""
        ids = [int(i) for i in ids]
        if ids and min(ids) < 0:
            raise ValueError(f"cannot decode negative token id {min(ids)}")
        return self.hf.decode(ids, skip_special_tokens=skip_special_tokens)

    def to_json(self) -> str:
        return self.hf.to_str(pretty=True)

    def save(self, folder: str | os.PathLike) -> str:
        """Write ``folder/tokenizer.json`` (Hugging Face format); returns its path."""
        folder = epath.Path(os.fspath(folder))  # local or remote (gs://...)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / TOKENIZER_FILE).write_text(self.to_json())
        return os.fspath(folder / TOKENIZER_FILE)

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, source={self.source!r})"


def train_tokenizer(texts: Iterable[str], vocab_size: int = 2048) -> Tokenizer:
    """Train a byte-level BPE tokenizer on ``texts``; deterministic (same texts -> identical JSON).

    ``vocab_size`` is an upper bound including the 256 byte tokens and ``SPECIAL_TOKENS``; a small corpus
    may yield fewer merges.
    """
    min_size = 256 + len(SPECIAL_TOKENS)
    if vocab_size < min_size:
        raise ValueError(f"vocab_size {vocab_size} is below {min_size} (256 bytes + special tokens)")
    texts = list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise ValueError(f"texts[{i}] must be a str, got {type(t).__name__}")
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(tokenizers.Regex(QWEN_SPLIT_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False,
                                  special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    # Mark the tool/think tags non-special, as Qwen does, via the JSON (deterministic rewrite).
    spec = json.loads(tok.to_str())
    for entry in spec["added_tokens"]:
        entry["special"] = entry["content"] in _CONTROL_TOKENS
    tok = tokenizers.Tokenizer.from_str(json.dumps(spec))
    return Tokenizer(tok, source="train_tokenizer")


def _from_json_text(text: str, source: str) -> Tokenizer:
    """A Tokenizer from tokenizer.json text, exercised once on the chat protocol, so a file that the Rust
    library accepts but panics on later (e.g. a merge of an empty string) fails here, naming ``source``."""
    try:
        hf = tokenizers.Tokenizer.from_str(text)
        tok = Tokenizer(hf, source=source)
        tok.decode(tok.encode(_PROBE))
    except (KeyboardInterrupt, SystemExit):
        raise
    except ValueError as e:
        if str(e).startswith("tokenizer "):
            raise
        raise ValueError(f"{source} is not a valid Hugging Face tokenizer.json: {e}") from None
    except BaseException as e:  # tokenizers raises plain Exceptions and pyo3 PanicExceptions (BaseException)
        raise ValueError(f"{source} is not a valid Hugging Face tokenizer.json: {type(e).__name__}: {e}") from None
    return tok


def load_tokenizer(folder_or_file: str | os.PathLike) -> Tokenizer:
    """Load a Hugging Face ``tokenizer.json`` from a file, from a folder holding one, or from the JSON text
    itself (a str starting with ``{``).

    Missing, unreadable or corrupt files raise an error naming the path.
    """
    if isinstance(folder_or_file, str) and folder_or_file.lstrip().startswith("{"):
        return _from_json_text(folder_or_file, "JSON text passed to load_tokenizer")
    path = epath.Path(os.fspath(folder_or_file))  # local or remote (gs://...)
    if path.is_dir():
        path = path / TOKENIZER_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no tokenizer file at {path}")
    try:
        text = path.read_bytes().decode("utf-8")
        json.loads(text)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"{path} is not a readable tokenizer JSON file: {e}") from e
    return _from_json_text(text, os.fspath(path))
