"""GLUE loading (the slices shipped in the package, synthetic folders in each task's real
layout, a stand-in for the hub, a full local copy when one is named), where the data comes
from (`glue_source`), every bad-input error, and dynamic-padding batches.

Everything here reads the shipped slices or files it writes itself. The checks of a complete
GLUE copy (row counts of the full files) run when ``NPCOSTEFF_GLUE_DIR`` names a folder with
the full SST-2, MRPC and STS-B files, and are skipped otherwise.
"""

import os

import numpy as np
import pytest

from npcosteff.data.batching import (EncodedSplit, encode_split, iterate_batches, length_order,
                                     restore_order)
from npcosteff.data import (GLUE_DIR_ENV, GLUE_TASKS, HUB, SHIPPED, SHIPPED_DIR, SliceTooSmall, describe_source,
                           get_task, glue_source, is_shipped, load_glue, shipped_slices)
from npcosteff.tokenizer import Tokenizer

# The slices in npcosteff/data/slices: (train, dev) examples per task.
SLICE_ROWS = {"sst2": (3600, 872), "mrpc": (256, 256), "stsb": (256, 256), "cola": (256, 256),
              "rte": (256, 256)}


def full_glue_dir():
    """$NPCOSTEFF_GLUE_DIR when it names a full GLUE folder (not the shipped slices), else None."""
    folder = os.environ.get(GLUE_DIR_ENV)
    if not folder or folder in (HUB, SHIPPED) or not os.path.isfile(os.path.join(folder, "SST-2", "train.tsv")):
        return None
    return None if is_shipped(folder) else folder


FULL_GLUE = full_glue_dir()
needs_full_glue = pytest.mark.skipif(
    FULL_GLUE is None, reason=f"checks a complete GLUE copy: set {GLUE_DIR_ENV} to a folder in GLUE's TSV "
                              f"layout with the full SST-2, MRPC and STS-B files")


@pytest.fixture
def no_env(monkeypatch):
    monkeypatch.delenv(GLUE_DIR_ENV, raising=False)


def write_tsv(path, header, rows):
    """Write a GLUE-style TSV (tab separated, no quoting) with an optional header row."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    lines = ([header] if header else []) + list(rows)
    with open(path, "w", encoding="utf-8") as f:
        for fields in lines:
            f.write("\t".join(fields) + "\n")


def raw_rows(path, header=True):
    """Data rows of a TSV split on tabs by hand (no csv module), header dropped."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().lstrip("\ufeff").split("\n")
    return [line.split("\t") for line in lines[1 if header else 0:] if line]


# ------------------------------------------------------------------ the shipped slices


@pytest.mark.parametrize("task", sorted(SLICE_ROWS))
def test_every_slice_is_shipped_with_its_row_count(task):
    train, dev = SLICE_ROWS[task]
    assert shipped_slices()[task] == {"train": train, "validation": dev}
    for split, rows in (("train", train), ("validation", dev)):
        data = load_glue(task, split, SHIPPED)
        assert len(data) == len(data.labels) == rows
        assert data.source.startswith(SHIPPED_DIR)
        assert (data.texts_b is None) == (task in ("sst2", "cola"))
        if task == "stsb":
            assert data.labels.dtype == np.float32
            assert data.labels.min() >= 0.0 and data.labels.max() <= 5.0
        else:
            assert data.labels.dtype == np.int64 and set(np.unique(data.labels)) == {0, 1}


def test_slices_are_the_only_shipped_tasks_and_stay_small():
    assert set(shipped_slices()) == set(SLICE_ROWS)
    total = sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(SHIPPED_DIR)
                for f in files if f.endswith(".tsv"))
    assert total < 800_000, total     # SST-2's 3,600 + 872 rows (the demo's) are 300 KB of it
    assert os.path.isfile(os.path.join(SHIPPED_DIR, "README.md"))    # source and licences


def test_the_demo_recipe_is_the_sst2_slice_and_quick_fits_in_it():
    from npcosteff.presets import get_preset

    demo, quick = get_preset("demo"), get_preset("quick")
    assert demo.task == quick.task == "sst2"
    assert (demo.data.max_train, demo.data.max_eval) == SLICE_ROWS["sst2"] == (3600, 872)   # all of dev
    for recipe in (demo, quick):
        assert len(load_glue("sst2", "train", SHIPPED, recipe.data.max_train)) == recipe.data.max_train
        assert len(load_glue("sst2", "validation", SHIPPED, recipe.data.max_eval)) == recipe.data.max_eval


