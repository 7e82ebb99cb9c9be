"""Every code block in README.md and docs/ is executed or type-checked.

The convention (also on the docs' contributing page): a Python block is **executed** in a fresh
namespace (top-level ``await`` allowed) and **type-checked** with mypy, unless an HTML comment on
the line before its fence says otherwise:

* ``<!-- docs-test: continue -->``: executed in the namespace of the previous block of the same file
  (and type-checked together with it);
* ``<!-- docs-test: typecheck -->``: type-checked only (it needs a server, Redis or the network);
* ``<!-- docs-test: show -->``: shown only (code of another library, or a fragment).

Blocks in other languages are shown as they are; the README's shell commands are checked against CI.
"""

from __future__ import annotations

import ast
import inspect
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import CodeType, ModuleType
from typing import Any

import anyio
import pytest

from asgi_resilience.policies import reset_policies

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
MODES = ("exec", "continue", "typecheck", "show")
MARKER = re.compile(r"^\s*<!--\s*docs-test:\s*([a-z]+)\s*-->\s*$")
FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)")


@dataclass
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    mode: str
    code: str

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


@dataclass
class Unit:
    """A block and the ``continue`` blocks that follow it: one namespace, one module for mypy."""

    blocks: list[Block] = field(default_factory=list)

    @property
    def id(self) -> str:
        return self.blocks[0].id

    @property
    def mode(self) -> str:
        return self.blocks[0].mode


def parse(path: Path) -> list[Block]:
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if match is None:
            i += 1
            continue
        indent, fence, lang = match.groups()
        previous = next((line for line in reversed(lines[:i]) if line.strip()), "")
        marker = MARKER.match(previous)
        mode = marker.group(1) if marker else "exec"
        body: list[str] = []
        j = i + 1
        while j < len(lines) and not (lines[j].strip().startswith(fence) and lines[j].strip().strip(fence[0]) == ""):
            body.append(lines[j][len(indent) :] if lines[j].startswith(indent) else lines[j])
            j += 1
        assert j < len(lines), f"{path.relative_to(ROOT)}:{i + 1}: unclosed code fence"
        blocks.append(Block(path, i + 1, lang.lower(), mode, textwrap.dedent("\n".join(body)) + "\n"))
        i = j + 1
    return blocks


BLOCKS = [block for page in PAGES for block in parse(page)]
PYTHON = [block for block in BLOCKS if block.lang in ("python", "py")]


def units() -> list[Unit]:
    found: list[Unit] = []
    for block in PYTHON:
        if block.mode == "show":
            continue
        if block.mode == "continue":
            assert found and found[-1].blocks[-1].path == block.path, f"{block.id}: nothing to continue"
            found[-1].blocks.append(block)
        else:
            found.append(Unit([block]))
    return found


UNITS = units()
EXECUTED = [unit for unit in UNITS if unit.mode == "exec"]


def test_the_docs_have_code_and_every_marker_is_known() -> None:
    assert len(PYTHON) >= 30 and len(EXECUTED) >= 20
    for block in BLOCKS:
        assert block.mode in MODES, f"{block.id}: unknown marker docs-test: {block.mode}"
        assert block.mode == "exec" or block.lang in ("python", "py"), f"{block.id}: markers are for Python blocks"


def test_shown_only_blocks_are_not_ours() -> None:
    """A block that uses asgi-resilience can at least be type-checked: ``show`` is for other code."""
    for block in PYTHON:
        if block.mode == "show":
            assert "asgi_resilience" not in block.code, f"{block.id}: type-check it instead of showing it"


def test_every_python_block_parses() -> None:
    for block in PYTHON:
        try:
            ast.parse(block.code, filename=block.id, feature_version=(3, 10))
        except SyntaxError as exc:
            pytest.fail(f"{block.id}: {exc}")


@pytest.fixture(autouse=True)
def _fresh_policies() -> Iterator[None]:
    """Named policies are process-wide: each block (and the tests after this file) starts without them."""
    reset_policies()
    yield
    reset_policies()


