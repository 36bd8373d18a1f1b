"""The code behind a result: a module and every project module it imports, transitively.

One definition serves both places that ask: a DVC stage's code deps are the closure of its entry
module (scripts/dvc_deps.py writes them into dvc.yaml), and a member's resume fingerprint hashes
the closure of the module that trains it (alexnet/training/member.py). Editing a file outside a
closure (evaluation, reports, servers, docs) therefore neither reruns that stage nor discards a
checkpoint.

Imports are found by parsing the source with `ast`: nothing is imported or run. Imports inside
functions count (the stages import their flows lazily), and so does the `__init__.py` of every
package on the way, which Python runs on import.
"""

from __future__ import annotations

import ast
import hashlib
from pathlib import Path

# The project's own top-level packages; anything else (torch, mlflow, ...) is a dependency, not code.
PACKAGES = ("alexnet", "stages", "flows")
ROOT = Path(__file__).resolve().parents[2]  # the folder holding alexnet/


def module_path(module: str, root: Path = ROOT) -> Path | None:
    """alexnet.config.params -> alexnet/config/params.py (or a package's __init__.py); None outside the project."""
    if module.split(".")[0] not in PACKAGES:
        return None
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(path: Path, root: Path = ROOT) -> set[str]:
    """Dotted names of the project modules `path` imports (anywhere in the file), packages included."""
    package = list(path.relative_to(root).with_suffix("").parts[:-1])
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package[: len(package) - node.level + 1]
                base = ".".join([*parent, *([base] if base else [])])
            found.add(base)
            # `from alexnet.data import shards` imports the module alexnet/data/shards.py
            found.update(f"{base}.{alias.name}" for alias in node.names)
    names = set()
    for name in found:
        parts = name.split(".")
        # importing a.b.c runs a/__init__.py and a/b/__init__.py first
        names.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return {n for n in names if module_path(n, root) is not None}


def import_closure(entry: str, root: Path = ROOT) -> list[str]:
    """Files (relative to root, sorted) of `entry` and every project module it imports, transitively."""
    seen: set[Path] = set()
    todo = [entry, *(".".join(entry.split(".")[:i]) for i in range(1, entry.count(".") + 1))]
    while todo:
        path = module_path(todo.pop(), root)
        if path is None or path in seen:
            continue
        seen.add(path)
        todo.extend(imported_modules(path, root))
    return sorted(p.relative_to(root).as_posix() for p in seen)


def closure_fingerprint(entry: str, root: Path = ROOT) -> str:
    """sha256 (16 hex digits) over the names and bytes of `entry`'s import closure."""
    h = hashlib.sha256()
    for rel in import_closure(entry, root):
        h.update(rel.encode())
        h.update((root / rel).read_bytes())
    return h.hexdigest()[:16]
