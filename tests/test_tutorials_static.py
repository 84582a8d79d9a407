"""Static checks of the tutorial notebooks.

The notebooks themselves run under ``pytest --nbmake tutorials`` (their ``small`` size, set
by the root conftest.py). These tests only read the committed ``.ipynb`` files, so they are
fast: each notebook

* imports npcosteff and defines no function or class under the name of a public function of
  the package (a notebook teaches with the library's own code, it does not re-implement it);
* has the size switch ``SIZE = os.environ.get("NPCOSTEFF_TUTORIAL_SIZE", "full")`` in one of
  its first code cells, accepting the sizes small, medium and full;
* is committed with the outputs of a complete run (the full size, or the medium size when its
  first cell says so): every code cell executed, no error output, at least one image, and no
  absolute path of the machine that ran it;
* reads GLUE through `npcosteff.data.glue_source` (``$NPCOSTEFF_GLUE_DIR``, else the slices
  shipped with the package in the small size), never from a folder of a development layout;
* poses its exercises as a stub that only raises NotImplementedError, a solution in the cells
  below it that runs only under ``SHOW_SOLUTIONS`` (off unless NPCOSTEFF_SOLUTIONS=1), and a
  ``check_*`` of npcosteff.exercises, committed passing;
* asks questions after its plots, each with a folded answer.
"""

from __future__ import annotations

import ast
import json
import os
import re
from pathlib import Path

import pytest

import npcosteff

REPO = Path(__file__).resolve().parents[1]
TUTORIALS = REPO / "tutorials"
NOTEBOOKS = ["01_bert_forward.ipynb", "02_backprop_by_hand.ipynb", "03_multi_exit.ipynb",
             "04_slenderization.ipynb", "05_distillation.ipynb", "06_early_exit.ipynb", "07_capstone.ipynb"]
SIZE_SWITCH = re.compile(r"""^SIZE\s*=\s*os\.environ\.get\(\s*["']NPCOSTEFF_TUTORIAL_SIZE["']\s*,\s*["']full["']\s*\)""",
                         re.MULTILINE)
# The kernels every tutorial must take from the package; also caught by the package scan below,
# listed here so that the check holds even if a kernel moves to a private name.
KERNEL_NAMES = {"gelu", "gelu_backward", "softmax", "softmax_backward", "layer_norm", "layer_norm_backward",
                "log_softmax", "cross_entropy", "attention", "linear", "dropout_mask"}
# Absolute paths that would reveal where a notebook was run (user folders, scratch space).
MACHINE_PATH = re.compile(r"(?<![\w.])/(?:home|root|Users|work|tmp|private|var/folders)/")


def _load(name: str) -> dict:
    with open(TUTORIALS / name, encoding="utf-8") as f:
        return json.load(f)


def _code_cells(nb: dict) -> list[str]:
    return ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]


def _python(source: str) -> str:
    """Cell source without IPython magics and shell escapes (``%matplotlib inline``, ``!ls``)."""
    return "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines())


def _package_function_names() -> set[str]:
    """Public top-level functions and classes of every module of the npcosteff package."""
    names = set()
    for path in Path(npcosteff.__file__).parent.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
                names.add(node.name)
    return names


def _output_texts(nb: dict):
    """Every text an output of the notebook holds (streams, results, displays, errors)."""
    for cell in nb["cells"]:
        for out in cell.get("outputs", []):
            if "text" in out:
                yield "".join(out["text"])
            for mime, value in out.get("data", {}).items():
                if mime.startswith("text/") or mime == "application/json":
                    yield value if isinstance(value, str) else json.dumps(value)
            if out.get("output_type") == "error":
                yield "\n".join(out.get("traceback", []))


