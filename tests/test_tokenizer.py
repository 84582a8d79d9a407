"""Tokenizer: same ids as transformers' AutoTokenizer on real GLUE sentences (the slices shipped
in the package), pairs, truncation and padding; layout of special tokens; save/load; bad input."""

import os

import numpy as np
import pytest

from npcosteff.data import load_glue
from npcosteff.pretrained import default_model_dir
from npcosteff.tokenizer import Tokenizer, pad_sequences

KEYS = ("input_ids", "attention_mask", "token_type_ids")


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.from_pretrained()


@pytest.fixture(scope="module")
def hf_tok():
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(default_model_dir())


@pytest.fixture(scope="module")
def sst2_sentences():
    return load_glue("sst2", "validation", "shipped").texts_a         # the 128 shipped dev sentences


@pytest.fixture(scope="module")
def mrpc_pairs():
    split = load_glue("mrpc", "validation", "shipped", max_examples=200)
    return split.texts_a, split.texts_b


def assert_same_as_hf(ours, theirs):
    for key in KEYS:
        expected = np.asarray(theirs[key], dtype=np.int64)
        assert ours[key].dtype == np.int64
        np.testing.assert_array_equal(ours[key], expected, err_msg=key)


@pytest.mark.parametrize("max_length,padding", [(128, "longest"), (16, "longest"),
                                                (24, "max_length"), (128, "max_length")])
def test_single_sentences_match_transformers(tok, hf_tok, sst2_sentences, max_length, padding):
    ours = tok(sst2_sentences, max_length=max_length, padding=padding)
    theirs = hf_tok(sst2_sentences, max_length=max_length, padding=padding, truncation=True)
    assert_same_as_hf(ours, theirs)
    if max_length == 16:
        # The case must really truncate, or it proves nothing about truncation.
        assert (np.asarray([len(t) for t in hf_tok(sst2_sentences)["input_ids"]]) > 16).any()


@pytest.mark.parametrize("max_length,padding", [(128, "longest"), (20, "longest"),
                                                (32, "max_length")])
def test_sentence_pairs_match_transformers(tok, hf_tok, mrpc_pairs, max_length, padding):
    texts_a, texts_b = mrpc_pairs
    ours = tok(texts_a, texts_b, max_length=max_length, padding=padding)
    theirs = hf_tok(texts_a, texts_b, max_length=max_length, padding=padding, truncation=True)
    assert_same_as_hf(ours, theirs)
    # A list of (a, b) tuples is the same input as two lists.
    as_tuples = tok(list(zip(texts_a, texts_b)), max_length=max_length, padding=padding)
    for key in KEYS:
        np.testing.assert_array_equal(as_tuples[key], ours[key])


