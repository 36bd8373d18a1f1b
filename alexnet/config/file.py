"""Reading a params file (text, one YAML mapping, no duplicate keys) and wording what is wrong with one.

alexnet/config/params.py validates what this returns.
"""

from __future__ import annotations

import re
import reprlib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError


class ParamsError(ValueError):
    """A params file that cannot be used; the message names the key and what is allowed."""


class _ParamsLoader(yaml.SafeLoader):
    """SafeLoader that also reads 5e-4 as a number (YAML 1.1 needs 5.0e-4; YAML 1.2 and users don't)."""


_ParamsLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))
_NOT_TEXT = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def read_params_file(path: Path) -> dict[str, Any]:
    """The mapping in a params file; a one-line ParamsError naming the file if it is not one."""
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
        loader = _ParamsLoader(text)  # its reader refuses characters YAML does not allow (U+0080, ...)
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {err}") from None
    try:
        node = loader.get_single_node()
        if node is not None:
            _refuse_duplicate_keys(node, path, "", set())
        raw = None if node is None else loader.construct_document(node)
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {err}") from None
    except RecursionError:  # PyYAML composes nested collections recursively
        raise ParamsError(f"{path}: nested too deeply to be params") from None
    finally:
        loader.dispose()
    if raw is None:
        raise ParamsError(f"{path}: empty (no settings); write the sections to change, e.g. 'train:' "
                          "with its keys (see params/paper.yaml)")
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    return raw


def _refuse_duplicate_keys(node: yaml.Node, path: Path, prefix: str, seen: set[int]) -> None:
    # YAML keeps the last of two equal keys and drops the first without a word: a second
    # `train:` block would silently replace the first. Refused, naming the key and both lines.
    if id(node) in seen:  # an alias: already walked
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first: dict[tuple[str, str], int] = {}
        for key, value in node.value:
            name = f"{prefix}{key.value}" if isinstance(key, yaml.ScalarNode) else f"{prefix}?"
            if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                line = key.start_mark.line + 1
                if (key.tag, key.value) in first:
                    raise ParamsError(f"{path}: duplicate key '{name}' at line {line} (first at line "
                                      f"{first[key.tag, key.value]}); YAML would keep only the last")
                first[key.tag, key.value] = line
            _refuse_duplicate_keys(value, path, f"{name}.", seen)
    elif isinstance(node, yaml.SequenceNode):
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