def test_asking_a_slice_for_more_than_it_holds_is_an_error():
    with pytest.raises(SliceTooSmall, match=r"SST-2 train slice shipped with npcosteff holds 3600 "
                                            r"examples, and 3601 were asked for.*hub.*NPCOSTEFF_GLUE_DIR"):
        load_glue("sst2", "train", SHIPPED, max_examples=3601)
    with pytest.raises(SliceTooSmall, match="holds 256"):
        load_glue("mrpc", "validation", SHIPPED, max_examples=10**6)
    assert len(load_glue("sst2", "train", SHIPPED, max_examples=3600)) == 3600   # exactly all of it


def test_tasks_not_shipped_say_what_is():
    with pytest.raises(FileNotFoundError, match=r"slices shipped with npcosteff hold .*SST-2.* not QNLI"
                                                r".*hub.*--glue-dir.*NPCOSTEFF_GLUE_DIR"):
        load_glue("qnli", "train", SHIPPED)


def test_mrpc_slice_keeps_the_byte_order_mark_and_columns():
    path = os.path.join(SHIPPED_DIR, "MRPC", "dev.tsv")
    with open(path, "rb") as f:
        assert f.read(3) == b"\xef\xbb\xbf"   # as GLUE's file, it starts with a BOM
    data = load_glue("MRPC", "dev", SHIPPED)
    rows = raw_rows(path)
    assert data.texts_a == [r[3] for r in rows]
    assert data.texts_b == [r[4] for r in rows]
    np.testing.assert_array_equal(data.labels, [int(r[0]) for r in rows])
    # Bare quotes are text (QUOTE_NONE): MRPC's first dev pair has a lone '"' in sentence 2.
    assert data.texts_b[0].startswith('" The foodservice')


def test_stsb_float_labels_match_the_file():
    path = os.path.join(SHIPPED_DIR, "STS-B", "dev.tsv")
    data = load_glue("STS-B", "validation", SHIPPED)
    rows = raw_rows(path)
    np.testing.assert_array_equal(data.labels, np.array([float(r[9]) for r in rows], np.float32))
    assert data.texts_a[:3] == [r[7] for r in rows[:3]]
    assert data.spec.is_regression and data.spec.num_labels == 1


def test_cola_slice_has_no_header_row():
    path = os.path.join(SHIPPED_DIR, "CoLA", "train.tsv")
    rows = raw_rows(path, header=False)
    data = load_glue("cola", "train", SHIPPED)
    assert len(rows) == len(data) == 256
    assert data.texts_a == [r[3] for r in rows]
    np.testing.assert_array_equal(data.labels, [int(r[1]) for r in rows])


def test_rte_string_labels():
    path = os.path.join(SHIPPED_DIR, "RTE", "dev.tsv")
    rows = raw_rows(path)
    data = load_glue("rte", "validation", SHIPPED)
    assert data.texts_b == [r[2] for r in rows]
    np.testing.assert_array_equal(data.labels, [("entailment", "not_entailment").index(r[3]) for r in rows])


@pytest.mark.parametrize("alias", ["SST-2", "sst-2", "sst2", "Sst2", "SST_2"])
def test_task_aliases(alias):
    assert get_task(alias).name == "sst2"


def test_more_aliases():
    assert get_task("STS-B").name == get_task("sts-b").name == "stsb"
    assert get_task("CoLA").name == "cola" and get_task("MNLI").name == "mnli"


def test_max_examples_keeps_the_first_rows(tmp_path):
    full = load_glue("sst2", "validation", SHIPPED)
    head = load_glue("sst2", "validation", SHIPPED, max_examples=10)
    assert head.texts_a == full.texts_a[:10]
    np.testing.assert_array_equal(head.labels, full.labels[:10])
    # A folder of the user's holding fewer gives what it has (it is the full data).
    write_tsv(tmp_path / "SST-2" / "dev.tsv", ["sentence", "label"], [["good", "1"], ["bad", "0"]])
    assert len(load_glue("sst2", "validation", tmp_path, max_examples=10**6)) == 2


# ------------------------------------------------------------------ where the data comes from


