"""Progress bars: tqdm's bar on a terminal; plain, newline-ended lines now and then when the
output is a file or a pipe (CI logs), and never a carriage-return frame there."""

import io
import os
import subprocess
import sys

import pytest

from npcosteff.progress import PlainProgress, is_terminal, progress_bar


class Clock:
    """A hand-driven monotonic clock."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_a_terminal_gets_tqdm_and_a_file_gets_plain_lines():
    from tqdm import tqdm

    terminal = FakeTerminal()
    bar = progress_bar(total=3, desc="x", file=terminal)
    assert isinstance(bar, tqdm)
    bar.update(3)
    bar.close()
    assert "\r" in terminal.getvalue()                       # tqdm redraws in place there
    assert isinstance(progress_bar(total=3, file=io.StringIO()), PlainProgress)
    assert isinstance(progress_bar(total=3, file=io.StringIO(), disable=True), tqdm)   # off: tqdm's no-op
    assert not is_terminal(io.StringIO()) and is_terminal(FakeTerminal())
    assert not is_terminal(object())


def test_plain_lines_at_each_tenth_at_most_every_few_seconds_and_at_the_end():
    out, clock = io.StringIO(), Clock()
    bar = PlainProgress(total=100, desc="sst2 finetune", file=out, clock=clock)
    for step in range(100):
        clock.now += 1.0                                     # 1 s per step
        if step >= 20:
            bar.set_postfix(loss=f"{1 / (step + 1):.4f}")
        bar.update(1)
    bar.close()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    # a line per tenth (every 10 s here, above min_seconds); the last tenth is the closing line
    assert len(lines) == 10, lines
    assert lines[0] == "sst2 finetune: 10/100 (10%), 10 s, about 90 s left"
    assert lines[4].startswith("sst2 finetune: 50/100 (50%), 50 s, about 50 s left, loss=")
    assert lines[-1] == "sst2 finetune: 100/100 (100%), 100 s, loss=0.0100"
    bar.close()                                              # closing twice prints nothing more
    assert len(out.getvalue().splitlines()) == 10


def test_fast_bars_print_only_the_end_and_slow_ones_every_max_seconds():
    out, clock = io.StringIO(), Clock()
    bar = PlainProgress(total=1000, desc="fast", file=out, clock=clock)
    for _ in range(1000):
        clock.now += 0.001                                   # the whole bar in 1 s
        bar.update()
    bar.close()
    assert out.getvalue() == "fast: 1000/1000 (100%), 1 s\n"

    out = io.StringIO()
    bar = PlainProgress(total=None, desc="slow", file=out, clock=clock)   # no total: time only
    start = clock.now
    for _ in range(4):
        clock.now += PlainProgress.max_seconds
        bar.update()
    bar.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 4 and lines[0] == f"slow: 1, {clock.now - start - 90:.0f} s"


def test_iteration_resume_and_inner_bars():
    out, clock = io.StringIO(), Clock()
    seen = []
    for x in PlainProgress(range(5), desc="sweep", file=out, clock=clock):
        seen.append(x)
    assert seen == list(range(5))
    assert out.getvalue() == "sweep: 5/5 (100%), 0 s\n"     # closed when the loop ends

    out = io.StringIO()
    with PlainProgress(total=10, initial=6, desc="resumed", file=out, clock=clock) as bar:
        clock.now += 10
        bar.update(4)
    assert out.getvalue() == "resumed: 10/10 (100%), 10 s\n"

    out = io.StringIO()
    inner = PlainProgress(range(3), desc="importance", leave=False, file=out, clock=clock)
    assert list(inner) == [0, 1, 2] and out.getvalue() == ""   # leave=False: no closing line


def test_a_training_run_writes_plain_lines_to_a_log(tmp_path):
    # The Trainer's bar, in a fresh process whose standard error is a file, as in CI.
    script = (
        "import numpy as np\n"
        "from npcosteff.config import CostEffConfig\n"
        "from npcosteff.data.batching import EncodedSplit\n"
        "from npcosteff.model import CostEffModel\n"
        "from npcosteff.train import Trainer, TrainingArguments\n"
        "c = CostEffConfig(vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,\n"
        "                  intermediate_size=16, max_position_embeddings=16, num_labels=2)\n"
        "rng = np.random.default_rng(0)\n"
        "ids = [rng.integers(5, 30, 6) for _ in range(8)]\n"
        "split = EncodedSplit(ids, [np.zeros(6, np.int64)] * 8, np.arange(8) % 2, max_length=6)\n"
        "args = TrainingArguments(task='sst2', objective='hard', max_steps=4, batch_size=2, progress=True, seed=0)\n"
        "Trainer(CostEffModel(c, seed=0), args, split).train()\n")
    log = tmp_path / "log.txt"
    with open(log, "w") as f:
        subprocess.run([sys.executable, "-c", script], stdout=f, stderr=subprocess.STDOUT, check=True,
                       timeout=300, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    text = log.read_text()
    assert "\r" not in text
    assert "sst2 hard: 4/4 (100%)" in text and "loss=" in text, text
