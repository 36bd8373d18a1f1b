"""Reading a params file (text, one YAML mapping, no duplicate keys) as DVC reads it, and wording what is
wrong with one.

alexnet/config/params.py validates what this returns.
"""

from __future__ import annotations

import datetime
import re
import reprlib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError


class ParamsError(ValueError):
    """A params file that cannot be used; the message names the key and what is allowed."""


_NOT_TEXT = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def parse_yaml(text: str) -> Any:
    """`text` as DVC reads a params file: ruamel.yaml's safe loader, YAML 1.2 (dvc/utils/serialize/_yaml.py).

    So `dvc params diff` and the stages see the same values: `yes`, `no`, `on`, `off` are strings
    (YAML 1.1 readers such as PyYAML make them booleans), 1e-3 is a number, 012 is twelve.
    """
    from ruamel.yaml import YAML

    return YAML(typ="safe").load(text)


def read_params_file(path: Path) -> dict[str, Any]:
    """The mapping in a params file; a one-line ParamsError naming the file if it is not one."""
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError

    if not path.exists():
        raise ParamsError(f"{path}: params file not found")
    if not path.is_file():
        raise ParamsError(f"{path}: not a file (a params file is YAML text)")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ParamsError(f"{path}: cannot be read ({err.strerror})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ParamsError(f"{path}: not a text file (byte {err.start} is not UTF-8)") from None
    if bad := _NOT_TEXT.search(text):
        raise ParamsError(f"{path}: not a text file (control character {bad.group()!r} at "
                          f"line {text.count(chr(10), 0, bad.start()) + 1})")
    try:
        node = YAML(typ="safe", pure=True).compose(text)
        if node is not None:
            _refuse_duplicate_keys(node, path, "", set())
        raw = parse_yaml(text)
    except YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {_first_lines(err)}") from None
    except RecursionError:  # the composer nests collections recursively
        raise ParamsError(f"{path}: nested too deeply to be params") from None
    if raw is None:
        raise ParamsError(f"{path}: empty (no settings); write the sections to change, e.g. 'train:' "
                          "with its keys (see params/paper.yaml)")
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    _refuse_dates(raw, path, "")
    return raw


def _refuse_dates(value: Any, path: Path, key: str) -> None:
    # YAML reads 2026-12-05 as a date, which DVC refuses to load as a param ("Unsupported value of
    # type 'date'"): refused here too, naming the key, so the stages and DVC never disagree.
    if isinstance(value, dict):
        for k, v in value.items():
            _refuse_dates(v, path, f"{key}.{k}" if key else str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _refuse_dates(v, path, f"{key}.{i}")
    elif isinstance(value, datetime.date):
        raise ParamsError(f"{path}: {key}: {value.isoformat()} reads as a date, which DVC cannot load as a "
                          f"param; quote it ('{value.isoformat()}') if text is meant")


def _first_lines(err: Exception) -> str:
    # ruamel's messages end with a paragraph of documentation links: the problem and where is enough.
    return " ".join(line.strip() for line in str(err).split("\n\n")[0].splitlines() if line.strip())


def _refuse_duplicate_keys(node: Any, path: Path, prefix: str, seen: set[int]) -> None:
    # YAML forbids two equal keys; some readers keep the last and drop the first without a word, so
    # a second `train:` block could silently replace the first. Refused, naming the key and both lines.
    from ruamel.yaml.nodes import MappingNode, ScalarNode, SequenceNode

    if id(node) in seen:  # an alias: already walked
        return
    seen.add(id(node))
    if isinstance(node, MappingNode):
        first: dict[tuple[str, str], int] = {}
        for key, value in node.value:
            name = f"{prefix}{key.value}" if isinstance(key, ScalarNode) else f"{prefix}?"
            if isinstance(key, ScalarNode) and str(key.tag) != "tag:yaml.org,2002:merge":
                line = key.start_mark.line + 1
                if (str(key.tag), key.value) in first:
                    raise ParamsError(f"{path}: duplicate key '{name}' at line {line} (first at line "
                                      f"{first[str(key.tag), key.value]}); YAML would keep only the last")
                first[str(key.tag), key.value] = line
            _refuse_duplicate_keys(value, path, f"{name}.", seen)
    elif isinstance(node, SequenceNode):
        for i, item in enumerate(node.value):
            _refuse_duplicate_keys(item, path, f"{prefix}{i}.", seen)


def validation_message(err: ValidationError, source: str, root: type[BaseModel]) -> str:
    """Every bad key of a failed validation, one line each; an unknown key lists the allowed ones."""
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            section = ".".join(str(p) for p in e["loc"][:-1])
            owner = _section_at(root, e["loc"][:-1])
            allowed = ", ".join(owner.model_fields) if owner else "?"
            msg = f"unknown key; allowed keys{' in ' + section if section else ''}: {allowed}"
        got = e.get("input")
        got_text = "" if isinstance(got, dict) or e["type"] == "extra_forbidden" else f", got {_short_repr(got)}"
        lines.append(f"  {key or '<root>'}: {msg}{got_text}")
    return f"{source}: invalid params\n" + "\n".join(lines)


# A value shown in an error: YAML aliases can make a small file expand to millions of items.
_reprs = reprlib.Repr()  # Python 3.11: limits are attributes, not arguments
_reprs.maxlevel, _reprs.maxlist, _reprs.maxtuple, _reprs.maxdict, _reprs.maxstring = 2, 4, 4, 4, 60
_short_repr = _reprs.repr


def _section_at(root: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    model = root
    for part in loc:
        field = model.model_fields.get(str(part))
        ann = field.annotation if field else None
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        model = ann
    return model
