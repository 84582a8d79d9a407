"""Root pytest configuration.

* Notebooks executed by pytest (``--nbmake tutorials``) run their quick ``small`` version
  unless NPCOSTEFF_TUTORIAL_SIZE says otherwise, and with their exercises' solutions on
  (NPCOSTEFF_SOLUTIONS=1; learners get them off), so that every exercise's check runs.
* Strict mode: when ``CI=true`` or ``NPCOSTEFF_STRICT=1``, a test that would be skipped
  (a missing optional package, the packaged MiniLM, a full GLUE folder, ...) fails instead,
  with the skip's reason in its message. CI must run every test; a local run without the
  optional pieces still skips, and ``-rs`` lists why. ``NPCOSTEFF_STRICT=0`` turns strict
  mode off even under CI.
"""

import os

import npcosteff  # noqa: F401  (first: its thread settings, npcosteff/threads.py, must precede NumPy's OpenBLAS)
import pytest

os.environ.setdefault("NPCOSTEFF_TUTORIAL_SIZE", "small")
os.environ.setdefault("NPCOSTEFF_SOLUTIONS", "1")


def strict_mode() -> bool:
    """Whether skips are failures (see the module docstring)."""
    explicit = os.environ.get("NPCOSTEFF_STRICT")
    if explicit is not None:
        return explicit.strip().lower() in ("1", "true", "yes")
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def _skip_reason(report) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:      # (file, line, "Skipped: reason")
        return str(longrepr[2])
    return str(longrepr)


def _fail_skip(report) -> None:
    if strict_mode() and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = (f"this test was skipped, and skips are failures under CI=true / NPCOSTEFF_STRICT=1: "
                           f"{_skip_reason(report)}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _fail_skip(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    _fail_skip(outcome.get_result())


def pytest_report_header(config):
    return f"npcosteff strict mode (skips fail): {'on' if strict_mode() else 'off'}"