def longest_first_reference(len_a, len_b, budget):
    """Longest-first truncation written out: the shorter sentence keeps up to half the budget
    (rounded down), the longer one takes the rest; on equal lengths the second sentence
    counts as the longer. Equivalently: drop tokens one at a time from the end of the longer
    sentence, and on a tie from the sentence that was the shorter one at the start."""
    if len_a + len_b <= budget:
        return len_a, len_b
    a_is_longer = len_a > len_b
    shorter = len_b if a_is_longer else len_a
    keep_shorter = min(shorter, budget // 2)
    keep_longer = budget - keep_shorter
    return (keep_longer, keep_shorter) if a_is_longer else (keep_shorter, keep_longer)


def test_longest_first_truncation_grid(tok, hf_tok):
    """All small length combinations, including odd budgets and one sentence fitting whole."""
    words = "zero one two three four five six seven eight nine".split()
    for len_a in (0, 1, 2, 3, 5, 8):
        for len_b in (0, 1, 2, 3, 6, 9):
            for max_length in (3, 4, 5, 6, 7, 8, 11, 14):
                a = " ".join(words[:len_a])           # each word is one WordPiece token
                b = " ".join(words[::-1][:len_b])
                ours = tok([a], [b], max_length=max_length, padding="max_length")
                theirs = hf_tok([a], [b], max_length=max_length, padding="max_length",
                                truncation=True)
                assert_same_as_hf(ours, theirs)
                kept_a, kept_b = longest_first_reference(len_a, len_b, max_length - 3)
                types = ours["token_type_ids"][0][ours["attention_mask"][0] == 1]
                assert (types == 0).sum() == kept_a + 2     # [CLS] A [SEP]
                assert (types == 1).sum() == kept_b + 1     # B [SEP]


def test_special_token_layout(tok):
    batch = tok(["a b c"], ["d e"], max_length=16, padding="max_length")
    ids = batch["input_ids"][0]
    assert tok.convert_ids_to_tokens(ids[:8]) == ["[CLS]", "a", "b", "c", "[SEP]", "d", "e",
                                                  "[SEP]"]
    np.testing.assert_array_equal(batch["token_type_ids"][0][:8], [0, 0, 0, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(batch["attention_mask"][0], [1] * 8 + [0] * 8)
    assert (ids[8:] == tok.pad_token_id).all()
    assert (batch["token_type_ids"][0][8:] == 0).all()
    single = tok(["a b c", "a"])
    assert single["input_ids"].shape == (2, 5)      # padded to the longest: [CLS] a b c [SEP]
    np.testing.assert_array_equal(single["attention_mask"][1], [1, 1, 1, 0, 0])


def test_special_ids_and_vocab_match_transformers(tok, hf_tok):
    assert tok.vocab_size == len(hf_tok) == 30522
    assert (tok.pad_token_id, tok.cls_token_id, tok.sep_token_id) == (
        hf_tok.pad_token_id, hf_tok.cls_token_id, hf_tok.sep_token_id)


def test_decode_matches_transformers(tok, hf_tok, sst2_sentences):
    batch = tok(sst2_sentences[:20], max_length=32)
    for row in batch["input_ids"]:
        assert tok.decode(row) == hf_tok.decode(row.tolist(), skip_special_tokens=True)
        assert tok.decode(row, skip_special_tokens=False).startswith("[CLS]")


def test_save_and_reload_give_same_ids(tok, tmp_path, mrpc_pairs):
    file = tok.save(tmp_path / "tok")
    assert file == os.path.join(tmp_path, "tok", "tokenizer.json") and os.path.isfile(file)
    reloaded = Tokenizer.from_pretrained(tmp_path / "tok")
    texts_a, texts_b = mrpc_pairs
    for key in KEYS:
        np.testing.assert_array_equal(reloaded(texts_a[:50], texts_b[:50], max_length=40)[key],
                                      tok(texts_a[:50], texts_b[:50], max_length=40)[key])


def test_missing_folder_or_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Tokenizer.from_pretrained(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="has no tokenizer.json"):
        Tokenizer.from_pretrained(tmp_path)


def test_bad_input(tok):
    with pytest.raises(ValueError, match="empty"):
        tok([])
    with pytest.raises(ValueError, match="single string"):
        tok("not a list")
    with pytest.raises(ValueError, match=r"texts\[1\] is int"):
        tok(["fine", 3])
    with pytest.raises(ValueError, match="is NoneType"):
        tok(["fine"], [None])
    with pytest.raises(ValueError, match="2 entries but text_pair has 1"):
        tok(["a", "b"], ["c"])
    with pytest.raises(ValueError, match="has 3 elements"):
        tok([("a", "b", "c")])
    with pytest.raises(ValueError, match="max_length=2 is too small"):
        tok(["a"], max_length=2)
    with pytest.raises(ValueError, match="max_length must be an integer"):
        tok(["a"], max_length=12.5)
    with pytest.raises(ValueError, match="padding must be one of"):
        tok(["a"], padding="left")
    with pytest.raises(ValueError, match="more than max_length=4"):
        tok(["a b c d e"], max_length=4, truncation=False)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([101, 10**6])


def test_pad_sequences_checks_lengths():
    with pytest.raises(ValueError, match="more than the padded length"):
        pad_sequences([np.arange(5)], [np.zeros(5, int)], 4)
    with pytest.raises(ValueError, match="3 input ids but 2 token type ids"):
        pad_sequences([np.arange(3)], [np.zeros(2, int)], 4)
