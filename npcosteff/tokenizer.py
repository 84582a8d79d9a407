"""WordPiece tokenizer of a BERT checkpoint, over the `tokenizers` library and its `tokenizer.json`.

A checkpoint folder's ``tokenizer.json`` holds the whole pipeline: normalizer (lower case,
accents), pre-tokenizer (split on white space and punctuation), the WordPiece model and the
post-processor that adds special tokens::

    single sentence:  [CLS] A [SEP]            token_type_ids  0 0..0 0
    sentence pair:    [CLS] A [SEP] B [SEP]    token_type_ids  0 0..0 0 1..1 1

`Tokenizer` runs that pipeline, truncates to ``max_length`` tokens (special tokens included)
and pads with NumPy. Truncation of a pair is *longest first*, the rule of Hugging Face's
tokenizers, so the ids are the same as those of ``transformers.AutoTokenizer`` on the same
folder: with a budget of ``max_length - 3`` sentence tokens, the shorter sentence keeps up to
half the budget (rounded down) and the longer one takes the rest, both cut at their ends
(on equal lengths the second sentence counts as the longer). It is the same as removing
tokens one at a time from the end of the longer sentence.

Example::

    tok = Tokenizer.from_pretrained()                  # the packaged MiniLM
    batch = tok(["a fine film ."], max_length=128)     # dict of (B, T) int64 arrays
    batch = tok(["a man sings ."], ["a man is singing ."])          # sentence pairs
"""

from __future__ import annotations

import os
from typing import Iterable, Sequence

import numpy as np
import tokenizers

from npcosteff.pretrained import default_model_dir

TOKENIZER_FILE = "tokenizer.json"
PADDING_CHOICES = ("longest", "max_length")
# [CLS] A [SEP] B [SEP]: a pair adds three special tokens; max_length must leave room for them.
MIN_MAX_LENGTH = 3