def test_environment_variable_gives_the_default_folder(monkeypatch):
    monkeypatch.setenv(GLUE_DIR_ENV, SHIPPED_DIR)
    data = load_glue("mrpc", "validation", max_examples=5)
    assert data.source == os.path.join(SHIPPED_DIR, "MRPC", "dev.tsv") and len(data) == 5
    monkeypatch.setenv(GLUE_DIR_ENV, SHIPPED)                   # the keyword works there too
    assert len(load_glue("mrpc", "validation", max_examples=5)) == 5


def test_glue_source_order_and_keywords(no_env, monkeypatch, tmp_path):
    assert glue_source() == HUB                                  # nothing set: the hub
    assert glue_source(default=SHIPPED) == SHIPPED_DIR
    assert glue_source(SHIPPED) == SHIPPED_DIR and glue_source(HUB) == HUB
    assert glue_source(tmp_path) == str(tmp_path)
    assert glue_source(glue_source(SHIPPED)) == SHIPPED_DIR      # a resolved source resolves to itself
    monkeypatch.setenv(GLUE_DIR_ENV, str(tmp_path))
    assert glue_source() == glue_source(default=SHIPPED) == str(tmp_path)    # the variable beats defaults
    assert glue_source(HUB) == HUB                               # and an explicit data_dir beats it
    monkeypatch.setenv(GLUE_DIR_ENV, "")                         # set but empty: as if unset
    assert glue_source() == HUB


def test_glue_source_refuses_a_folder_that_is_not_there(no_env, monkeypatch, tmp_path):
    missing = tmp_path / "no-such-folder"
    with pytest.raises(FileNotFoundError, match=r"no-such-folder' does not exist.*hub.*--glue-dir.*"
                                                r"NPCOSTEFF_GLUE_DIR.*shipped"):
        glue_source(missing)
    monkeypatch.setenv(GLUE_DIR_ENV, str(missing))               # a typo never falls back to the hub
    with pytest.raises(FileNotFoundError, match=r"named by \$NPCOSTEFF_GLUE_DIR"):
        glue_source()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_glue("sst2", "train")


def test_describe_and_is_shipped(tmp_path):
    assert is_shipped(SHIPPED) and is_shipped(SHIPPED_DIR) and is_shipped(SHIPPED_DIR + os.sep)
    assert not is_shipped(HUB) and not is_shipped(tmp_path) and not is_shipped(None)
    assert describe_source(SHIPPED_DIR) == "the GLUE slices shipped with npcosteff"
    assert "nyu-mll/glue" in describe_source(HUB)
    assert str(tmp_path) in describe_source(tmp_path)


# ------------------------------------------------------------------ a full local copy


@needs_full_glue
@pytest.mark.parametrize("task,split,rows", [
    ("sst2", "train", 67_349), ("sst2", "validation", 872),
    # GLUE says 3,668, but this copy of train.tsv has 3,668 lines *including* its header
    # (wc -l), so 3,667 examples; every line has the 5 expected fields.
    ("mrpc", "train", 3_667), ("mrpc", "validation", 408),
    ("stsb", "train", 5_749), ("stsb", "validation", 1_500),
])
def test_full_glue_row_counts(task, split, rows):
    data = load_glue(task, split, FULL_GLUE)
    assert len(data) == len(data.labels) == rows
    assert (data.texts_b is None) == (task == "sst2")
    if task == "stsb":
        assert data.labels.dtype == np.float32
        assert data.labels.min() >= 0.0 and data.labels.max() <= 5.0
    else:
        assert data.labels.dtype == np.int64 and set(np.unique(data.labels)) == {0, 1}
    assert len(load_glue(task, split, FULL_GLUE, max_examples=10**6)) == rows    # a cap, not a demand


@needs_full_glue
@pytest.mark.parametrize("task", sorted(SLICE_ROWS))
def test_slices_are_the_first_rows_of_the_full_files(task):
    spec = get_task(task)
    for split, rows in zip(("train", "validation"), SLICE_ROWS[task]):
        with open(os.path.join(SHIPPED_DIR, spec.tsv_folder, spec.tsv_file(split)), "rb") as f:
            piece = f.read()
        with open(os.path.join(FULL_GLUE, spec.tsv_folder, spec.tsv_file(split)), "rb") as f:
            head = f.read(len(piece))
        assert piece == head, (task, split)                      # byte for byte, BOM and header included
        assert load_glue(task, split, SHIPPED).texts_a == load_glue(task, split, FULL_GLUE, rows).texts_a


# ------------------------------------------------------------------ synthetic task folders

