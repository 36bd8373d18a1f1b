"""What each dvc.yaml stage really depends on, derived from the code; tests/test_dvc_yaml.py checks dvc.yaml against it.

    python scripts/dvc_deps.py            # every stage's derived code deps and params reads
    python scripts/dvc_deps.py train      # one stage
    python scripts/dvc_deps.py --write    # rewrite the code deps and params of dvc.yaml and the studies'

Code deps: the import closure of the stage's entry module (`python -m stages.<name>` in its cmd),
as alexnet/core/closure.py defines it, the same definition a member's resume fingerprint uses.

Params: a stage's params are declared once, in dvc.yaml; this derives them from the code. The
reads are derived from types, not from attribute names: a value is a params value when it is
annotated with a class of alexnet/config/params.py (`Params`, `TrainParams`, ...), comes from
`load_params(...)`, or is a field of another params value (`tr = params.train`). A read is the
dotted path of the field used (`params.ensemble.members` -> "ensemble.members"); a section handed
on whole (`build_model(params.model, ...)`, `cfg.model_dump()`) reads the whole section. Every
function of every module in the stage's import closure counts, the granularity at which DVC sees
code: if a module is a dependency, so are the params it reads. alexnet/config/ itself is left
out (its validation reads every section; that is not a use). The whole `Params` passed to a
function is not a read by itself: the function receiving it is scanned. A params value kept on
`self` (a class-level annotation, or `self.x = arg` with an annotated argument) is followed into
the class's methods. What the types cannot see, an argument named `params`, `cfg` or `*_params`
without an annotation, is listed by unannotated_params_args and fails the test.
"""

from __future__ import annotations

import ast
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: the project's own alexnet, whatever is installed

from alexnet.core.closure import PACKAGES, import_closure, module_path  # noqa: E402

CONFIG = "alexnet/config/sections.py"  # the params classes
CONFIG_PACKAGE = "alexnet/config/"  # loading and validation read every section: not a use
ROOT_TYPE = "Params"

# Params that decide how the work is scheduled, never what an output holds: reading them does not
# make a stage depend on them (a change must not rerun hours of training).
# Where the members run is one of them: a member's weights do not depend on its devices' group or runner;
# so is where their runs are logged (tracking.uri), and which engine builds the shards (byte-identical
# either way: tests/test_dask.py).
RUNTIME_KNOBS = frozenset({"ensemble.concurrency", "ensemble.retries", "preprocess.workers", "ensemble.devices",
                           "ensemble.runner", "ensemble.ray_address", "tracking.uri", "preprocess.engine",
                           "preprocess.dask_address"})


def params_schema(root: Path = ROOT) -> tuple[dict[str, dict[str, str | None]], dict[str, str]]:
    """From config.py: each params class's fields (field -> its params class, or None for a value),
    and each class's dotted path below Params ("" for Params itself)."""
    tree = ast.parse((root / CONFIG).read_text())
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
    fields: dict[str, dict[str, str | None]] = {}
    paths: dict[str, str] = {ROOT_TYPE: ""}
    todo = [ROOT_TYPE]
    while todo:
        name = todo.pop()
        fields[name] = {}
        for stmt in classes[name].body:
            if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                ann = ast.unparse(stmt.annotation)
                child = ann if ann in classes else None
                fields[name][stmt.target.id] = child
                if child:
                    paths[child] = f"{paths[name]}.{stmt.target.id}".lstrip(".")
                    todo.append(child)
    return fields, paths


@dataclass
class _Scope:
    fields: dict[str, dict[str, str | None]]
    paths: dict[str, str]
    names: dict[str, str] = field(default_factory=dict)  # local name -> params class
    self_fields: dict[str, str] = field(default_factory=dict)  # in a method: self.<name> -> params class

    def type_of(self, node: ast.AST) -> str | None:
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
            return self.self_fields.get(node.attr)
        if isinstance(node, ast.Name):
            return self.names.get(node.id)
        if isinstance(node, ast.Call):
            func = node.func
            called = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
            return ROOT_TYPE if called == "load_params" else None
        if isinstance(node, ast.Attribute):
            owner = self.type_of(node.value)
            if owner is not None:
                return self.fields[owner].get(node.attr)
        return None


def _annotation_type(ann: ast.AST | None, known: dict) -> str | None:
    if ann is None:
        return None
    text = ann.value if isinstance(ann, ast.Constant) and isinstance(ann.value, str) else ast.unparse(ann)
    text = text.rsplit(".", 1)[-1].replace(" | None", "")
    return text if text in known else None


