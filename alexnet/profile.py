"""`python -m alexnet.profile PROFILE`: run the pipeline with a profile as a DVC experiment, through
`dvc exp run -S`, instead of copying the profile over the tracked params.yaml.

    python -m alexnet.profile params/paper-1gpu.yaml                        # print the command
    python -m alexnet.profile params/paper-1gpu.yaml --run                  # run it
    python -m alexnet.profile params/paper-1gpu.yaml --run -- -n in1k-1gpu  # after --: more dvc exp run args

A profile is a complete params file (params/paper.yaml, params/paper-1gpu.yaml, ...): a key it leaves
out takes the paper's value, the field default, never params.yaml's demo value. So the command
passes, as Hydra overrides `-S ++key=value` (add or override), every key whose value in params.yaml
(or, where params.yaml leaves it out, its default) differs from the profile's: params.yaml with
them applied loads to exactly the profile's params. DVC writes the values into params.yaml of the
run (the workspace, or the copy of `--temp` and `--queue`) and keeps them with the experiment
(`dvc exp show`, `dvc params diff`); `git restore params.yaml` brings the demo back.

Why a command and not one of DVC's own ways: `-S params/x.yaml:key=value` edits that file, while
every stage reads params.yaml; Hydra composition (`dvc config hydra.enabled true`) rewrites the
whole params.yaml from conf/ on every `dvc exp run`, for every user of the project. The profile is
validated here first, so a bad one fails in one line before DVC starts anything.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from alexnet.config.file import read_params_file
from alexnet.config.params import flatten, flatten_mapping, load_params, parse_params
from alexnet.config.sections import Params
from alexnet.core.cli import exit_code


def hydra_value(value: Any) -> str:
    """`value` in Hydra's override grammar, read back as the same YAML value: strings always quoted
    (so "null", "1e-3" or "a,b" stay strings and a comma is never a sweep), lists as [a,b]."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        # Hydra's quoted strings: a backslash is literal unless a quote or the end follows it; ${ interpolates.
        if "\\${" in value:
            raise ValueError(f"{value!r}: a backslash before ${{ has no override form; write it in params.yaml")
        text = re.sub(r'(\\*)(?="|$)', lambda m: m.group(1) * 2, value)
        return '"' + text.replace('"', '\\"').replace("${", "\\${") + '"'
    if isinstance(value, list | tuple):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    raise TypeError(f"no override form for {type(value).__name__} {value!r}")


def _same(a: Any, b: Any) -> bool:
    # 1 and 1.0 (or True and 1) are different YAML values: the override is written when the type differs.
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def overrides(current: Mapping[str, Any], profile: Params) -> list[str]:
    """The `++key=value` overrides that turn the params mapping `current` into `profile`'s params."""
    have, default = flatten_mapping(current), flatten(parse_params({}))
    return [f"++{key}={hydra_value(want)}" for key, want in flatten(profile).items()
            if not _same(have.get(key, default[key]), want)]


def dvc_command(profile: Path, params: Path, extra: Sequence[str] = ()) -> list[str]:
    """`dvc exp run -S ... [extra]` for `profile` over `params`, the file that `-S key=value` edits and the
    stages read (params.yaml)."""
    if profile.resolve() == params.resolve():
        raise ValueError(f"{profile}: is the params file itself; give a profile such as params/paper-1gpu.yaml")
    wanted = load_params(profile)  # a bad profile fails here, naming the file and the key
    args = ["dvc", "exp", "run"]
    for override in overrides(read_params_file(params), wanted):
        args += ["-S", override]
    return [*args, *extra]


def _dvc() -> str:
    """The venv's dvc beside this interpreter when there is one (the README runs everything in .venv)."""
    beside = Path(sys.executable).parent / "dvc"
    return str(beside) if beside.is_file() else "dvc"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ours, extra = (argv[: argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("profile", type=Path, help="a complete params file, e.g. params/paper-1gpu.yaml")
    ap.add_argument("--run", action="store_true", help="run the command (default: print it)")
    ap.add_argument("--json", action="store_true", help="print the command as a JSON list of arguments")
    args = ap.parse_args(ours)

    def work() -> int:
        command = dvc_command(args.profile, Path("params.yaml"), extra)  # what dvc.yaml's stages read
        if args.json:
            print(json.dumps(command))
        elif not args.run:
            print(_shown(command))
        if not args.run:
            return 0
        print(f"profile: {shlex.join(command)}", file=sys.stderr, flush=True)
        return subprocess.call([_dvc(), *command[1:]])

    return exit_code("profile", work)


def _shown(command: list[str]) -> str:
    """The command for a shell, one `-S override` a line."""
    lines, rest = [shlex.join(command[:3])], command[3:]
    while rest[:1] == ["-S"]:
        lines.append(shlex.join(rest[:2]))
        rest = rest[2:]
    if rest:
        lines.append(shlex.join(rest))
    return " \\\n  ".join(lines)


if __name__ == "__main__":
    sys.exit(main())