MNLI_PARSES = ["sentence1_binary_parse", "sentence2_binary_parse", "sentence1_parse",
               "sentence2_parse"]
MNLI_TRAIN_HEADER = ["index", "promptID", "pairID", "genre", *MNLI_PARSES, "sentence1",
                     "sentence2", "label1", "gold_label"]
MNLI_DEV_HEADER = ["index", "promptID", "pairID", "genre", *MNLI_PARSES, "sentence1",
                   "sentence2", "label1", "label2", "label3", "label4", "label5", "gold_label"]


def mnli_row(i, premise, hypothesis, gold, dev):
    votes = [gold] * (5 if dev else 1)
    return [str(i), "31193", f"{31193 + i}n", "government", "( ( x ) )", "( ( y ) )",
            "(ROOT x)", "(ROOT y)", premise, hypothesis, *votes, gold]


def test_cola_has_no_header_row(tmp_path):
    write_tsv(tmp_path / "CoLA" / "train.tsv", None, [
        ["gj04", "1", "", "Our friends won't buy this analysis."],
        ["gj04", "0", "*", "They drank the pub."],
        ["gj04", "1", "", '"Yes" he said.'],
    ])
    write_tsv(tmp_path / "CoLA" / "test.tsv", ["index", "sentence"],
              [["0", "Bill whistled past the house."]])
    data = load_glue("cola", "train", tmp_path)
    assert data.texts_a == ["Our friends won't buy this analysis.", "They drank the pub.",
                            '"Yes" he said.']
    assert data.texts_b is None
    np.testing.assert_array_equal(data.labels, [1, 0, 1])
    test = load_glue("CoLA", "test", tmp_path)
    assert test.texts_a == ["Bill whistled past the house."] and test.labels is None


def test_mnli_string_labels_matched_and_mismatched(tmp_path):
    folder = tmp_path / "MNLI"
    write_tsv(folder / "train.tsv", MNLI_TRAIN_HEADER, [
        mnli_row(0, "A man eats.", "Someone eats.", "entailment", dev=False),
        mnli_row(1, "A man eats.", "Nobody eats.", "contradiction", dev=False),
    ])
    write_tsv(folder / "dev_matched.tsv", MNLI_DEV_HEADER, [
        mnli_row(0, "It rains.", "It is wet.", "neutral", dev=True),
        mnli_row(1, "It rains.", "It is dry.", "contradiction", dev=True),
        mnli_row(2, "It rains.", "Water falls.", "entailment", dev=True),
    ])
    write_tsv(folder / "dev_mismatched.tsv", MNLI_DEV_HEADER, [
        mnli_row(0, "Cats purr.", "Cats are animals.", "neutral", dev=True)])
    write_tsv(folder / "test_matched.tsv", MNLI_TRAIN_HEADER[:-2],
              [mnli_row(0, "P.", "H.", "x", dev=False)[:-2]])
    names = GLUE_TASKS["mnli"].label_names
    assert names == ("entailment", "neutral", "contradiction")   # the hub's ClassLabel order
    train = load_glue("mnli", "train", tmp_path)
    np.testing.assert_array_equal(train.labels, [names.index("entailment"),
                                                 names.index("contradiction")])
    matched = load_glue("mnli", "validation_matched", tmp_path)
    assert matched.source.endswith("dev_matched.tsv")
    assert matched.texts_b == ["It is wet.", "It is dry.", "Water falls."]
    np.testing.assert_array_equal(matched.labels, [1, 2, 0])
    mismatched = load_glue("mnli", "dev_mismatched", tmp_path)
    assert mismatched.texts_a == ["Cats purr."] and mismatched.labels.tolist() == [1]
    test = load_glue("mnli", "test_matched", tmp_path)
    assert test.labels is None and test.texts_b == ["H."]