def _scope_reads(scope_node: ast.AST, scope: _Scope, parents: dict[ast.AST, ast.AST]) -> set[str]:
    # Aliases (`tr = params.train`) until nothing new: order-free, a name keeps one type per function.
    while True:
        before = dict(scope.names)
        for node in ast.walk(scope_node):
            if isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None:
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                t = scope.type_of(node.value)
                for target in targets:
                    if t and isinstance(target, ast.Name):
                        scope.names[target.id] = t
        if scope.names == before:
            break
    reads: set[str] = set()
    for node in ast.walk(scope_node):
        if isinstance(node, ast.Attribute) and scope.type_of(node) is None:
            owner = scope.type_of(node.value)
            if owner is not None and node.attr in scope.fields[owner]:
                reads.add(f"{scope.paths[owner]}.{node.attr}".lstrip("."))  # a plain value
            elif owner is not None and node.attr != "model_copy":  # a copy reads nothing: its uses do
                reads.add(scope.paths[owner] or "*")  # a method of the object: model_dump(), ...
            continue
        if not isinstance(node, ast.Name | ast.Attribute) or isinstance(node.ctx, ast.Store):
            continue
        t = scope.type_of(node)
        if t is None or t == ROOT_TYPE:
            continue  # the whole Params handed on: whoever receives it is scanned
        parent = parents.get(node)
        if isinstance(parent, ast.Attribute) and parent.value is node:
            continue  # params.train in params.train.seed: the parent is the read
        if isinstance(parent, ast.Assign | ast.AnnAssign) and parent.value is node:
            continue  # an alias (tr = params.train): its uses are the reads
        reads.add(scope.paths[t])  # handed on whole
    return reads


def _typed_args(scope_node: ast.AST, fields: dict) -> dict[str, str]:
    """Arguments of the functions and lambdas in scope_node annotated with a params class."""
    typed = {}
    for fn in ast.walk(scope_node):
        if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            for arg in [*fn.args.posonlyargs, *fn.args.args, *fn.args.kwonlyargs]:
                if t := _annotation_type(getattr(arg, "annotation", None), fields):
                    typed[arg.arg] = t
    return typed


PARAMS_LIKE = re.compile(r"^(params|cfg|.+_params)$")


def unannotated_params_args(files: list[str], root: Path = ROOT) -> list[str]:
    """Arguments named like a params value but not annotated: their reads would be invisible."""
    found = []
    for rel in files:
        if rel.startswith(CONFIG_PACKAGE):
            continue
        for fn in ast.walk(ast.parse((root / rel).read_text(), rel)):
            if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                found += [f"{rel}:{fn.lineno} {fn.name}({arg.arg})"
                          for arg in [*fn.args.posonlyargs, *fn.args.args, *fn.args.kwonlyargs]
                          if arg.annotation is None and PARAMS_LIKE.match(arg.arg)]
    return found


def params_reads(files: list[str], root: Path = ROOT) -> set[str]:
    """Dotted params paths read by the code in `files` (alexnet/config/params.py excluded)."""
    fields, paths = params_schema(root)
    reads: set[str] = set()
    for rel in files:
        if rel.startswith(CONFIG_PACKAGE):
            continue
        tree = ast.parse((root / rel).read_text(), rel)
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        # One scope per top-level function or method (nested functions and lambdas see its names),
        # and one for the module's own statements. In a class, self.<x> is typed by a class-level
        # annotation or by `self.x = arg` with a typed argument.
        scopes: list[tuple[ast.AST, dict[str, str]]] = []
        for node in tree.body:
            if isinstance(node, ast.ClassDef):
                methods = [n for n in node.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
                self_fields = {s.target.id: t for s in node.body if isinstance(s, ast.AnnAssign)
                               and isinstance(s.target, ast.Name) and (t := _annotation_type(s.annotation, fields))}
                for method in methods:
                    typed = _typed_args(method, fields)
                    for a in ast.walk(method):
                        if (isinstance(a, ast.Assign) and isinstance(a.value, ast.Name) and a.value.id in typed
                                and any(isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name)
                                        and t.value.id == "self" for t in a.targets)):
                            self_fields.update({t.attr: typed[a.value.id] for t in a.targets
                                                if isinstance(t, ast.Attribute)})
                scopes += [(m, self_fields) for m in methods]
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                scopes.append((node, {}))
        module_level = ast.Module(body=[n for n in tree.body if not isinstance(
            n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)], type_ignores=[])
        for scope_node, self_fields in [*scopes, (module_level, {})]:
            scope = _Scope(fields, paths, _typed_args(scope_node, fields), self_fields)
            reads |= _scope_reads(scope_node, scope, parents)
    return reads


def without_knobs(reads: set[str], root: Path = ROOT) -> set[str]:
    """`reads` less the runtime knobs. A section read whole (`experiment_name(params.tracking, ...)`)
    that holds a knob becomes its other fields: where runs are logged must not rerun training."""
    fields, paths = params_schema(root)
    classes = {path: name for name, path in paths.items()}
    out = set()
    for read in reads:
        if read in classes and any(knob.startswith(f"{read}.") for knob in RUNTIME_KNOBS):
            out |= {f"{read}.{name}" for name in fields[classes[read]]}
        else:
            out.add(read)
    return out - RUNTIME_KNOBS


