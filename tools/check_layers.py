"""Checks the package's import graph: no import circle (a lazy import inside a function counts; one
under `if TYPE_CHECKING:` does not) and no import against the layers of docs/architecture.md
(`api -> service -> store, storage, jobs (enqueue, lifecycle), torch-free engine` and
`processes -> jobs/handlers -> engine`). Prints each problem and exits 1 when there is one.

usage: python tools/check_layers.py [PACKAGE_DIR]
"""

import ast
import sys
from pathlib import Path

# (importer prefix, imported prefixes it must not reach): the layers, top to bottom
FORBIDDEN = [
    ("bedrock_local.engine", ("bedrock_local.api", "bedrock_local.service", "bedrock_local.jobs",
                              "bedrock_local.processes", "bedrock_local.store", "bedrock_local.console",
                              "bedrock_local.console_cli", "bedrock_local.cli", "bedrock_local.testing")),
    ("bedrock_local.store", ("bedrock_local.api", "bedrock_local.service", "bedrock_local.jobs",
                             "bedrock_local.processes", "bedrock_local.engine")),
    ("bedrock_local.storage", ("bedrock_local.api", "bedrock_local.service", "bedrock_local.jobs",
                               "bedrock_local.processes", "bedrock_local.engine", "bedrock_local.store")),
    ("bedrock_local.jobs", ("bedrock_local.api", "bedrock_local.service", "bedrock_local.processes",
                            "bedrock_local.console", "bedrock_local.cli")),
    ("bedrock_local.jobs.handlers", ("bedrock_local.jobs.executors",)),
    ("bedrock_local.service", ("bedrock_local.api", "bedrock_local.processes", "bedrock_local.jobs.handlers",
                               "bedrock_local.jobs.executors", "bedrock_local.console")),
    ("bedrock_local.api", ("bedrock_local.processes", "bedrock_local.jobs.handlers",
                           "bedrock_local.jobs.executors")),
    ("bedrock_local.processes", ("bedrock_local.api", "bedrock_local.service", "bedrock_local.console")),
]
# the engine modules the API process may import: no torch at import time
TORCH_FREE_ENGINE = ("bedrock_local.engine.catalog", "bedrock_local.engine.aliases", "bedrock_local.engine.formats",
                     "bedrock_local.engine.errors", "bedrock_local.engine.stub_models",
                     "bedrock_local.engine.hyperparameters", "bedrock_local.engine.training_data",
                     "bedrock_local.engine.evaluation")


def module_name(package: Path, path: Path) -> str:
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(path: Path, module: str) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    skipped = {id(node) for guard in ast.walk(tree)
               if isinstance(guard, ast.If) and "TYPE_CHECKING" in ast.unparse(guard.test)
               for statement in guard.body for node in ast.walk(statement)}
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def import_graph(package: Path) -> dict[str, set[str]]:
    files = {module_name(package, path): path for path in sorted(package.rglob("*.py"))}
    graph = {}
    for module, path in files.items():
        targets = set()
        for name in imported_names(path, module):
            while name and name not in files:
                name = name.rpartition(".")[0]
            # a module importing the package it sits in depends on nothing new (Python ran it first)
            if name and name != module and not module.startswith(name + "."):
                targets.add(name)
        graph[module] = targets
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (iterative Tarjan)."""
    index, low, on_stack, stack, found, counter = {}, {}, set(), [], [], 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    problems = []
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            for importer, banned in FORBIDDEN:
                if (module == importer or module.startswith(importer + ".")) and any(
                        target == b or target.startswith(b + ".") for b in banned):
                    problems.append(f"{module} imports {target} ({importer} may not import {', '.join(banned)})")
            if (module.startswith(("bedrock_local.service", "bedrock_local.api"))
                    and target.startswith("bedrock_local.engine.") and not target.startswith(TORCH_FREE_ENGINE)):
                problems.append(f"{module} imports {target}: the API process may use only the torch-free engine "
                                f"modules ({', '.join(TORCH_FREE_ENGINE)})")
    return problems


def main(argv: list[str]) -> int:
    package = Path(argv[1] if len(argv) > 1 else Path(__file__).resolve().parent.parent / "bedrock_local").resolve()
    graph = import_graph(package)
    problems = [f"import circle: {' <-> '.join(c)}" for c in circles(graph)] + layer_violations(graph)
    for problem in problems:
        print(problem)
    print(f"{len(graph)} modules, {sum(len(t) for t in graph.values())} imports inside the package, "
          f"{len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
