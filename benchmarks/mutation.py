"""Bounded mutation run (mutmut, config in pyproject [tool.mutmut]) over the security-critical
core modules, one module at a time; prints the score per module and fails below the
measured floor.

    nice -n 15 python benchmarks/mutation.py                      # the default set
    nice -n 15 python benchmarks/mutation.py --module records     # one module
    python benchmarks/mutation.py --ci                            # the short run CI does

--ci mutates pow and ratelimit in a scratch copy of the tree, running only the tests that
kill their mutants (CI_TESTS), and fails below the same floors (tests/test_mutation_ci.py).

session (session.py, prekeys.py and ratchet.py: 771 mutants, about 7 min) and node (the
request handlers and the checks on replies in node.py and node_state.py: 728 mutants of the
node's 2154, about 8 min) are measured but not in the default set (SLOW); run them with
--module. The node's other methods (node_queries.py: lookups, timers, routing upkeep) are
not mutated by this script.
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

MODULES = {  # short name -> dotted module mutmut names its mutants after
    "pow": "dhtchat.core.pow", "ratelimit": "dhtchat.core.ratelimit",
    "storage": "dhtchat.core.storage", "records": "dhtchat.core.records",
    "contacts": "dhtchat.core.contacts", "sas": "dhtchat.core.sas",
    "node": "dhtchat.core.node", "session": "dhtchat.messaging.session",
}
# the node: only request handling and the checks on values in replies, which live in two of
# its three layers (module, class, methods; the layers are described in dhtchat/core/node_state)
NODE_METHODS = (
    ("dhtchat.core.node", "DhtNode",
     ("receive_datagram", "_handle_request", "_shrink_reply", "_nodes_for", "_values_for",
      "_handle_store", "_handle_listen", "_handle_response", "_collect_values", "_handle_push")),
    ("dhtchat.core.node_state", "NodeState", ("_make_token", "_epoch", "_store_record")),
)
GLOBS = {name: [module + ".*"] for name, module in MODULES.items()}
GLOBS["node"] = [f"{module}.x\u01c1{cls}\u01c1{m}__mutmut_*"
                 for module, cls, methods in NODE_METHODS for m in methods]
# the ratchet: session.py and the two modules split out of it
GLOBS["session"] += ["dhtchat.messaging.prekeys.*", "dhtchat.messaging.ratchet.*"]
SLOW = {"node", "session"}  # measured, but run only with --module
CI_MODULES = ("pow", "ratelimit")
# the CI run's test selection: the same scores as the full selection in pyproject, in a
# fraction of the time
CI_TESTS = ("tests/test_mutation_kills.py", "tests/test_security.py")
ROOT = Path(__file__).resolve().parent.parent
# mutmut from the interpreter's environment (a venv need not be on PATH)
_VENV_MUTMUT = Path(sys.executable).with_name("mutmut")
MUTMUT = str(_VENV_MUTMUT) if _VENV_MUTMUT.exists() else "mutmut"
# measured floors (%), docs/benchmarks.md "Mutation testing"
FLOORS: dict[str, int] = {"pow": 90, "ratelimit": 91, "storage": 85, "records": 88,
                          "contacts": 88, "sas": 82, "node": 76, "session": 84}


def score(module: str, results: list[str]) -> tuple[int, int, int]:
    """(mutants, survived, score %) of ``module`` in ``mutmut results --all true`` lines."""
    rows = []
    for line in results:
        name, _, status = line.strip().partition(": ")
        if status != "not checked" and any(fnmatch.fnmatchcase(name, g) for g in GLOBS[module]):
            rows.append(status)
    survived = sum(status in ("survived", "no tests") for status in rows)
    return len(rows), survived, 100 * (len(rows) - survived) // max(1, len(rows))


def scratch_tree(tests: tuple[str, ...]) -> Path:
    """A copy of the sources, tests and config whose mutmut test selection is ``tests``."""
    work = Path(tempfile.mkdtemp(prefix="dhtchat-mutation-"))
    ignore = shutil.ignore_patterns("__pycache__", "*.so", "mutants")
    for name in ("dhtchat", "tests", "benchmarks"):
        shutil.copytree(ROOT / name, work / name, ignore=ignore)
    config = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    selection = "pytest_add_cli_args_test_selection = [" + ", ".join(
        f'"{t}"' for t in tests) + "]"
    config, count = re.subn(r"pytest_add_cli_args_test_selection = \[.*?\]", selection,
                            config, flags=re.S)
    if count != 1:
        raise SystemExit("pyproject.toml has no [tool.mutmut] test selection to narrow")
    (work / "pyproject.toml").write_text(config, encoding="utf-8")
    return work


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--module", action="append", choices=sorted(MODULES),
                        help="mutate only this module (repeatable)")
    parser.add_argument("--ci", action="store_true",
                        help="the short CI run: pow and ratelimit with CI_TESTS, in a scratch copy")
    args = parser.parse_args(argv)
    if args.ci:
        work = scratch_tree(CI_TESTS)
        try:
            os.chdir(work)
            return run(list(CI_MODULES))
        finally:
            os.chdir(ROOT)
            shutil.rmtree(work, ignore_errors=True)
    return run(args.module or [m for m in MODULES if m not in SLOW])


def run(names: list[str]) -> int:
    """Mutate ``names`` in the current directory's tree; 1 if any scores below its floor."""
    for name in names:
        subprocess.run([MUTMUT, "run", "--max-children", "1", *GLOBS[name]],
                       check=False, timeout=3600)
    out = subprocess.run([MUTMUT, "results", "--all", "true"], capture_output=True,
                         text=True, check=False).stdout.splitlines()
    failed = False
    for name in names:
        total, survived, percent = score(name, out)
        floor = FLOORS[name]
        print(f"{name}: {total} mutants, {survived} survived, score {percent} % (floor {floor} %)")
        failed |= not total or percent < floor
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
