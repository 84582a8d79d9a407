"""Checkpoint input/output: save/load round trips, Hugging Face checkpoints, and clear errors.

A checkpoint folder is config.json + model.safetensors with Hugging Face names
(docs/architecture.md, "Parameters"). Round trips must be bit-identical; every broken
checkpoint must raise an error that names the file or the tensor at fault; and a save that
crashes half-way must leave the previous checkpoint intact.
"""

import copy
import os

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import npcosteff
import npcosteff.weights
from npcosteff.config import CostEffConfig
from npcosteff.model import CostEffModel, param_shapes
from npcosteff.pretrained import default_model_dir
from npcosteff.weights import CheckpointError

MINILM_ENCODER_PARAMS = 22_565_376   # all-MiniLM-L6-v2's BertModel without its pooler


def slender_config(**changes):
    """3 layers of different widths, a factorized embedding, exits from layer 2, dense poolers."""
    fields = dict(vocab_size=23, hidden_size=12, num_hidden_layers=3, num_attention_heads=3,
                  intermediate_size=10, max_position_embeddings=9, heads_per_layer=[3, 2, 1],
                  intermediate_per_layer=[10, 6, 4], embedding_rank=5, num_labels=3, exit_start=2,
                  pooler="dense")
    fields.update(changes)
    return CostEffConfig(**fields)


def random_model(config, dtype=np.float32, seed=0):
    """Every parameter random (biases and LayerNorm included), so a swapped or zeroed tensor shows."""
    rng = np.random.default_rng(seed)
    params = {n: rng.standard_normal(s).astype(dtype) for n, s in param_shapes(config).items()}
    return CostEffModel(config, params, dtype=dtype)


def assert_same_params(a, b):
    assert a.param_names == b.param_names
    for n in a.param_names:
        assert a.params[n].dtype == b.params[n].dtype, n
        np.testing.assert_array_equal(a.params[n], b.params[n], err_msg=n)


@pytest.fixture
def saved(tmp_path):
    """A tiny random checkpoint on disk: (folder, model)."""
    model = random_model(slender_config())
    folder = tmp_path / "ckpt"
    model.save_pretrained(folder)
    return folder, model


def rewrite_tensors(folder, edit):
    """Load model.safetensors, let `edit(state)` change the dict, write it back."""
    path = os.path.join(folder, "model.safetensors")
    state = load_file(path)
    edit(state)
    save_file(state, path)


# --------------------------------------------------------------------------- round trips

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_save_then_load_is_bit_identical(tmp_path, dtype):
    config = slender_config()
    model = random_model(config, dtype=dtype, seed=1)
    folder = model.save_pretrained(tmp_path / "model")
    assert sorted(os.listdir(folder)) == ["config.json", "model.safetensors"]
    loaded = npcosteff.from_pretrained(folder, dtype=dtype)
    assert loaded.config.to_dict() == config.to_dict()
    assert loaded.config.embedding_rank == 5 and loaded.config.heads_per_layer == [3, 2, 1]
    assert_same_params(model, loaded)
    # The file itself stores the parameters in param_names order with the model's dtype.
    stored = load_file(os.path.join(folder, "model.safetensors"))
    assert set(stored) == set(model.param_names)
    assert all(stored[n].dtype == np.dtype(dtype) for n in stored)
    # Loaded weights compute what the saved ones did.
    ids = np.array([[1, 5, 22, 0], [7, 7, 3, 2]])
    for a, b in zip(model(ids).logits, loaded(ids).logits):
        np.testing.assert_array_equal(a, b)


def test_save_copies_the_tokenizer_file(tmp_path):
    model = random_model(slender_config(vocab_size=30522))
    tokenizer_file = os.path.join(default_model_dir(), "tokenizer.json")
    folder = model.save_pretrained(tmp_path / "with_tok", tokenizer_file=tokenizer_file)
    with open(os.path.join(folder, "tokenizer.json"), "rb") as f, open(tokenizer_file, "rb") as g:
        assert f.read() == g.read()


# --------------------------------------------------------------------------- the packaged MiniLM

def test_load_packaged_minilm():
    model = npcosteff.from_pretrained()
    c = model.config
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.intermediate_size) == (6, 384, 12, 1536)
    assert c.exit_layers == [] and model.num_parameters() == MINILM_ENCODER_PARAMS
    assert model.num_parameters(include_exits=False) == MINILM_ENCODER_PARAMS
    assert model.dtype == np.float32
    # Every tensor is the file's own, bit for bit (the pooler is skipped).
    stored = load_file(os.path.join(default_model_dir(), "model.safetensors"))
    names = {n[len("bert."):] if n.startswith("bert.") else n: n for n in stored}
    for n in model.param_names:
        np.testing.assert_array_equal(model.params[n], stored[names[n]], err_msg=n)


