"""The house rules of ARCHITECTURE.md, checked on the source (ast only, nothing imported):

1. no import cycle between lmforge modules (any import counts: module level, inside a
   function, or under ``TYPE_CHECKING``);
2. no underscore name imported from another lmforge module (make it public or move it);
3. nothing outside the command layer (``lmforge/commands/``, ``lmforge/cli.py``,
   ``lmforge/__main__.py``) imports it;
4. imports point down the layers: commands → applications (serve, align, eval, …) →
   building blocks (train, infer, peft, data, vision) → models → nn → config.

Each failure names the file and line of the offending import.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "lmforge"

COMMAND_LAYER = ("lmforge.commands", "lmforge.cli", "lmforge.__main__")

# Top-level units (first component after ``lmforge``) and their layer: an import may point
# to the same layer or a lower one, never up. Within a layer, train may use infer/peft/data
# (the loop, RL rollouts) but infer never uses train (DESIGN.md).
LAYERS: dict[str, int] = {
    "config": 0,
    "io": 0,
    "nn": 1,
    "chat_template": 1,
    "tokenizer": 1,
    "models": 2,
    "data": 3,
    "vision": 3,
    "infer": 3,
    "peft": 3,
    "train": 4,
    "serve": 5,
    "align": 5,
    "eval": 5,
    "agents": 5,
    "generative": 5,
    "diffusion": 5,
    "rl": 5,
    "representation": 5,
    "video": 5,
    "commands": 6,
    "cli": 6,
    "__main__": 6,
    "__init__": 6,  # the package facade (lmforge/__init__.py)
}
# Same-layer pairs that are forbidden although the layer numbers allow them.
FORBIDDEN = {("infer", "peft"), ("data", "infer"), ("data", "peft")}


@dataclass(frozen=True)
class Import:
    source: str  # importing module, dotted
    target: str  # imported module, dotted
    names: tuple[str, ...]  # names taken with ``from … import``
    file: Path
    line: int


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve_relative(module: str, is_package: bool, level: int, name: str | None) -> str:
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (level - 1)] if level > 1 else base
    return ".".join(base + ([name] if name else []))


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> list[Import]:
    """Every lmforge import in ``path`` (resolved to modules; a ``from pkg import sub``
    of a submodule counts as importing ``pkg.sub``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "lmforge":
                    found.append(Import(module, alias.name, (), path, node.lineno))
        elif isinstance(node, ast.ImportFrom):
            target = node.module or ""
            if node.level:
                target = _resolve_relative(
                    module, path.name == "__init__.py", node.level, node.module
                )
            if target.split(".")[0] != "lmforge":
                continue
            plain = []
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                if sub in modules:
                    found.append(Import(module, sub, (), path, node.lineno))
                else:
                    plain.append(alias.name)
            if plain:
                found.append(Import(module, target, tuple(plain), path, node.lineno))
    return found


def all_imports() -> list[Import]:
    modules = source_modules()
    return [i for m, p in modules.items() for i in imports_of(m, p, modules)]


def unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def where(i: Import) -> str:
    return f"{i.file.relative_to(PACKAGE.parent)}:{i.line}"


def find_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), plus self-loops."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in edges.get(v, ()):
                cycles.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return cycles


# ---------------------------------------------------------------------- the checker's own tests
def test_cycle_finder_finds_cycles_and_only_them() -> None:
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []
    assert find_cycles({"a": {"a"}}) == [["a"]]


def test_import_parser_resolves_submodules_relative_imports_and_names(tmp_path) -> None:
    modules = source_modules()
    code = (
        "from lmforge.infer import engine\n"
        "from lmforge.models.transformer import CausalLM, _private\n"
        "def f():\n    from . import sampling\n    import lmforge.io\n"
    )
    fake = tmp_path / "lmforge" / "infer" / "fake.py"
    fake.parent.mkdir(parents=True)
    fake.write_text(code)
    found = imports_of("lmforge.infer.fake", fake, modules)
    got = {(i.target, i.names) for i in found}
    assert ("lmforge.infer.engine", ()) in got
    assert ("lmforge.models.transformer", ("CausalLM", "_private")) in got
    assert ("lmforge.infer.sampling", ()) in got
    assert ("lmforge.io", ()) in got


# ---------------------------------------------------------------------- the rules
def test_no_import_cycles() -> None:
    edges: dict[str, set[str]] = {}
    modules = source_modules()
    for i in all_imports():
        if i.target in modules and i.target != i.source:
            edges.setdefault(i.source, set()).add(i.target)
    cycles = find_cycles(edges)
    assert not cycles, "import cycles:\n" + "\n".join(" ↔ ".join(c) for c in cycles)


def test_no_private_names_across_modules() -> None:
    bad = [
        f"{where(i)}: {i.source} imports {name} from {i.target}"
        for i in all_imports()
        if i.target != i.source
        for name in i.names
        if name.startswith("_") and not name.startswith("__")
    ]
    bad += [
        f"{where(i)}: {i.source} imports the private module {i.target}"
        for i in all_imports()
        if any(part.startswith("_") and not part.startswith("__") for part in i.target.split("."))
    ]
    assert not bad, "private names imported across modules:\n" + "\n".join(bad)


def test_nothing_imports_the_command_layer() -> None:
    def in_layer(module: str) -> bool:
        return any(module == c or module.startswith(c + ".") for c in COMMAND_LAYER)

    bad = [
        f"{where(i)}: {i.source} imports {i.target}"
        for i in all_imports()
        if in_layer(i.target) and not in_layer(i.source)
    ]
    assert not bad, "library modules importing the command layer:\n" + "\n".join(bad)