@pytest.mark.parametrize("task,folder,header,rows,texts_a,texts_b,labels", [
    ("qqp", "QQP", ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"],
     [["0", "1", "2", "How old are you?", "What is your age?", "1"],
      ["1", "3", "4", "Why?", "Why not?", "0"]],
     ["How old are you?", "Why?"], ["What is your age?", "Why not?"], [1, 0]),
    ("qnli", "QNLI", ["index", "question", "sentence", "label"],
     [["0", "Who wrote it?", "Tom wrote it.", "entailment"],
      ["1", "When?", "It is red.", "not_entailment"]],
     ["Who wrote it?", "When?"], ["Tom wrote it.", "It is red."], [0, 1]),
    ("rte", "RTE", ["index", "sentence1", "sentence2", "label"],
     [["0", "A dog runs.", "An animal runs.", "entailment"],
      ["1", "A dog runs.", "A cat sleeps.", "not_entailment"]],
     ["A dog runs.", "A dog runs."], ["An animal runs.", "A cat sleeps."], [0, 1]),
    ("wnli", "WNLI", ["index", "sentence1", "sentence2", "label"],
     [["0", "The cup fell; it broke.", "The cup broke.", "1"],
      ["1", "The cup fell; it broke.", "The floor broke.", "0"]],
     ["The cup fell; it broke.", "The cup fell; it broke."],
     ["The cup broke.", "The floor broke."], [1, 0]),
])
def test_pair_task_layouts(tmp_path, task, folder, header, rows, texts_a, texts_b, labels):
    write_tsv(tmp_path / folder / "dev.tsv", header, rows)
    data = load_glue(task, "validation", tmp_path)
    assert data.texts_a == texts_a and data.texts_b == texts_b
    np.testing.assert_array_equal(data.labels, labels)
    assert data.labels.dtype == np.int64
    # A test file has the same header without the label column, and no labels come back.
    write_tsv(tmp_path / folder / "test.tsv", header[:-1], [r[:-1] for r in rows])
    assert load_glue(task, "test", tmp_path).labels is None


def test_label_ids_agree_between_tsv_and_hub():
    """Where the TSV writes label names they must be the hub's names in the hub's order; WNLI
    writes 1 for entailment, which is the hub's class 1."""
    for spec in GLUE_TASKS.values():
        if spec.tsv_label_values and spec.tsv_label_values != ("0", "1"):
            assert spec.tsv_label_values == spec.label_names, spec.name
        assert spec.main_metric in spec.metric_names
    assert GLUE_TASKS["wnli"].label_names[1] == "entailment"
    assert GLUE_TASKS["qnli"].label_names == GLUE_TASKS["rte"].label_names == (
        "entailment", "not_entailment")


# ------------------------------------------------------------------ the hub path


class FakeHub:
    """Stands in for `datasets.load_dataset` with a tiny in-memory MNLI split."""

    def __init__(self, label_names=("entailment", "neutral", "contradiction")):
        self.label_names = list(label_names)
        self.calls = []

    def __call__(self, path, name, split):
        import datasets
        self.calls.append((path, name, split))
        features = datasets.Features({
            "premise": datasets.Value("string"), "hypothesis": datasets.Value("string"),
            "label": datasets.ClassLabel(names=self.label_names),
            "idx": datasets.Value("int32")})
        labels = [2, 0, 1] if not split.startswith("test") else [-1, -1, -1]
        return datasets.Dataset.from_dict(
            {"premise": ["p0", "p1", "p2"], "hypothesis": ["h0", "h1", "h2"],
             "label": labels, "idx": [0, 1, 2]}, features=features)


