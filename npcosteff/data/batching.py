"""Tokenized GLUE splits and mini-batches with dynamic padding.

`encode_split` tokenizes a whole split once (truncated to ``max_length``, not padded).
`iterate_batches` then cuts it into batches and pads each batch only to its own longest
sequence, which for GLUE's short sentences is far below ``max_length`` and saves most of the
attention's T^2 cost::

    encoded = encode_split(tokenizer, load_glue("sst2", "train", glue_dir), max_length=128)
    rng = np.random.default_rng(0)
    for epoch in range(3):
        for batch in iterate_batches(encoded, encoded.labels, 32, shuffle=True, rng=rng):
            batch["input_ids"]       # (B, T) int64, T = longest sequence of this batch
            batch["attention_mask"]  # (B, T) 1 on tokens, 0 on padding
            batch["token_type_ids"]  # (B, T)
            batch["labels"]          # (B,) int64 (float32 for STS-B), None for test splits
            batch["indices"]         # (B,) positions of the examples in the split

For evaluation, ``sort_by_length=True`` groups sequences of similar length (less padding);
``batch["indices"]`` (or `length_order`) tells where each prediction belongs, and
`restore_order` puts predictions back into the split's order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from npcosteff.tokenizer import Tokenizer, pad_sequences
from npcosteff.data.glue import GlueSplit


@dataclass
class EncodedSplit:
    """A tokenized split: one unpadded token list per example.

    Attributes:
        input_ids: N one-dimensional int64 arrays, each at most `max_length` long.
        token_type_ids: N int64 arrays of the same lengths (0 sentence A, 1 sentence B).
        labels: (N,) labels of the split, or None (test split).
        max_length: the truncation length used.
        pad_token_id: the id used to pad batches.
    """

    input_ids: list[np.ndarray]
    token_type_ids: list[np.ndarray]
    labels: np.ndarray | None
    max_length: int
    pad_token_id: int = 0

    def __post_init__(self):
        n = len(self.input_ids)
        if len(self.token_type_ids) != n:
            raise ValueError(f"{n} input_ids sequences but {len(self.token_type_ids)} "
                             "token_type_ids sequences")
        if self.labels is not None and len(self.labels) != n:
            raise ValueError(f"{n} sequences but {len(self.labels)} labels")
        if n and self.lengths.max() > self.max_length:
            longest = int(self.lengths.max())
            raise ValueError(f"a sequence has {longest} tokens, more than max_length="
                             f"{self.max_length}")

    def __len__(self) -> int:
        return len(self.input_ids)

    def subset(self, indices) -> "EncodedSplit":
        """The examples at `indices` (in that order), with their labels."""
        idx = np.asarray(indices, dtype=np.int64)
        labels = None if self.labels is None else np.asarray(self.labels)[idx]
        return EncodedSplit([self.input_ids[i] for i in idx], [self.token_type_ids[i] for i in idx], labels,
                            self.max_length, self.pad_token_id)

    @property
    def lengths(self) -> np.ndarray:
        """(N,) number of tokens of each example, special tokens included."""
        return np.fromiter((len(ids) for ids in self.input_ids), dtype=np.int64,
                           count=len(self.input_ids))


# The held-out part of a training set: what checkpoints are chosen on, never the dev set that
# is reported. Fixed per task (a shuffle seeded apart from any run's seed), so that every run,
# seed and search trial of a task holds out the same examples.
HELDOUT_FRACTION = 0.1
HELDOUT_CAP = 2000
HELDOUT_SEED = 0


def heldout_split(encoded: "EncodedSplit", fraction=HELDOUT_FRACTION, cap=HELDOUT_CAP, seed=HELDOUT_SEED):
    """(training part, held-out part) of a training split: a seeded shuffle, the last
    ``min(cap, round(fraction * n))`` examples (at least one) held out; both parts keep the
    split's order."""
    n = len(encoded)
    if n < 2:
        raise ValueError(f"a held-out part needs at least 2 training examples, got {n}")
    k = min(cap, max(1, int(round(fraction * n))))
    order = np.random.default_rng(seed).permutation(n)
    return encoded.subset(np.sort(order[:-k])), encoded.subset(np.sort(order[-k:]))


def encode_split(tokenizer: Tokenizer, split: GlueSplit, max_length: int = 128) -> EncodedSplit:
    """Tokenize every example of a split (sentence pairs for pair tasks), truncated, unpadded."""
    if len(split) == 0:
        raise ValueError(f"split {split.task}/{split.split} has no examples")
    input_ids, token_type_ids = tokenizer.encode_batch(split.texts_a, split.texts_b,
                                                       max_length=max_length, truncation=True)
    return EncodedSplit(input_ids, token_type_ids, split.labels, int(max_length),
                        tokenizer.pad_token_id)


def length_order(encoded: EncodedSplit) -> np.ndarray:
    """Permutation (N,) that visits examples from the longest to the shortest.

    The sort is stable (ties keep the split's order), so the order is deterministic. Longest
    first makes the first batch the largest, so running out of memory shows up at once.
    """
    return np.argsort(-encoded.lengths, kind="stable")