def test_every_tutorial_is_there():
    found = sorted(p.name for p in TUTORIALS.glob("*.ipynb"))
    assert found == NOTEBOOKS


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_imports_the_package_and_reimplements_nothing(name):
    sources = [_python(s) for s in _code_cells(_load(name))]
    trees = [ast.parse(s) for s in sources]      # a syntax error in a cell fails here, naming the notebook
    imported = set()
    defined = set()
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imported.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module.split(".")[0])
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                defined.add(node.name)
    assert "npcosteff" in imported, f"{name} does not import npcosteff"
    copies = defined & (_package_function_names() | KERNEL_NAMES)
    assert not copies, f"{name} defines {sorted(copies)}, which the package already provides: use the package's"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_has_the_size_switch_at_the_top(name):
    cells = _code_cells(_load(name))
    assert any(SIZE_SWITCH.search(c) for c in cells[:2]), (
        f'{name} needs SIZE = os.environ.get("NPCOSTEFF_TUTORIAL_SIZE", "full") in its first two code cells')
    assert any("small" in c for c in cells), f"{name} has no 'small' setting for the size switch"
    sizes = re.search(r"assert SIZE in \(([^)]*)\)", "\n".join(cells[:2]))
    assert sizes and {s.strip().strip("'\"") for s in sizes.group(1).split(",")} == {"small", "medium", "full"}, (
        f"{name} must accept the sizes small, medium and full (assert SIZE in (\"small\", \"medium\", \"full\"))")


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_with_the_outputs_of_a_full_run(name):
    nb = _load(name)
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    unexecuted = [i for i, c in enumerate(code) if c.get("execution_count") is None]
    assert not unexecuted, f"{name}: code cells {unexecuted} were not executed before committing"
    outputs = [o for c in code for o in c.get("outputs", [])]
    errors = [o.get("ename") for o in outputs if o.get("output_type") == "error"]
    assert not errors, f"{name} was committed with errors: {errors}"
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert images, f"{name} has no plot in its committed outputs"
    texts = "\n".join(_output_texts(nb))
    if "size: full" not in texts:
        # A notebook whose full run is too slow may be committed from a medium run, and then says so at its top.
        top = "".join(nb["cells"][0]["source"])
        assert "size: medium" in texts and "medium" in top, (
            f"{name} was not committed from a full run (no 'size: full' in its outputs), nor from a medium run "
            f"that its first cell announces")
    leaks = sorted(set(m.group(0) for m in MACHINE_PATH.finditer(texts)))
    assert not leaks, f"{name} outputs show absolute paths of the machine that ran it: {leaks}"
    widgets = [o for o in outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert not widgets, f"{name} has progress-bar widgets in its outputs (they do not render outside Jupyter)"


# --------------------------------------------------------------------------- where the data comes from

@pytest.mark.parametrize("name", NOTEBOOKS)
def test_reads_glue_through_glue_source(name):
    sources = "\n".join(_code_cells(_load(name)))
    assert "shared" not in sources and "find_glue_dir" not in sources and "npcosteff.data.locate" not in sources, name
    if "load_task_data(" in sources or "load_glue(" in sources:
        assert 'glue_source(default="shipped" if SIZE == "small"' in sources, (
            f"{name} reads GLUE without glue_source: the small size must run on the shipped slices")


# --------------------------------------------------------------------------- exercises

# The exercises of each notebook: the check of npcosteff.exercises that each one calls.
EXERCISES = {
    "01_bert_forward.ipynb": ["check_flops"],
    "02_backprop_by_hand.ipynb": ["check_softmax_backward", "check_attention_backward"],
    "03_multi_exit.ipynb": ["check_gradient_equilibrium"],
    "04_slenderization.ipynb": ["check_ffn_slice", "check_low_rank_embedding", "check_head_scores",
                                "check_neuron_scores"],
    "05_distillation.ipynb": ["check_distillation_loss"],
    "06_early_exit.ipynb": ["check_entropy_exit"],
    "07_capstone.ipynb": ["check_operating_point"],
}
# Learners write the exercises themselves unless they ask for the solutions: the default is "0".
SOLUTIONS_SWITCH = re.compile(
    r"""^SHOW_SOLUTIONS\s*=\s*os\.environ\.get\(\s*["']NPCOSTEFF_SOLUTIONS["']\s*,\s*["']0["']\s*\)\s*==\s*["']1["']""",
    re.MULTILINE)
SOLUTION_HEADER = "Solution (run or read after trying)"


def _tree(cell) -> ast.Module:
    return ast.parse(_python("".join(cell["source"])))


def _is_stub(fn: ast.FunctionDef) -> bool:
    """A docstring, then ``raise NotImplementedError(...)``, and nothing else."""
    body = fn.body
    return (len(body) == 2 and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str) and isinstance(body[1], ast.Raise)
            and getattr(getattr(body[1].exc, "func", body[1].exc), "id", None) == "NotImplementedError")


def _exercise_calls(source: str):
    """(check name, learner's function name) for every ``check_x(my_fn)`` expression of a cell."""
    for node in ast.walk(ast.parse(_python(source))):
        if (isinstance(node, ast.Call) and getattr(node.func, "id", "").startswith("check_")
                and node.func.id != "check_gradient" and node.args and isinstance(node.args[0], ast.Name)):
            yield node.func.id, node.args[0].id


def _exercises(nb):
    """(check, function, index of the check cell) for every exercise of a notebook."""
    return [(check, fn, i) for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code"
            for check, fn in _exercise_calls("".join(c["source"]))]


def test_at_least_ten_exercises_in_six_notebooks():
    assert set(EXERCISES) <= set(NOTEBOOKS)
    assert len(EXERCISES) >= 6 and sum(len(v) for v in EXERCISES.values()) >= 10
    import npcosteff.exercises as ex
    for checks in EXERCISES.values():
        assert all(callable(getattr(ex, c, None)) for c in checks), checks