def test_hub_path_maps_columns_and_labels(monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.delenv(GLUE_DIR_ENV, raising=False)
    hub = FakeHub()
    monkeypatch.setattr(datasets, "load_dataset", hub)
    data = load_glue("MNLI", "dev_mismatched", max_examples=2)
    assert hub.calls == [("nyu-mll/glue", "mnli", "validation_mismatched")]
    assert data.texts_a == ["p0", "p1"] and data.texts_b == ["h0", "h1"]
    np.testing.assert_array_equal(data.labels, [2, 0])
    assert data.source == "nyu-mll/glue"
    assert load_glue("mnli", "test_matched").labels is None   # the hub's -1 means "hidden"
    monkeypatch.setattr(datasets, "load_dataset", FakeHub(("a", "b", "c")))
    with pytest.raises(ValueError, match="labels are"):
        load_glue("mnli", "train")


def test_hub_failure_says_how_to_work_offline(monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.delenv(GLUE_DIR_ENV, raising=False)

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(RuntimeError, match=f"no network.*data_dir.*{GLUE_DIR_ENV}.*shipped"):
        load_glue("rte", "train")
    with pytest.raises(RuntimeError, match="from the Hugging Face hub"):
        load_glue("rte", "train", HUB)                           # the hub by name


# ------------------------------------------------------------------ bad input


def test_unknown_task_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown GLUE task 'sst3'.*cola.*wnli"):
        load_glue("sst3", "train", SHIPPED)
    with pytest.raises(ValueError, match="must be a string"):
        get_task(2)


def test_bad_split_names():
    with pytest.raises(ValueError, match="has no split 'valid'.*train, validation, test"):
        load_glue("sst2", "valid", SHIPPED)
    with pytest.raises(ValueError, match="validation_matched, validation_mismatched"):
        load_glue("mnli", "validation", SHIPPED)


def test_missing_folder_and_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.*does not exist"):
        load_glue("sst2", "train", tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="has no RTE/ folder"):
        load_glue("rte", "train", tmp_path)
    os.makedirs(tmp_path / "RTE")
    with pytest.raises(FileNotFoundError, match=r"RTE.dev\.tsv' does not exist"):
        load_glue("rte", "dev", tmp_path)


def test_missing_column_names_column_and_header(tmp_path):
    write_tsv(tmp_path / "QNLI" / "train.tsv", ["index", "question", "text", "label"],
              [["0", "q", "s", "entailment"]])
    with pytest.raises(ValueError, match=r"no column 'sentence'.*header is \['index', "
                                         r"'question', 'text', 'label'\]"):
        load_glue("qnli", "train", tmp_path)


def test_empty_split(tmp_path):
    write_tsv(tmp_path / "SST-2" / "dev.tsv", ["sentence", "label"], [])
    with pytest.raises(ValueError, match="has no examples"):
        load_glue("sst2", "validation", tmp_path)
    open(tmp_path / "SST-2" / "train.tsv", "w").close()
    with pytest.raises(ValueError, match="is empty"):
        load_glue("sst2", "train", tmp_path)


def test_label_outside_the_label_set(tmp_path):
    write_tsv(tmp_path / "RTE" / "train.tsv", ["index", "sentence1", "sentence2", "label"],
              [["0", "a", "b", "entailment"], ["1", "a", "b", "neutral"]])
    with pytest.raises(ValueError, match=r"line 3: label 'neutral'.*'entailment', "
                                         r"'not_entailment'"):
        load_glue("rte", "train", tmp_path)
    write_tsv(tmp_path / "SST-2" / "train.tsv", ["sentence", "label"], [["fine", "2"]])
    with pytest.raises(ValueError, match=r"line 2: label '2'"):
        load_glue("sst2", "train", tmp_path)
    write_tsv(tmp_path / "CoLA" / "train.tsv", None, [["gj04", "1", "", "ok"],
                                                      ["gj04", "x", "", "bad"]])
    with pytest.raises(ValueError, match=r"line 2: label 'x'"):
        load_glue("cola", "train", tmp_path)


def test_stsb_score_outside_range_or_not_a_number(tmp_path):
    header = ["index", "genre", "filename", "year", "old_index", "source1", "source2",
              "sentence1", "sentence2", "score"]
    row = ["0", "main-captions", "MSRvid", "2012test", "0001", "none", "none", "a", "b"]
    for bad in ("5.5", "-0.1", "high", "nan"):
        write_tsv(tmp_path / "STS-B" / "train.tsv", header, [row + ["4.0"], row + [bad]])
        with pytest.raises(ValueError, match=rf"line 3: score='{bad}' is not a score in"):
            load_glue("stsb", "train", tmp_path)


def test_short_row(tmp_path):
    write_tsv(tmp_path / "WNLI" / "train.tsv", ["index", "sentence1", "sentence2", "label"],
              [["0", "a", "b", "1"], ["1", "a"]])
    with pytest.raises(ValueError, match="line 3: the row has 2 fields"):
        load_glue("wnli", "train", tmp_path)


def test_a_file_that_is_not_utf8_text_names_the_file(tmp_path):
    os.makedirs(tmp_path / "SST-2")
    (tmp_path / "SST-2" / "dev.tsv").write_bytes(b"\xff\xfe\x00\x01 binary")
    with pytest.raises(ValueError, match=r"SST-2.dev\.tsv, line 1: not UTF-8 text"):
        load_glue("sst2", "validation", tmp_path)
    (tmp_path / "SST-2" / "dev.tsv").write_bytes(b"sentence\tlabel\n" + b"fine\t1\n" * 5000 + b"bad \xff\t0\n")
    with pytest.raises(ValueError, match=r"SST-2.dev\.tsv, line 5002: not UTF-8 text"):
        load_glue("sst2", "validation", tmp_path)


def test_a_field_over_the_csv_limit_names_the_line(tmp_path):
    write_tsv(tmp_path / "SST-2" / "train.tsv", ["sentence", "label"], [["fine", "1"], ["x" * 200_000, "0"]])
    with pytest.raises(ValueError, match=r"train\.tsv, line 3: not a GLUE TSV row \(field larger than field limit"):
        load_glue("sst2", "train", tmp_path)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "10"])