@dataclass
class Stage:
    name: str
    entry: str  # stages.train
    code_deps: list[str]  # derived
    params_reads: set[str]  # derived, runtime knobs removed
    yaml_deps: list[str]
    yaml_params: list[str]


def entry_module(cmd: str) -> str:
    words = shlex.split(" ".join(cmd) if isinstance(cmd, list) else cmd)
    if "-m" not in words:
        raise ValueError(f"dvc.yaml: cmd {cmd!r} does not run `python -m <module>`")
    return words[words.index("-m") + 1]


def stages(root: Path = ROOT) -> list[Stage]:
    dvc = yaml.safe_load((root / "dvc.yaml").read_text())
    out = []
    for name, spec in dvc["stages"].items():
        entry = entry_module(spec["cmd"])
        files = import_closure(entry, root)
        entry_file = module_path(entry, root)
        if entry_file is None:
            raise ValueError(f"dvc.yaml: stage {name} runs {entry}, which is not a module of {', '.join(PACKAGES)}")
        params = spec.get("params") or []
        out.append(Stage(
            name=name, entry=entry, code_deps=files,
            params_reads=without_knobs(params_reads(files, root), root),
            yaml_deps=[str(d) for d in spec.get("deps") or []],
            yaml_params=[str(p) for p in params if not isinstance(p, dict)],
        ))
    return out


def is_code(dep: str) -> bool:
    return dep.endswith(".py") and dep.split("/")[0] in PACKAGES


def covers(declared: str, read: str) -> bool:
    """Does a dvc.yaml params entry (a section or a dotted key) cover this read?"""
    return read == declared or read.startswith(declared + ".")


def minimal(reads: set[str]) -> list[str]:
    """The reads without those a shorter one covers (`train` makes `train.seed` redundant)."""
    return sorted(r for r in reads if not any(covers(o, r) and o != r for o in reads))


_CODE_DEP = re.compile(r"^      - (alexnet|stages|flows)/\S+\.py\s*$")
_STAGE = re.compile(r"^  ([\w-]+):\s*$")


def write(root: Path = ROOT) -> None:
    """Rewrite dvc.yaml's code deps and params (keeping its comments), and the studies' code deps."""
    derived = {s.name: s for s in stages(root)}
    lines = (root / "dvc.yaml").read_text().splitlines(keepends=True)
    out, stage, i = [], None, 0
    while i < len(lines):
        line = lines[i]
        if (m := _STAGE.match(line)) and m.group(1) in derived:
            stage = derived[m.group(1)]
        if stage and _CODE_DEP.match(line):  # the run of code deps, replaced as a whole
            while i < len(lines) and _CODE_DEP.match(lines[i]):
                i += 1
            out.extend(f"      - {f}\n" for f in stage.code_deps)
            continue
        if stage and line.rstrip() == "    params:":
            out.append(line)
            i += 1
            while i < len(lines) and re.match(r"^      - \S+\s*$", lines[i]):
                i += 1
            out.extend(f"      - {r}\n" for r in minimal(stage.params_reads))
            continue
        out.append(line)
        i += 1
    (root / "dvc.yaml").write_text("".join(out))
    for other in (root / "study" / "dvc.yaml", root / "study" / "imagenette" / "dvc.yaml"):
        _write_code_deps(other, root)


def _write_code_deps(dvc_yaml: Path, root: Path) -> None:
    """Another pipeline file (the studies' dvc.yaml): each `python -m stages.X` stage's code deps, rewritten."""
    if not dvc_yaml.is_file():
        return
    entries = {name: entry_module(stage["cmd"])
               for name, stage in (yaml.safe_load(dvc_yaml.read_text()) or {}).get("stages", {}).items()}
    lines, out, closure, i = dvc_yaml.read_text().splitlines(keepends=True), [], None, 0
    while i < len(lines):
        if (m := _STAGE.match(lines[i])) and m.group(1) in entries:
            closure = import_closure(entries[m.group(1)], root)
        if closure is not None and _CODE_DEP.match(lines[i]):
            while i < len(lines) and _CODE_DEP.match(lines[i]):
                i += 1
            out.extend(f"      - {f}\n" for f in closure)
            continue
        out.append(lines[i])
        i += 1
    dvc_yaml.write_text("".join(out))


def main(argv: list[str]) -> int:
    if argv == ["--write"]:
        write()
        return 0
    for stage in stages():
        if argv and stage.name not in argv:
            continue
        print(f"{stage.name}:  # python -m {stage.entry}")
        print("  deps (code):")
        print("\n".join(f"    - {f}" for f in stage.code_deps))
        print(f"  params read (without {', '.join(sorted(RUNTIME_KNOBS))}):")
        print("\n".join(f"    # {r}" for r in minimal(stage.params_reads)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