@pytest.mark.parametrize("name", sorted(EXERCISES))
def test_solutions_are_off_by_default(name):
    code = _code_cells(_load(name))
    assert any(SOLUTIONS_SWITCH.search(c) for c in code[:2]), (
        f'{name} needs SHOW_SOLUTIONS = os.environ.get("NPCOSTEFF_SOLUTIONS", "0") == "1" in its first two code cells')
    assert not any(re.search(r"NPCOSTEFF_SOLUTIONS[\"']\s*,\s*[\"']1", c) for c in code), (
        f"{name} turns the solutions on by default somewhere")


@pytest.mark.parametrize("name", sorted(EXERCISES))
def test_exercises_have_a_stub_a_hidden_solution_and_a_check(name):
    nb = _load(name)
    cells = nb["cells"]
    found = _exercises(nb)
    assert sorted(c for c, _, _ in found) == sorted(EXERCISES[name]), (
        f"{name}: exercises {sorted(c for c, _, _ in found)}, expected {sorted(EXERCISES[name])}")
    markdown = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    for check, fn, at in found:
        # the cells before the check: stub, solution header, guarded solution
        assert at >= 3, f"{name}: {check}({fn}) has no stub and solution above it"
        stub, header, solution = cells[at - 3], cells[at - 2], cells[at - 1]
        assert stub["cell_type"] == "code", f"{name}: the cell three above {check}({fn}) must be the stub of {fn}"
        body = _tree(stub).body
        assert len(body) == 1 and isinstance(body[0], ast.FunctionDef) and body[0].name == fn, (
            f"{name}: the stub cell of {fn} must hold only `def {fn}(...)` (its solution goes below it)")
        assert _is_stub(body[0]), (
            f"{name}: the stub {fn} must hold only a docstring and `raise NotImplementedError(...)`, no solution")
        assert "Returns" in ast.get_docstring(body[0]), f"{name}: the docstring of {fn} must say what it returns"
        assert header["cell_type"] == "markdown" and SOLUTION_HEADER in "".join(header["source"]), (
            f"{name}: the stub of {fn} must be followed by a markdown cell '{SOLUTION_HEADER}'")
        assert solution["cell_type"] == "code", f"{name}: the solution of {fn} must be a code cell above its check"
        body = _tree(solution).body
        guarded = len(body) == 1 and isinstance(body[0], ast.If) and not body[0].orelse
        assert guarded and getattr(body[0].test, "id", None) == "SHOW_SOLUTIONS", (
            f"{name}: the solution cell of {fn} must be one `if SHOW_SOLUTIONS:` block")
        defs = [n for n in body[0].body if isinstance(n, ast.FunctionDef) and n.name == fn]
        assert defs and not _is_stub(defs[0]), f"{name}: the solution cell defines no solution of {fn}"
        # nowhere else: no other cell defines it, no markdown spells the solution out
        others = [i for i, c in enumerate(cells) if c["cell_type"] == "code" and i not in (at - 3, at - 1)
                  and any(isinstance(n, ast.FunctionDef) and n.name == fn for n in ast.walk(_tree(c)))]
        assert not others, f"{name}: {fn} is also defined in cells {others}"
        assert not re.search(r"def " + re.escape(fn) + r"\(", markdown), (
            f"{name}: a markdown cell shows the code of {fn}")
        # committed with the solutions run: the check ran and passed
        texts = "".join("".join(o.get("text", "")) for o in cells[at].get("outputs", []))
        assert f"{fn}: passed" in texts, f"{name}: the committed outputs do not show '{fn}: passed'"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_no_solution_runs_without_the_switch(name):
    for source in _code_cells(_load(name)):
        assert "if not SHOW_SOLUTIONS" not in source, f"{name}: a stub still carries its solution"


# --------------------------------------------------------------------------- questions

QUESTION = "**Question.**"
ANSWER = re.compile(r"<details><summary>Answer</summary>\s*\n(.+?)</details>", re.DOTALL)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_questions_after_every_plot_with_folded_answers(name):
    cells = _load(name)["cells"]
    questions = [i for i, c in enumerate(cells) if c["cell_type"] == "markdown" and QUESTION in "".join(c["source"])]
    assert questions, f"{name} asks no question about its plots"
    for i in questions:
        text = "".join(cells[i]["source"])
        asked = text.count(QUESTION)
        assert 1 <= asked <= 2, f"{name}: cell {i} asks {asked} questions (one or two per plot)"
        parts = text.split(QUESTION)[1:]
        for part in parts:
            answer = ANSWER.search(part)
            assert answer and answer.group(1).strip(), f"{name}: a question of cell {i} has no folded answer"
    plots = [i for i, c in enumerate(cells) if c["cell_type"] == "code"
             and any("image/png" in o.get("data", {}) for o in c.get("outputs", []))]
    for p in plots:                    # after the plot and the text that discusses it
        assert any(p < q <= p + 4 for q in questions), f"{name}: the plot of cell {p} has no question after it"
