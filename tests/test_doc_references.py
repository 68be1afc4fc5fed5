"""What the documentation names exists: a module split or a rename (issue 12) must not leave
a docstring or a docs page pointing at a function, module or file that is gone.

Checked statically (no imports): every fully qualified ``:func:`dhtchat...``` (``class``,
``meth``, ``mod``, ``data``, ...) reference in a docstring of the package, and every source or
test file (``dhtchat/.../x.py``, ``tests/test_x.py::test_name``) the Markdown pages name.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_ROLE = re.compile(r":(?:func|class|meth|mod|data|attr|exc|obj):`~?(dhtchat(?:\.\w+)+)`")
_PATH = re.compile(r"`((?:dhtchat|tests|benchmarks|examples)/[\w/.\-]+\.py)(?:::(\w+))?`")
_PAGES = [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md",
          ROOT / "benchmarks" / "README.md", ROOT / "examples" / "README.md"]


def _module_file(parts: list[str]) -> Path | None:
    path = ROOT.joinpath(*parts)
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _names(body: list[ast.stmt]) -> dict[str, ast.stmt]:
    """The names a module or class body binds (imports included: re-exports count)."""
    out: dict[str, ast.stmt] = {}
    for node in body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            out[node.name] = node
        elif isinstance(node, ast.Assign):
            out.update((t.id, node) for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            out[node.target.id] = node
        elif isinstance(node, ast.Import | ast.ImportFrom):
            out.update(((a.asname or a.name).split(".")[0], node) for a in node.names)
        elif isinstance(node, ast.If | ast.Try):
            out.update(_names(node.body))
    return out


def _resolves(dotted: str) -> bool:
    """Whether ``dhtchat.a.b.Name.member`` names a module, then a top-level name of it, then
    a member of that class (defined in its body or assigned as ``self.member``)."""
    parts = dotted.split(".")
    for split in range(len(parts), 0, -1):
        source = _module_file(parts[:split])
        if source is None:
            continue
        rest = parts[split:]
        if not rest:
            return True
        target = _names(ast.parse(source.read_text("utf-8")).body).get(rest[0])
        if target is None or len(rest) > 2:
            return False
        if len(rest) == 1 or isinstance(target, ast.Import | ast.ImportFrom):
            return True
        if not isinstance(target, ast.ClassDef):
            return False
        assigned = {a.attr for a in ast.walk(target) if isinstance(a, ast.Attribute)
                    and isinstance(a.value, ast.Name) and a.value.id == "self"}
        return rest[1] in _names(target.body) or rest[1] in assigned or bool(target.bases)
    return False


def test_every_qualified_reference_in_a_docstring_exists() -> None:
    missing = [f"{source.relative_to(ROOT)}: {match.group(1)}"
               for source in sorted((ROOT / "dhtchat").rglob("*.py"))
               for match in _ROLE.finditer(source.read_text("utf-8"))
               if not _resolves(match.group(1))]
    assert not missing, "docstrings name what no longer exists:\n" + "\n".join(missing)


def test_the_checker_refuses_what_is_gone() -> None:
    assert _resolves("dhtchat.sim.launch.launch_environment")
    assert _resolves("dhtchat.core.node.DhtNode")
    assert _resolves("dhtchat.messaging.session.Session.to_dict")
    assert _resolves("dhtchat.cli")
    for gone in ("dhtchat.sim.launch.relaunch", "dhtchat.app.cli.main",
                 "dhtchat.messaging.session.Session._to_obj", "dhtchat.core.nowhere"):
        assert not _resolves(gone), gone


@pytest.mark.parametrize("page", _PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_file_and_test_a_page_names_exists(page: Path) -> None:
    missing = []
    for match in _PATH.finditer(page.read_text("utf-8")):
        source = ROOT / match.group(1)
        if not source.is_file():
            missing.append(match.group(1))
        elif match.group(2) and match.group(2) not in _names(
                ast.parse(source.read_text("utf-8")).body):
            missing.append(match.group(0).strip("`"))
    assert not missing, f"{page.name} names what no longer exists: {missing}"