def test_imports_point_down_the_layers() -> None:
    unknown = sorted({unit(m) for m in source_modules()} - set(LAYERS))
    assert not unknown, f"add these top-level modules/packages to LAYERS: {unknown}"
    bad = []
    for i in all_imports():
        a, b = unit(i.source), unit(i.target)
        if a == b:
            continue
        if LAYERS[b] > LAYERS[a] or (a, b) in FORBIDDEN:
            bad.append(f"{where(i)}: {i.source} (layer {LAYERS[a]}) imports {i.target} "
                       f"(layer {LAYERS[b]})")  # fmt: skip
    assert not bad, "imports that point up the layers:\n" + "\n".join(bad)


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: module_name(p))
def test_files_stay_small_or_say_why(path: Path) -> None:
    lines = path.read_text(encoding="utf-8").count("\n")
    if lines <= 450:
        return
    head = path.read_text(encoding="utf-8")[:2000].lower()
    assert "long because" in head, (
        f"{path.relative_to(PACKAGE.parent)} has {lines} lines: split it by concept, or say "
        "at its top why it is long ('… is long because …')"
    )


def test_every_name_has_one_home() -> None:
    """A module's ``__all__`` lists only what it defines (package ``__init__`` files gather
    names; other modules do not re-export their neighbours' names under a second path)."""
    bad = []
    for module, path in source_modules().items():
        if path.name == "__init__.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        defined = set()
        exported: list[str] = []
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                defined.add(node.name)
            targets = []
            if isinstance(node, ast.Assign):
                targets = node.targets
            elif isinstance(node, ast.AnnAssign):
                targets = [node.target]
            for target in targets:
                if isinstance(target, ast.Name):
                    defined.add(target.id)
                    if target.id == "__all__" and isinstance(node.value, (ast.List, ast.Tuple)):
                        exported = [e.value for e in node.value.elts if isinstance(e, ast.Constant)]
        bad += [f"{module}: __all__ lists {name}, defined elsewhere" for name in exported
                if name not in defined]  # fmt: skip
    assert not bad, "names exported under a second path:\n" + "\n".join(bad)


@pytest.mark.parametrize(
    "package", sorted(p.parent for p in PACKAGE.rglob("__init__.py")), ids=lambda p: module_name(p)
)
def test_package_docstring_lists_every_module(package: Path) -> None:
    """Each package's ``__init__`` docstring names each of its modules (one line each)."""
    init = package / "__init__.py"
    doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8"))) or ""
    if package == PACKAGE:  # the top package: README.md and ARCHITECTURE.md hold the map
        return
    members = [p.stem for p in package.glob("*.py") if p.name != "__init__.py"]
    members += [p.name for p in package.iterdir() if (p / "__init__.py").is_file()]
    missing = [m for m in sorted(members) if f"`{m}`" not in doc]
    assert not missing, f"{init.relative_to(PACKAGE.parent)}: docstring lists no line for {missing}"


def test_readme_layout_lists_every_module() -> None:
    """README.md's layout table has a line for every module of the package."""
    readme = (PACKAGE.parent / "README.md").read_text(encoding="utf-8")
    paths = [p.relative_to(PACKAGE.parent).as_posix() for p in PACKAGE.rglob("*.py")]
    missing = sorted(p for p in paths if not p.endswith("__init__.py") and f"`{p}`" not in readme)
    assert not missing, f"README.md's layout table lacks {missing}"


# Test files that check a concern across modules rather than one module.
CROSS_CUTTING_TESTS = {
    "test_architecture.py": "these rules, over the whole package",
    "models/test_parity.py": "every architecture option against transformers (transformer + hf)",
    "serve/test_chat_page.py": "the web chat page (app.py) in headless Chromium",
    "peft/test_prompt_learning.py": "prefix / prompt tuning and adapters against peft",
    "commands/test_cli.py": "lmforge/cli.py, with the command layer's fixtures",
}


def test_tests_mirror_the_package() -> None:
    """``tests/<pkg>/test_<module>.py`` tests ``lmforge/<pkg>/<module>.py`` (or a package)."""
    tests = PACKAGE.parent / "tests"
    bad = []
    for path in sorted(tests.rglob("test_*.py")):
        rel = path.relative_to(tests)
        target = PACKAGE / rel.parent / rel.name.removeprefix("test_").removesuffix(".py")
        if rel.as_posix() in CROSS_CUTTING_TESTS or rel.parts[0] == "reliability":
            continue  # tests/reliability/: fault injection across the stack (README "Guarantees")
        if not (target.with_suffix(".py").is_file() or (target / "__init__.py").is_file()):
            bad.append(f"tests/{rel.as_posix()}: no {target.relative_to(PACKAGE.parent)}.py")
    assert not bad, "test files that mirror no module:\n" + "\n".join(bad)


def test_readme_and_package_docstrings_agree() -> None:
    """Each module's line in README.md's layout table says what its package docstring says."""
    import re

    readme = (PACKAGE.parent / "README.md").read_text(encoding="utf-8")
    row = re.compile(r"^\| `+([a-z_0-9]+)`+ \| (.*) \|$")
    differ = []
    for init in sorted(PACKAGE.rglob("__init__.py")):
        if init.parent == PACKAGE:
            continue
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8"))) or ""
        for line in doc.splitlines():
            m = row.match(line)
            if not m or m.group(1) == "module":
                continue
            folder = init.parent / m.group(1)
            path = folder.relative_to(PACKAGE.parent).as_posix() + (
                "/" if folder.is_dir() else ".py"
            )
            if f"| `{path}` | {m.group(2)} |" not in readme:
                differ.append(path)
    assert not differ, f"README.md's layout lines differ from the package docstrings: {differ}"