def test_load_packaged_minilm_with_fresh_exits():
    model = npcosteff.from_pretrained(num_labels=2, exit_start=4)
    assert model.config.exit_layers == [3, 4, 5]
    assert model.num_parameters(include_exits=False) == MINILM_ENCODER_PARAMS
    assert model.num_parameters() == MINILM_ENCODER_PARAMS + 3 * (2 * 384 + 2)
    # Fresh exits are initialized as Hugging Face does: N(0, 0.02) weights, zero biases.
    w = model.params["exits.5.classifier.weight"]
    assert 0.005 < w.std() < 0.05 and not model.params["exits.5.classifier.bias"].any()


# --------------------------------------------------------------------------- Hugging Face heads

@pytest.fixture(scope="module")
def hf_classifier_folder(tmp_path_factory):
    """A random tiny BertForSequenceClassification (3 labels) saved by transformers."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=40, hidden_size=12, num_hidden_layers=2, num_attention_heads=3,
                                     intermediate_size=20, max_position_embeddings=16, num_labels=3)
    model = transformers.BertForSequenceClassification(config).eval()
    with torch.no_grad():                      # random biases and gammas too, so nothing matches by chance
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    folder = tmp_path_factory.mktemp("hf") / "bert_cls"
    model.save_pretrained(folder)
    return folder, model


def test_hf_sequence_classification_checkpoint_loads(hf_classifier_folder):
    import torch

    folder, hf = hf_classifier_folder
    stored = load_file(os.path.join(folder, "model.safetensors"))
    assert "bert.pooler.dense.weight" in stored and "classifier.weight" in stored   # the layout we test
    model = npcosteff.from_pretrained(folder, dtype=np.float64, num_labels=3)
    assert model.config.exit_layers == [0, 1]
    hf_state = {k: v.detach().double().numpy() for k, v in hf.state_dict().items()}
    # The HF classifier becomes the last exit's classifier.
    np.testing.assert_array_equal(model.params["exits.1.classifier.weight"], hf_state["classifier.weight"])
    np.testing.assert_array_equal(model.params["exits.1.classifier.bias"], hf_state["classifier.bias"])
    # The encoder tensors are HF's without the `bert.` prefix.
    for n in model.param_names:
        if not n.startswith("exits."):
            np.testing.assert_array_equal(model.params[n], hf_state["bert." + n], err_msg=n)
    # And they compute what HF's encoder computes (float64: round-off only, ~1e-15 of O(1)).
    ids = np.array([[2, 17, 39, 5, 0], [8, 8, 1, 30, 12]])
    mask = np.array([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]])
    hf64 = copy.deepcopy(hf).double()                    # the fixture's model stays float32
    with torch.no_grad():
        ref = hf64.bert(torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state.numpy()
    ours = model(ids, mask).last_hidden_state
    np.testing.assert_allclose(ours[mask == 1], ref[mask == 1], rtol=1e-12, atol=1e-12)


def test_hf_classifier_without_num_labels_is_an_error_naming_it(hf_classifier_folder):
    """HF's config stores num_labels only as id2label; without num_labels the model has no
    exit for the classifier, and the loader names the tensors it cannot place."""
    folder, _ = hf_classifier_folder
    with pytest.raises(CheckpointError, match="classifier.weight"):
        npcosteff.from_pretrained(folder)


# --------------------------------------------------------------------------- broken checkpoints

def test_truncated_safetensors_names_the_file(saved):
    folder, _ = saved
    path = os.path.join(folder, "model.safetensors")
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as err:
        npcosteff.from_pretrained(folder)
    assert path in str(err.value) and "truncated or corrupt" in str(err.value)


def test_random_bytes_safetensors_names_the_file(saved):
    folder, _ = saved
    path = os.path.join(folder, "model.safetensors")
    with open(path, "wb") as f:
        f.write(np.random.default_rng(0).bytes(4096))
    with pytest.raises(CheckpointError) as err:
        npcosteff.from_pretrained(folder)
    assert path in str(err.value)


def test_unknown_tensor_is_named(saved):
    folder, _ = saved
    rewrite_tensors(folder, lambda s: s.update({"encoder.layer.0.attention.self.rotary.weight": np.ones(3, np.float32)}))
    with pytest.raises(CheckpointError, match=r"unknown tensors: encoder\.layer\.0\.attention\.self\.rotary\.weight"):
        npcosteff.from_pretrained(folder)


def test_ignored_tensors_are_skipped(saved):
    """BertModel's pooler, the position-id buffer and pre-training heads are not errors."""
    folder, model = saved
    rewrite_tensors(folder, lambda s: s.update({"bert.pooler.dense.weight": np.ones((12, 12), np.float32),
                                                "embeddings.position_ids": np.arange(9)[None],
                                                "cls.predictions.bias": np.zeros(23, np.float32)}))
    assert_same_params(model, npcosteff.from_pretrained(folder))