@pytest.mark.parametrize("unit", EXECUTED, ids=[unit.id for unit in EXECUTED])
def test_block_runs(unit: Unit) -> None:
    """Run like a script: no event loop is running (a block may call anyio.run), top-level await gets one."""
    # a real module: frameworks (Litestar) resolve annotations through sys.modules
    module = ModuleType(f"docs_block_{abs(hash(unit.id))}")
    namespace: dict[str, Any] = vars(module)
    sys.modules[module.__name__] = module
    reset_policies()  # a block runs like a fresh process: its named policies are its own
    try:
        for block in unit.blocks:
            code = compile(block.code, block.id, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
            if code.co_flags & inspect.CO_COROUTINE:
                anyio.run(_run_async, code, namespace)
            else:
                exec(code, namespace)  # our own documentation
    finally:
        del sys.modules[module.__name__]
        reset_policies()


async def _run_async(code: CodeType, namespace: dict[str, Any]) -> None:
    await eval(code, namespace)
    for value in list(namespace.values()):  # close what the block opened (a stack's or a cache's client)
        closer = getattr(value, "aclose", None)
        if type(value).__module__.startswith("asgi_resilience.") and inspect.iscoroutinefunction(closer):
            await closer()


MYPY_CONFIG = """\
[mypy]
python_version = 3.10
check_untyped_defs = True
warn_unused_ignores = True
# a library without type information (Django without django-stubs) is Any, not an error
disable_error_code = top-level-await, import-untyped
"""


@pytest.mark.timeout(300)
def test_python_blocks_type_check(tmp_path: Path) -> None:
    """One mypy run over every executed and type-checked unit, each as a module of its own."""
    names: dict[str, str] = {}
    for number, unit in enumerate(UNITS):
        name = f"block_{number:03d}.py"
        names[name] = unit.id
        (tmp_path / name).write_text("".join(block.code for block in unit.blocks), encoding="utf-8")
    (tmp_path / "mypy.ini").write_text(MYPY_CONFIG, encoding="utf-8")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--config-file",
            str(tmp_path / "mypy.ini"),
            "--cache-dir",
            str(ROOT / ".mypy_cache"),
            *sorted(names),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=280,
    )
    report = result.stdout
    for name, where in names.items():
        report = report.replace(name, f"{where} ({name})")
    assert result.returncode == 0, report


def test_readme_commands_are_the_ones_ci_runs() -> None:
    readme = [block.code for block in BLOCKS if block.path.name == "README.md" and block.lang == "bash"]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    test_command = "python -m pytest --cov=asgi_resilience --cov-report=term"
    assert any(test_command in code for code in readme)
    assert f".venv/bin/{test_command}" in ci
    assert any(code.strip().endswith("python -m asgi_resilience.demo") for code in readme)


def test_user_docs_cite_no_issue_numbers() -> None:
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        found = re.findall(r"\(#\d+\)|\bissue #?\d+|the issue's", text)
        assert not found, f"{page.relative_to(ROOT)}: {found}"


SIGNATURE = re.compile(r"`([A-Za-z_]\w*)\(([^`()]*\*[^`()]*)\)`")


def written_signatures() -> list[tuple[str, str, list[str]]]:
    """Signatures written out in prose (`name(a, *, b=1)`) of public names: (where, name, parameters)."""
    import asgi_resilience

    found = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for match in SIGNATURE.finditer(text):
            name, params = match.group(1), " ".join(match.group(2).split())
            if name not in asgi_resilience.__all__:
                continue
            try:
                tree = ast.parse(f"def f({params}): pass")
            except SyntaxError:
                continue  # prose, not a signature ("**BreakerPolicy options")
            args = tree.body[0].args  # type: ignore[attr-defined]
            names = [a.arg for a in [*args.posonlyargs, *args.args, *args.kwonlyargs]]
            names += [a.arg for a in (args.vararg, args.kwarg) if a is not None]
            line = text.count("\n", 0, match.start()) + 1
            found.append((f"{page.relative_to(ROOT)}:{line}", name, names))
    return found


def test_signatures_written_in_the_docs_match_the_code() -> None:
    """A signature spelled out in prose lists every parameter, as the code names them (no drift)."""
    import asgi_resilience

    written = written_signatures()
    assert len(written) >= 3
    for where, name, names in written:
        obj = getattr(asgi_resilience, name)
        actual = [p for p in inspect.signature(obj).parameters if p != "self"]
        assert names == actual, f"{where}: `{name}(...)` lists {names}, the code takes {actual}"


def test_the_policies_page_runs_its_examples() -> None:
    """docs/policies.md: every Python block is executed (or type-checked when it needs Redis)."""
    page = [block for block in PYTHON if block.path == ROOT / "docs" / "policies.md"]
    assert sum(block.mode == "exec" for block in page) >= 3
    assert all(block.mode in ("exec", "continue", "typecheck") for block in page)