def test_bad_max_examples(bad):
    with pytest.raises(ValueError, match="max_examples must be a positive integer"):
        load_glue("sst2", "validation", SHIPPED, max_examples=bad)


# ------------------------------------------------------------------ batching


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.from_pretrained()


@pytest.fixture(scope="module")
def mrpc_encoded(tok):
    return encode_split(tok, load_glue("mrpc", "validation", SHIPPED), max_length=48)


def test_encode_split_truncates_without_padding(tok, mrpc_encoded):
    split = load_glue("mrpc", "validation", SHIPPED)
    assert len(mrpc_encoded) == 256 and mrpc_encoded.max_length == 48
    lengths = mrpc_encoded.lengths
    assert lengths.max() == 48 and lengths.min() < 48   # some pairs are cut, some are not
    one = tok([split.texts_a[5]], [split.texts_b[5]], max_length=48)
    np.testing.assert_array_equal(mrpc_encoded.input_ids[5], one["input_ids"][0])
    np.testing.assert_array_equal(mrpc_encoded.token_type_ids[5], one["token_type_ids"][0])


def test_batches_pad_to_their_longest_and_mask_the_padding(mrpc_encoded):
    rng = np.random.default_rng(0)
    for batch in iterate_batches(mrpc_encoded, mrpc_encoded.labels, 16, shuffle=True, rng=rng):
        lengths = mrpc_encoded.lengths[batch["indices"]]                     # (B,)
        B, T = batch["input_ids"].shape
        assert T == lengths.max() <= mrpc_encoded.max_length
        for key in ("input_ids", "attention_mask", "token_type_ids"):
            assert batch[key].shape == (B, T) and batch[key].dtype == np.int64
        for row, i in enumerate(batch["indices"]):
            n = lengths[row]
            np.testing.assert_array_equal(batch["attention_mask"][row],
                                          np.arange(T) < n)
            np.testing.assert_array_equal(batch["input_ids"][row, :n],
                                          mrpc_encoded.input_ids[i])
            np.testing.assert_array_equal(batch["token_type_ids"][row, :n],
                                          mrpc_encoded.token_type_ids[i])
            assert (batch["input_ids"][row, n:] == mrpc_encoded.pad_token_id).all()
            assert (batch["token_type_ids"][row, n:] == 0).all()
        np.testing.assert_array_equal(batch["labels"], mrpc_encoded.labels[batch["indices"]])


def epoch_indices(encoded, **kwargs):
    return np.concatenate([b["indices"] for b in iterate_batches(encoded, encoded.labels, 32,
                                                                 **kwargs)])


def test_every_example_once_per_epoch_and_same_seed_same_order(mrpc_encoded):
    n = len(mrpc_encoded)
    first = epoch_indices(mrpc_encoded, shuffle=True, rng=np.random.default_rng(7))
    again = epoch_indices(mrpc_encoded, shuffle=True, rng=np.random.default_rng(7))
    other = epoch_indices(mrpc_encoded, shuffle=True, rng=np.random.default_rng(8))
    np.testing.assert_array_equal(np.sort(first), np.arange(n))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    assert not np.array_equal(first, np.arange(n))
    np.testing.assert_array_equal(epoch_indices(mrpc_encoded), np.arange(n))  # no shuffle
    # A generator carried across epochs gives a new order each epoch.
    rng = np.random.default_rng(7)
    assert not np.array_equal(epoch_indices(mrpc_encoded, shuffle=True, rng=rng),
                              epoch_indices(mrpc_encoded, shuffle=True, rng=rng))


def test_drop_last(mrpc_encoded):
    sizes = [len(b["indices"]) for b in iterate_batches(mrpc_encoded, None, 100, drop_last=True)]
    assert sizes == [100] * 2                                  # 256 = 2 * 100 + 56
    batches = list(iterate_batches(mrpc_encoded, None, 100))
    assert [len(b["indices"]) for b in batches] == [100] * 2 + [56]
    assert batches[0]["labels"] is None


