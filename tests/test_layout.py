"""The shape of the code, as CONTRIBUTING.md describes it, checked on the tree."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "freshrec"
MAX_LINES = 400


def imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at the top or inside functions."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def modules(package: str) -> list[Path]:
    return sorted((PACKAGE / package).rglob("*.py"))


@pytest.mark.parametrize("path", modules("cli"), ids=lambda p: p.name)
def test_the_command_line_only_parses_and_calls(path: Path) -> None:
    runtime = {name for name in imports(path) if name.split(".")[0] in ("threading", "multiprocessing", "uvicorn")}
    assert not runtime, f"{path.name} imports {sorted(runtime)}: a role's runtime belongs in its package"


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("serve", ("freshrec.learn", "freshrec.evaluate", "freshrec.cli")),
        ("model", ("freshrec.learn", "freshrec.serve", "freshrec.evaluate", "freshrec.cli")),
        ("storage", ("freshrec.learn", "freshrec.serve", "freshrec.model", "freshrec.cli")),
        ("learn", ("freshrec.serve", "freshrec.evaluate", "freshrec.cli")),
        ("client", ("freshrec.",)),  # an application that calls a server needs none of it
    ],
)
def test_packages_import_only_downwards(package: str, forbidden: tuple[str, ...]) -> None:
    found = {
        f"{path.relative_to(PACKAGE)} imports {name}"
        for path in modules(package)
        for name in imports(path)
        if name.startswith(forbidden) and not name.startswith(f"freshrec.{package}.")
    }
    assert not found, sorted(found)


def test_no_constructor_starts_a_thread() -> None:
    """Objects with background work have ``start()``: building one must not set anything off."""
    found = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef) and node.name == "__init__":
                calls = [c for c in ast.walk(node) if isinstance(c, ast.Call) and isinstance(c.func, ast.Attribute)]
                found += [f"{path.relative_to(PACKAGE)}:{c.lineno}" for c in calls if c.func.attr == "start"]
    assert not found, found


def test_no_source_file_is_longer_than_the_limit() -> None:
    sources = [*PACKAGE.rglob("*.py"), *(ROOT / "benchmarks").glob("*.py")]
    long = {
        str(p.relative_to(ROOT)): n
        for p in sources
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert not long, f"split these (at most {MAX_LINES} lines each): {long}"


def test_the_readme_layout_table_matches_the_tree() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = readme[readme.index("## Layout") :]
    table = table[: table.index("\n## ")]
    listed = set(re.findall(r"^\| `freshrec\.(\w+)`", table, flags=re.MULTILINE))
    tree = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    tree |= {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    assert listed == tree, f"in the tree, not the table: {sorted(tree - listed)}; the reverse: {sorted(listed - tree)}"
    named = set(re.findall(r"`(\w+(?:/\w+)*\.py)`", table))
    missing = sorted(f for f in named if not (PACKAGE / f).exists())
    assert not missing, f"the layout table names files that do not exist: {missing}"
