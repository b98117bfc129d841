"""The package's layout shows its architecture: every stage module has its entry point, the
library never imports a stage, and no modules import each other in a loop."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "icd_pipeline"
# The tool and the torchrun launcher start stages by name; they are runners, not library.
RUNNERS = {"icd_pipeline.cli", "icd_pipeline.__main__", "icd_pipeline.misc.launch"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """The icd_pipeline modules a file imports (absolute or relative, at any depth)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("icd_pipeline"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("icd_pipeline"):
                continue
            for alias in node.names:  # `from pkg import module` imports the module
                sub = f"{target}.{alias.name}"
                found.add(sub if (PACKAGE.parent / Path(*sub.split("."))).with_suffix(".py").exists()
                          or (PACKAGE.parent / Path(*sub.split("."))).is_dir() else target)
    return found


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}
GRAPH = {name: {m for m in imports_of(path) if m in MODULES and m != name} for name, path in MODULES.items()}


def test_every_stage_module_has_an_entry_point():
    stages = [p for p in (PACKAGE / "stages").glob("*.py") if p.name != "__init__.py"]
    assert len(stages) >= 15
    missing = [p.name for p in stages if "def main(" not in p.read_text()]
    assert not missing, f"stage modules without main(): {missing}"


def test_no_library_module_imports_a_stage():
    offenders = {name: sorted(m for m in deps if m.startswith("icd_pipeline.stages."))
                 for name, deps in GRAPH.items()
                 if not name.startswith("icd_pipeline.stages") and name not in RUNNERS}
    assert not {k: v for k, v in offenders.items() if v}


def test_no_import_cycles():
    # iterative DFS colouring over the package's import graph
    state: dict[str, int] = {}
    cycles = []

    def visit(start):
        stack = [(start, iter(sorted(GRAPH[start])))]
        state[start] = 1
        path = [start]
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                state[node] = 2
                stack.pop()
                path.pop()
            elif state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                stack.append((nxt, iter(sorted(GRAPH[nxt]))))

    for name in sorted(GRAPH):
        if name not in state:
            visit(name)
    # a package's __init__ importing its own submodules is not a loop of modules
    cycles = [c for c in cycles if not any(a.endswith(b.rsplit(".", 1)[0]) or b.startswith(a + ".")
                                           for a, b in zip(c, c[1:]))]
    assert not cycles, cycles


def test_the_graph_is_read():
    # the check above can fail: the stages do import the library, by relative imports
    assert "icd_pipeline.losses" in GRAPH["icd_pipeline.stages.train_icd"]
    assert "icd_pipeline.feature_cache" in GRAPH["icd_pipeline.stages.train_deeplab"]
    assert "icd_pipeline.data.voc" in GRAPH["icd_pipeline.data.coco"]