def test_sort_by_length_and_restore_order(mrpc_encoded):
    order = length_order(mrpc_encoded)
    batches = list(iterate_batches(mrpc_encoded, mrpc_encoded.labels, 50, sort_by_length=True))
    indices = np.concatenate([b["indices"] for b in batches])
    np.testing.assert_array_equal(indices, order)
    assert (np.diff(mrpc_encoded.lengths[indices]) <= 0).all()      # longest first
    # Less padding than in the split's own order.
    padded = lambda bs: sum(b["input_ids"].size for b in bs)         # noqa: E731
    assert padded(batches) < padded(list(iterate_batches(mrpc_encoded, None, 50)))
    # A per-example value computed batch by batch comes back in the split's order.
    per_batch = np.concatenate([b["attention_mask"].sum(axis=1) for b in batches])
    np.testing.assert_array_equal(restore_order(per_batch, indices), mrpc_encoded.lengths)


def test_group_by_length_keeps_every_example_and_cuts_the_padding(mrpc_encoded):
    from npcosteff.data.batching import GROUP_BATCHES

    n = len(mrpc_encoded)                                             # 256 = 8 * 30 + 16
    grouped = list(iterate_batches(mrpc_encoded, mrpc_encoded.labels, 30, shuffle=True,
                                   rng=np.random.default_rng(3), group_by_length=True))
    again = np.concatenate([b["indices"] for b in iterate_batches(mrpc_encoded, None, 30, shuffle=True,
                                                                  rng=np.random.default_rng(3), group_by_length=True)])
    indices = np.concatenate([b["indices"] for b in grouped])
    np.testing.assert_array_equal(np.sort(indices), np.arange(n))     # every example once
    np.testing.assert_array_equal(indices, again)                     # the same seed, the same batches
    assert [len(b["indices"]) for b in grouped] == [30] * 8 + [16]    # full batches, the short one last
    for b in grouped:
        np.testing.assert_array_equal(b["labels"], mrpc_encoded.labels[b["indices"]])
    # With one group (256 < 50 * 30) each batch is a run of the length-sorted group: lengths in
    # one batch overlap no other batch's, and padding falls well below random batches'.
    assert n < GROUP_BATCHES * 30
    spans = sorted((mrpc_encoded.lengths[b["indices"]].min(), mrpc_encoded.lengths[b["indices"]].max())
                   for b in grouped)
    assert all(hi <= lo_next for (_, hi), (lo_next, _) in zip(spans, spans[1:]))
    padded = lambda bs: sum(b["input_ids"].size for b in bs)         # noqa: E731
    shuffled = list(iterate_batches(mrpc_encoded, None, 30, shuffle=True, rng=np.random.default_rng(3)))
    real = mrpc_encoded.lengths.sum()
    assert padded(grouped) - real < 0.5 * (padded(shuffled) - real)  # MRPC is near max_length: little to cut
    # The batch order is shuffled too: not simply longest first.
    firsts = [mrpc_encoded.lengths[b["indices"]].max() for b in grouped[:-1]]
    assert firsts != sorted(firsts, reverse=True)


def test_batching_bad_input(mrpc_encoded):
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        next(iterate_batches(mrpc_encoded, None, 0))
    with pytest.raises(ValueError, match="needs rng"):
        next(iterate_batches(mrpc_encoded, None, 8, shuffle=True))
    with pytest.raises(ValueError, match="exclude each other"):
        next(iterate_batches(mrpc_encoded, None, 8, shuffle=True,
                             rng=np.random.default_rng(0), sort_by_length=True))
    with pytest.raises(ValueError, match="group_by_length needs shuffle=True"):
        next(iterate_batches(mrpc_encoded, None, 8, group_by_length=True))
    with pytest.raises(ValueError, match=r"labels has shape \(3,\) but the split has 256"):
        next(iterate_batches(mrpc_encoded, np.zeros(3), 8))
    with pytest.raises(ValueError, match="not a permutation"):
        restore_order(np.zeros(3), np.array([0, 0, 2]))
    with pytest.raises(ValueError, match="more than max_length=4"):
        EncodedSplit([np.arange(5)], [np.zeros(5, np.int64)], None, max_length=4)
    with pytest.raises(ValueError, match="2 sequences but 1 labels"):
        EncodedSplit([np.arange(2)] * 2, [np.zeros(2, np.int64)] * 2, np.zeros(1), 8)
