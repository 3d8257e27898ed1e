"""The module constants of the compiled modules are Final.

Code compiled with mypyc reads a module-level name that is not Final from the module's dict,
at each use (8-18 ns: a dict lookup, an attribute lookup from another module); a Final one
is a C constant or a C static. The miss path reads dozens a query (wire.NOERROR, the
struct formats...). The rule: every UPPER_CASE name bound at a compiled module's top level is
Final, or a TypeVar or a TypeAlias (which mypyc never reads at run time).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import resolver

pytestmark = pytest.mark.unit

CONSTANT = re.compile(r"^_?[A-Z][A-Z0-9_]*$")


def compiled_sources() -> list[Path]:
    """The checkout: setup.py's list. The compiled build's installed copy (no setup.py): the
    sources beside its extension modules."""
    root = Path(resolver.__file__).parent
    setup = root.parent / "setup.py"
    if setup.exists():
        return [
            root.parent / name for name in re.findall(r'"(resolver/[^"]+\.py)"', setup.read_text())
        ]
    return [so.with_name(so.name.split(".")[0] + ".py") for so in root.rglob("*.so")]


def _not_final(path: Path) -> list[str]:
    found = []
    names: list[ast.expr]
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.AnnAssign):
            annotation = ast.unparse(node.annotation)
            names = [node.target] if node.value is not None else []
            if annotation.startswith(("Final", "TypeAlias")):
                continue
        elif isinstance(node, ast.Assign):
            if isinstance(node.value, ast.Call) and ast.unparse(node.value.func) == "TypeVar":
                continue
            names = node.targets
        else:
            continue
        for target in names:
            for name in ast.walk(target):
                if isinstance(name, ast.Name) and CONSTANT.match(name.id):
                    found.append(f"{path.name}:{node.lineno} {name.id}")
    return found


def test_the_compiled_modules_constants_are_final() -> None:
    sources = compiled_sources()
    assert len(sources) > 40 and all(path.exists() for path in sources), sources
    assert [line for path in sources for line in _not_final(path)] == []


def test_the_rule_sees_a_constant_that_is_not_final(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text(
        "from typing import Final, TypeAlias, TypeVar\n"
        "A = 1\nB, C = 2, 3\nD: int = 4\nE: Final = 5\n"
        "T = TypeVar('T')\nF: TypeAlias = int\nlog = 6\n"
    )
    assert _not_final(module) == ["m.py:2 A", "m.py:3 B", "m.py:3 C", "m.py:4 D"]