GROUP_BATCHES = 50          # batches per group sorted by length (Hugging Face's LengthGroupedSampler: 50)


def grouped_order(encoded: EncodedSplit, batch_size: int, rng: np.random.Generator) -> np.ndarray:
    """A random order (N,) whose consecutive `batch_size` runs hold examples of similar length.

    The examples are shuffled, cut into groups of ``GROUP_BATCHES * batch_size``, each group
    sorted from the longest to the shortest and cut into batches, and the batches shuffled
    (every batch but the split's last is full, as without grouping). A batch is padded to its
    longest sequence, so on a split of mixed lengths (SST-2's training phrases: 13 tokens on
    average, up to 57) a random batch is mostly padding and a grouped one is not: the same
    examples and steps for a fraction of the arithmetic. What changes is which examples share
    a batch, as with ``group_by_length`` in Hugging Face's Trainer.
    """
    order = rng.permutation(len(encoded))
    size = GROUP_BATCHES * batch_size
    batches = []
    for start in range(0, len(order), size):
        group = order[start:start + size]
        group = group[np.argsort(-encoded.lengths[group], kind="stable")]          # longest first
        batches += [group[k:k + batch_size] for k in range(0, len(group), batch_size)]
    if not batches:
        return order
    last = [batches.pop()] if len(batches[-1]) < batch_size else []             # a short batch stays last
    return np.concatenate([batches[k] for k in rng.permutation(len(batches))] + last)


def restore_order(values: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Put values computed in a permuted order back into the split's order.

    Args:
        values: (N, ...) outputs, row k belonging to example ``indices[k]``
            (e.g. the concatenated predictions of the batches).
        indices: (N,) a permutation of 0..N-1 (e.g. the concatenated ``batch["indices"]``).

    Returns:
        (N, ...) array whose row i belongs to example i.
    """
    values = np.asarray(values)
    indices = np.asarray(indices)
    n = len(indices)
    if values.shape[:1] != (n,):
        raise ValueError(f"values has shape {values.shape} but there are {n} indices")
    if not np.array_equal(np.sort(indices), np.arange(n)):
        raise ValueError(f"indices is not a permutation of 0..{n - 1}")
    out = np.empty_like(values)
    out[indices] = values
    return out


def iterate_batches(encoded: EncodedSplit, labels: np.ndarray | None, batch_size: int,
                    shuffle: bool = False, rng: np.random.Generator | None = None, *,
                    sort_by_length: bool = False, group_by_length: bool = False,
                    drop_last: bool = False) -> Iterator[dict[str, np.ndarray | None]]:
    """Yield padded mini-batches covering every example once.

    Args:
        encoded: the tokenized split.
        labels: (N,) labels (usually ``encoded.labels``), or None for unlabelled data.
        batch_size: examples per batch (the last batch may be smaller).
        shuffle: visit examples in a random order drawn from `rng` (training).
        rng: a `numpy.random.Generator`, required when shuffling; the same generator state
            gives the same batches.
        sort_by_length: visit examples from the longest to the shortest (evaluation: less
            padding); cannot be combined with `shuffle`.
        group_by_length: with `shuffle`, batches of examples of similar length (training:
            less padding): :func:`grouped_order`.
        drop_last: skip a last batch smaller than `batch_size`.

    Yields:
        dicts with ``input_ids``, ``attention_mask``, ``token_type_ids`` (B, T) int64 padded
        to the batch's longest sequence (T <= encoded.max_length), ``labels`` (B,) or None,
        and ``indices`` (B,) the examples' positions in the split.
    """
    n = len(encoded)
    if (not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool)
            or batch_size < 1):
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape[:1] != (n,):
            raise ValueError(f"labels has shape {labels.shape} but the split has {n} examples")
    if shuffle and sort_by_length:
        raise ValueError("shuffle and sort_by_length exclude each other: shuffle is for "
                         "training, sort_by_length for evaluation")
    if shuffle:
        if not isinstance(rng, np.random.Generator):
            raise ValueError("shuffle=True needs rng, a numpy.random.Generator (e.g. "
                             "np.random.default_rng(seed)), so that the order is reproducible")
        order = grouped_order(encoded, batch_size, rng) if group_by_length else rng.permutation(n)
    elif group_by_length:
        raise ValueError("group_by_length needs shuffle=True (it groups a random order by length)")
    elif sort_by_length:
        order = length_order(encoded)
    else:
        order = np.arange(n)
    for start in range(0, n, batch_size):
        indices = order[start:start + batch_size]                                  # (B,)
        if drop_last and len(indices) < batch_size:
            break
        ids = [encoded.input_ids[i] for i in indices]
        types = [encoded.token_type_ids[i] for i in indices]
        longest = max(len(seq) for seq in ids)   # dynamic padding: T of this batch only
        batch = pad_sequences(ids, types, longest, encoded.pad_token_id)         # (B, T) each
        batch["labels"] = None if labels is None else labels[indices]             # (B,)
        batch["indices"] = indices.astype(np.int64)                               # (B,)
        yield batch