def test_missing_encoder_tensor_is_named(saved):
    folder, _ = saved
    rewrite_tensors(folder, lambda s: s.pop("encoder.layer.1.intermediate.dense.bias"))
    with pytest.raises(CheckpointError, match=r"missing tensors: encoder\.layer\.1\.intermediate\.dense\.bias"):
        npcosteff.from_pretrained(folder)


def test_missing_exit_tensors_are_freshly_initialized(saved):
    """Exits (and only exits) may be absent: a plain encoder gets new ones."""
    folder, model = saved
    rewrite_tensors(folder, lambda s: s.pop("exits.1.classifier.weight"))
    loaded = npcosteff.from_pretrained(folder)
    assert loaded.params["exits.1.classifier.weight"].shape == (3, 12)
    assert not np.array_equal(loaded.params["exits.1.classifier.weight"], model.params["exits.1.classifier.weight"])
    np.testing.assert_array_equal(loaded.params["exits.1.classifier.bias"], model.params["exits.1.classifier.bias"])


def test_mis_shaped_tensor_names_it_and_both_shapes(saved):
    folder, _ = saved
    rewrite_tensors(folder, lambda s: s.update({"encoder.layer.2.attention.self.key.weight": np.ones((8, 12), np.float32)}))
    with pytest.raises(CheckpointError) as err:
        npcosteff.from_pretrained(folder)
    msg = str(err.value)
    assert "encoder.layer.2.attention.self.key.weight" in msg
    assert "(8, 12)" in msg and "(4, 12)" in msg          # the checkpoint's and the model's shape


def test_checkpoint_with_other_widths_than_the_config_is_an_error(saved):
    """Overriding the widths on load (without slicing the weights) must not silently load."""
    folder, _ = saved
    with pytest.raises(CheckpointError,
                       match=r"encoder\.layer\.2\.attention\.self\.query\.weight has shape \(4, 12\) "
                             r"in the checkpoint, the model expects \(8, 12\)"):
        npcosteff.from_pretrained(folder, heads_per_layer=[3, 2, 2])


@pytest.mark.parametrize("missing", ["config.json", "model.safetensors"])
def test_missing_file_raises_file_not_found_naming_the_path(saved, missing):
    folder, _ = saved
    os.remove(os.path.join(folder, missing))
    with pytest.raises(FileNotFoundError) as err:
        npcosteff.from_pretrained(folder)
    assert str(folder) in str(err.value) and missing in str(err.value)


def test_missing_folder_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        npcosteff.from_pretrained(tmp_path / "nowhere")


# --------------------------------------------------------------------------- atomic saves

def siblings(folder):
    return sorted(os.listdir(os.path.dirname(os.path.abspath(folder))))


def test_save_into_existing_folder_replaces_it(saved):
    folder, _ = saved
    with open(os.path.join(folder, "stale.txt"), "w") as f:     # not part of the new checkpoint
        f.write("old")
    new = random_model(slender_config(), seed=7)
    new.save_pretrained(folder)
    assert sorted(os.listdir(folder)) == ["config.json", "model.safetensors"]
    assert siblings(folder) == ["ckpt"]                         # no temp or old folders left
    assert_same_params(new, npcosteff.from_pretrained(folder))


def test_crash_while_saving_keeps_the_old_checkpoint(saved, monkeypatch):
    folder, old = saved
    before = {name: open(os.path.join(folder, name), "rb").read() for name in os.listdir(folder)}

    def crash(path, *args, **kwargs):
        with open(path, "wb") as f:                             # half a file, then the crash
            f.write(b"\x00" * 100)
        raise OSError("disk full")

    monkeypatch.setattr(npcosteff.weights, "write_safetensors", crash)
    new = random_model(slender_config(), seed=8)
    with pytest.raises(OSError, match="disk full"):
        new.save_pretrained(folder)
    monkeypatch.undo()
    assert siblings(folder) == ["ckpt"]                         # the temp folder was removed
    after = {name: open(os.path.join(folder, name), "rb").read() for name in os.listdir(folder)}
    assert after == before                                      # old files, byte for byte
    assert_same_params(old, npcosteff.from_pretrained(folder))


def test_crash_while_saving_a_new_folder_leaves_nothing(tmp_path, monkeypatch):
    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(npcosteff.weights, "write_safetensors", crash)
    with pytest.raises(OSError, match="disk full"):
        random_model(slender_config()).save_pretrained(tmp_path / "fresh")
    assert os.listdir(tmp_path) == []