def pad_sequences(input_ids: Sequence[np.ndarray], token_type_ids: Sequence[np.ndarray],
                  length: int, pad_token_id: int = 0) -> dict[str, np.ndarray]:
    """Right-pad ragged token lists into (B, length) int64 arrays.

    Args:
        input_ids: B one-dimensional integer arrays (or lists), each at most `length` long.
        token_type_ids: B arrays of the same lengths as `input_ids`.
        length: T, the padded length.
        pad_token_id: id written into the padding positions of ``input_ids``.

    Returns:
        ``input_ids`` (B, T), ``attention_mask`` (B, T) with 1 on real tokens and 0 on
        padding, ``token_type_ids`` (B, T) with 0 on padding (as in BERT).
    """
    batch_size = len(input_ids)
    if len(token_type_ids) != batch_size:
        raise ValueError(f"input_ids has {batch_size} sequences but token_type_ids has "
                         f"{len(token_type_ids)}")
    ids = np.full((batch_size, length), pad_token_id, dtype=np.int64)   # (B, T)
    types = np.zeros((batch_size, length), dtype=np.int64)              # (B, T)
    mask = np.zeros((batch_size, length), dtype=np.int64)               # (B, T)
    for b, (seq, seq_types) in enumerate(zip(input_ids, token_type_ids)):
        n = len(seq)
        if n > length:
            raise ValueError(f"sequence {b} has {n} tokens, more than the padded length {length}")
        if len(seq_types) != n:
            raise ValueError(f"sequence {b} has {n} input ids but {len(seq_types)} token type ids")
        ids[b, :n] = seq
        types[b, :n] = seq_types
        mask[b, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


class Tokenizer:
    """BERT WordPiece tokenizer that returns NumPy arrays.

    Attributes:
        vocab_size: V, the number of token ids (special tokens included).
        pad_token_id, cls_token_id, sep_token_id, unk_token_id: ids of the special tokens.
    """

    def __init__(self, backend: tokenizers.Tokenizer):
        """Wrap a `tokenizers.Tokenizer`; its own truncation and padding settings are turned
        off (a checkpoint's file may fix them, e.g. padding to 128), as they are set per call."""
        self._backend = backend
        self._backend.no_truncation()
        self._backend.no_padding()
        self.vocab_size = backend.get_vocab_size(with_added_tokens=True)
        self.pad_token_id = self._special_id("[PAD]")
        self.cls_token_id = self._special_id("[CLS]")
        self.sep_token_id = self._special_id("[SEP]")
        self.unk_token_id = self._special_id("[UNK]")

    def _special_id(self, token: str) -> int:
        token_id = self._backend.token_to_id(token)
        if token_id is None:
            raise ValueError(f"the tokenizer's vocabulary has no {token} token; a BERT "
                             "WordPiece tokenizer.json is expected")
        return int(token_id)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike | None = None) -> "Tokenizer":
        """Load ``<path>/tokenizer.json`` (path None: the packaged MiniLM checkpoint)."""
        folder = default_model_dir() if path is None else os.fspath(path)
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"tokenizer folder {folder!r} does not exist")
        file = os.path.join(folder, TOKENIZER_FILE)
        if not os.path.isfile(file):
            raise FileNotFoundError(f"tokenizer folder {folder!r} has no {TOKENIZER_FILE}")
        return cls(tokenizers.Tokenizer.from_file(file))

    def save(self, folder: str | os.PathLike) -> str:
        """Write ``<folder>/tokenizer.json`` (creating the folder); returns the file's path."""
        folder = os.fspath(folder)
        os.makedirs(folder, exist_ok=True)
        file = os.path.join(folder, TOKENIZER_FILE)
        tmp = file + ".tmp"
        self._backend.save(tmp)
        os.replace(tmp, file)   # atomic: a crash never leaves a half-written tokenizer.json
        return file

    # ------------------------------------------------------------------ encoding

    @staticmethod
    def _check_texts(texts, name: str) -> list[str]:
        if isinstance(texts, str):
            raise ValueError(f"{name} must be a list of strings, got a single string; wrap it "
                             "in a list")
        texts = list(texts)
        if not texts:
            raise ValueError(f"{name} is empty: give at least one text")
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise ValueError(f"{name}[{i}] is {type(text).__name__} {text!r}, not a string")
        return texts

    def _split_inputs(self, texts, text_pair) -> tuple[list[str], list[str] | None]:
        """(texts_a, texts_b or None) from a list of strings, a list of pairs, or two lists."""
        if isinstance(texts, str):
            raise ValueError("texts must be a list of strings or of (str, str) pairs, got a "
                             "single string; wrap it in a list")
        texts = list(texts)
        if not texts:
            raise ValueError("texts is empty: give at least one text")
        if text_pair is not None:
            texts_a = self._check_texts(texts, "texts")
            texts_b = self._check_texts(text_pair, "text_pair")
            if len(texts_a) != len(texts_b):
                raise ValueError(f"texts has {len(texts_a)} entries but text_pair has "
                                 f"{len(texts_b)}")
            return texts_a, texts_b
        if all(isinstance(t, (tuple, list)) for t in texts):
            for i, pair in enumerate(texts):
                if len(pair) != 2:
                    raise ValueError(f"texts[{i}] has {len(pair)} elements; a pair has 2")
            texts_a = self._check_texts([p[0] for p in texts], "first texts of the pairs")
            texts_b = self._check_texts([p[1] for p in texts], "second texts of the pairs")
            return texts_a, texts_b
        return self._check_texts(texts, "texts"), None

    def encode_batch(self, texts, text_pair=None, *, max_length: int = 128,
                     truncation: bool = True) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Token ids without padding: one int64 array per text (or pair).

        Args:
            texts: list of str, or list of (str, str) pairs.
            text_pair: optional list of second sentences (then `texts` are the first ones).
            max_length: most tokens per sequence, special tokens included (>= 3).
            truncation: cut sequences to `max_length` (longest first for pairs); without
                truncation a longer sequence is an error.

        Returns:
            (input_ids, token_type_ids): two lists of B one-dimensional int64 arrays.
        """
        if not isinstance(max_length, (int, np.integer)) or isinstance(max_length, bool):
            raise ValueError(f"max_length must be an integer, got {max_length!r}")
        if max_length < MIN_MAX_LENGTH:
            raise ValueError(f"max_length={max_length} is too small: [CLS] A [SEP] B [SEP] "
                             f"needs at least {MIN_MAX_LENGTH} tokens")
        texts_a, texts_b = self._split_inputs(texts, text_pair)
        inputs = texts_a if texts_b is None else list(zip(texts_a, texts_b))
        if truncation:
            # The library's longest-first rule is the one Hugging Face tokenizers use.
            self._backend.enable_truncation(int(max_length), strategy="longest_first")
        try:
            encodings = self._backend.encode_batch(inputs, add_special_tokens=True)
        finally:
            self._backend.no_truncation()
        input_ids = [np.asarray(e.ids, dtype=np.int64) for e in encodings]
        token_type_ids = [np.asarray(e.type_ids, dtype=np.int64) for e in encodings]
        if not truncation:
            for i, ids in enumerate(input_ids):
                if len(ids) > max_length:
                    raise ValueError(f"text {i} has {len(ids)} tokens, more than max_length="
                                     f"{max_length}; pass truncation=True or a larger "
                                     "max_length")
        return input_ids, token_type_ids

    def __call__(self, texts, text_pair=None, *, max_length: int = 128,
                 padding: str = "longest", truncation: bool = True) -> dict[str, np.ndarray]:
        """Tokenize, truncate and pad a batch.

        Args:
            texts: list of str, or list of (str, str) pairs.
            text_pair: optional list of second sentences.
            max_length: most tokens per sequence, special tokens included.
            padding: ``"longest"`` pads to the longest sequence of the batch,
                ``"max_length"`` to `max_length`.
            truncation: see `encode_batch`.

        Returns:
            ``input_ids``, ``attention_mask``, ``token_type_ids``: (B, T) int64 arrays.
        """
        if padding not in PADDING_CHOICES:
            raise ValueError(f"padding must be one of {PADDING_CHOICES}, got {padding!r}")
        input_ids, token_type_ids = self.encode_batch(texts, text_pair, max_length=max_length,
                                                      truncation=truncation)
        if padding == "max_length":
            length = int(max_length)
        else:
            length = max(len(ids) for ids in input_ids)
        return pad_sequences(input_ids, token_type_ids, length, self.pad_token_id)

    # ------------------------------------------------------------------ decoding

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """Text of a sequence of ids; by default [CLS], [SEP] and [PAD] are dropped."""
        ids = [int(i) for i in np.asarray(ids, dtype=np.int64).reshape(-1)]
        for i in ids:
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"token id {i} is outside the vocabulary [0, {self.vocab_size})")
        return self._backend.decode(ids, skip_special_tokens=skip_special_tokens)

    def convert_ids_to_tokens(self, ids: Iterable[int]) -> list[str]:
        """WordPiece strings of the ids (e.g. ``['[CLS]', 'un', '##fl', ...]``)."""
        return [self._backend.id_to_token(int(i)) for i in ids]

    def __repr__(self) -> str:
        return (f"Tokenizer(vocab_size={self.vocab_size}, pad={self.pad_token_id}, "
                f"cls={self.cls_token_id}, sep={self.sep_token_id})")
