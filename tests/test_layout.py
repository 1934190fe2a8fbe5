"""The house: imports run one way with no circles, functions fit on a screen, the docs' links resolve,
and the project speaks of itself (no work-session history or issue numbers in what it ships).

Static checks over the tracked tree: `ast` for imports and function lengths, plain text for links
and wording. Each failure names the file and line to change.
"""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("training", "export", "serving", "clients")  # each may import the ones before it, never clients
MAX_FUNCTION_LINES = 60
MAX_README_LINES = 300
HISTORY = re.compile(r"\bissues? ?#?\d+|\bissue-\d+|\b(first|second|third|fourth|fifth|sixth|this|next|last|previous|earlier|later) session\b",
                     re.IGNORECASE)


def tracked_files(*suffixes: str) -> list[Path]:
    listed = subprocess.run(["git", "ls-files"], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout.split()
    return [REPO_ROOT / name for name in listed if name.endswith(suffixes) and (REPO_ROOT / name).is_file()]


def project_modules() -> dict[str, Path]:
    """Dotted name -> file of every module of the four packages (model versions and results excluded)."""
    modules = {}
    for path in tracked_files(".py"):
        parts = path.relative_to(REPO_ROOT).with_suffix("").parts
        if parts[0] not in PACKAGES or "results" in parts:
            continue
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports, lazy imports inside functions included."""
    modules = project_modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            else:
                continue
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name and not name.startswith(target + "."):  # a package's own __init__ is no edge
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_circles():
    assert cycles(import_graph()) == []


def test_cycle_finder_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_nothing_imports_the_clients():
    upward = {name: sorted(t for t in targets if t.split(".")[0] == "clients")
              for name, targets in import_graph().items() if name.split(".")[0] != "clients"}
    assert {name: targets for name, targets in upward.items() if targets} == {}


def test_functions_fit_on_a_screen():
    long = []
    for name, path in project_modules().items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES:
                long.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert long == []


def test_the_project_speaks_of_itself():
    """No issue numbers or work-session history in what is tracked (git history keeps them)."""
    this_file = Path(__file__).resolve()
    hits = []
    for path in tracked_files(".py", ".md", ".txt", ".pbtxt", ".yaml", ".yml", ".sh", ".toml", ".ini", "Makefile", "Dockerfile"):
        if path.resolve() == this_file:
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if HISTORY.search(line):
                hits.append(f"{path.relative_to(REPO_ROOT)}:{number}: {line.strip()[:100]}")
    assert hits == []


def markdown_pages() -> list[Path]:
    return [path for path in tracked_files(".md") if path.parent == REPO_ROOT or "docs" in path.relative_to(REPO_ROOT).parts]


LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def test_relative_links_in_the_readme_and_docs_resolve():
    pages = markdown_pages()
    assert REPO_ROOT / "README.md" in pages and any("docs" in page.parts for page in pages)
    broken = []
    for page in pages:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL)  # links inside code blocks are examples
        for target in LINK.findall(text):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue  # a web address or an anchor on the same page
            if not (page.parent / target.split("#")[0]).exists():
                broken.append(f"{page.relative_to(REPO_ROOT)}: {target}")
    assert broken == []


def test_the_link_checker_sees_a_broken_link(tmp_path):
    page = "see [the guide](docs/missing.md), [a site](https://example.com) and ![a picture](export/released/samples.png)"
    targets = [t for t in LINK.findall(page) if not re.match(r"[a-z]+:", t)]
    assert targets == ["docs/missing.md", "export/released/samples.png"]
    assert not (REPO_ROOT / targets[0]).exists() and (REPO_ROOT / targets[1]).exists()


@pytest.mark.parametrize("page", ["README.md"])
def test_the_readme_is_short(page):
    lines = len((REPO_ROOT / page).read_text().splitlines())
    assert lines <= MAX_README_LINES, f"{page} has {lines} lines; details belong in docs/"
