"""CI's short mutation run (issue 11 item 17): mutmut mutates the proof of work and the rate
limiter in a scratch copy of the tree and the run fails if either scores below its measured
floor (benchmarks/mutation.py --ci; the full per-module run is in docs/benchmarks.md)."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("dhtchat_mutation",
                                                  ROOT / "benchmarks" / "mutation.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["dhtchat_mutation"] = module
    spec.loader.exec_module(module)
    return module


mutation = _load()


def test_the_score_counts_survivors_and_untested_mutants_of_one_module_only() -> None:
    lines = [
        "    dhtchat.core.pow.x_solve_pow__mutmut_1: killed",
        "    dhtchat.core.pow.x_solve_pow__mutmut_2: survived",
        "    dhtchat.core.pow.x_check_pow__mutmut_1: no tests",
        "    dhtchat.core.pow.x_check_pow__mutmut_2: killed",
        "    dhtchat.core.pow.x_check_pow__mutmut_3: not checked",
        "    dhtchat.core.ratelimit.x_allow__mutmut_1: survived",
    ]
    assert mutation.score("pow", lines) == (4, 2, 50)
    assert mutation.score("ratelimit", lines) == (1, 1, 0)
    assert mutation.score("records", lines) == (0, 0, 0)


def test_the_ci_selection_narrows_only_the_mutmut_test_selection() -> None:
    work = mutation.scratch_tree(mutation.CI_TESTS)
    try:
        config = (work / "pyproject.toml").read_text(encoding="utf-8")
        original = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
        selection = re.search(r"pytest_add_cli_args_test_selection = \[(.*?)\]", config, re.S)
        assert selection is not None
        assert re.findall(r'"([^"]+)"', selection.group(1)) == list(mutation.CI_TESTS)
        for test in mutation.CI_TESTS:
            assert (work / test).is_file()
        # everything else, the list of modules to mutate included, is unchanged
        pattern = r"pytest_add_cli_args_test_selection = \[.*?\]"
        assert re.sub(pattern, "", config, flags=re.S) == re.sub(pattern, "", original,
                                                                  flags=re.S)
        assert (work / "dhtchat" / "core" / "pow.py").read_bytes() == (
            ROOT / "dhtchat" / "core" / "pow.py").read_bytes()
    finally:
        shutil.rmtree(work)


@pytest.mark.slow
def test_the_short_mutation_run_holds_the_floors() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "mutation.py"), "--ci"],
                          capture_output=True, text=True, timeout=1800, check=False)
    scores = dict(re.findall(r"^(\w+): \d+ mutants, \d+ survived, score (\d+) %",
                             done.stdout, re.M))
    assert set(scores) == set(mutation.CI_MODULES), done.stdout[-2000:] + done.stderr[-2000:]
    for name, percent in scores.items():
        assert int(percent) >= mutation.FLOORS[name], done.stdout[-2000:]
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
