"""Property tests of the params loader: any mutation of a valid params file is either accepted
and round-trips (load -> dump -> load gives equal params) or refused with a ParamsError that
names the key; never another exception.
"""

from __future__ import annotations

import copy
import re
import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alexnet.config.file import read_params_file
from alexnet.config.params import ParamsError, load_params
from alexnet.config.sections import Params

PROJECT = Path(__file__).resolve().parents[2]
BASE: dict[str, Any] = read_params_file(PROJECT / "params.yaml")
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def leaves(node: dict, prefix: tuple = ()) -> list[tuple]:
    out = []
    for key, value in node.items():
        path = (*prefix, key)
        out += leaves(value, path) if isinstance(value, dict) and value else [path]
    return out


def sections(node: dict, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    for key, value in node.items():
        if isinstance(value, dict):
            out += sections(value, (*prefix, key))
    return out


def dotted(path: tuple) -> str:
    return ".".join(str(p) for p in path)


def at(raw: dict, path: tuple) -> dict:
    for part in path:
        raw = raw[part]
    return raw


scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**6), 10**6), st.integers(), st.floats(),
    st.text(max_size=6), st.sampled_from(["cpu", "cuda:0", "mps", "1e-3", "10", "0.5", "yes", "null", ".nan"]),
)
values = st.one_of(scalars, st.lists(scalars, max_size=3), st.dictionaries(st.text(max_size=4), scalars, max_size=2))
names = st.one_of(st.from_regex(r"[a-z_]{1,10}", fullmatch=True), st.integers(0, 9), st.text(max_size=5))


@st.composite
def mutation(draw, raw: dict) -> tuple[str, tuple]:
    """Apply one random mutation to raw in place; return its kind and the key path it touched."""
    kind = draw(st.sampled_from(["drop", "unknown", "retype", "range", "nest", "move", "nonfinite", "bool",
                                 "string"]))
    leaf_paths = leaves(raw)
    if not leaf_paths:
        return kind, ()
    path = draw(st.sampled_from(leaf_paths))
    parent, key = at(raw, path[:-1]), path[-1]
    if kind == "drop":
        del parent[key]
    elif kind == "unknown":
        where = draw(st.sampled_from(sections(raw)))
        name = draw(names)
        at(raw, where)[name] = draw(values)
        return kind, (*where, name)
    elif kind == "retype":
        parent[key] = draw(values)
    elif kind == "range":
        parent[key] = draw(st.sampled_from([-1, 0, -(10**9), 10**9, 2**70, -0.5, 1.5, 1e300]))
    elif kind == "nest":  # a leaf becomes a section, or a section a scalar
        if draw(st.booleans()) or len(path) < 2:
            parent[key] = {draw(names): draw(scalars)}
        else:
            at(raw, path[:-2])[path[-2]] = draw(scalars)
            return kind, path[:-1]
    elif kind == "move":  # a key written in the wrong section
        where = draw(st.sampled_from(sections(raw)))
        value = parent.pop(key)
        at(raw, where)[key] = value
        return kind, (*where, key)
    elif kind == "nonfinite":
        parent[key] = draw(st.sampled_from([float("nan"), float("inf"), float("-inf")]))
    elif kind == "bool":
        parent[key] = draw(st.booleans())
    elif kind == "string":
        value = parent[key]
        parent[key] = str(value) if not isinstance(value, str) else draw(st.text(max_size=5))
    return kind, path


def named(message: str, path: tuple) -> bool:
    """The message names the key, one of its sections, or a key under it (not via the file's name)."""
    body = message.split(": ", 1)[1] if ": " in message else message
    for n in range(len(path), 0, -1):
        if re.search(rf"(?<![\w.]){re.escape(dotted(path[:n]))}(?=[:=' .]|$)", body, re.M):
            return True
    return False


def round_trips(params: Params, folder: Path) -> None:
    again = folder / "again.yaml"
    again.write_text(yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False))
    assert load_params(again) == params


def load_text(text: str) -> tuple[Params | None, str | None]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "params.yaml"
        path.write_text(text)
        try:
            params = load_params(path)
        except ParamsError as err:
            return None, str(err)
        round_trips(params, Path(tmp))
        return params, None


def must_refuse(kind: str, path: tuple) -> bool:
    """The loader's stated policy: non-finite floats, and booleans or strings where a number was."""
    if kind == "nonfinite":
        return True
    original = at(BASE, path[:-1]).get(path[-1]) if path else None
    number = isinstance(original, int | float) and not isinstance(original, bool)
    return number and kind in ("bool", "string")


@SETTINGS
@given(st.data())
def test_mutated_params_are_accepted_and_round_trip_or_refused_by_key(data):
    raw = copy.deepcopy(BASE)
    touched = [data.draw(mutation(raw)) for _ in range(data.draw(st.integers(1, 3)))]
    _, error = load_text(yaml.safe_dump(raw, sort_keys=False))
    if error is not None:
        assert "\n" not in error.split(": invalid params\n")[0]  # the first line names the file
        assert any(named(error, path) for _, path in touched if path), (touched, error)
    elif len(touched) == 1:
        assert not must_refuse(*touched[0]), touched


@SETTINGS
@given(st.data())
def test_a_duplicated_line_is_refused_naming_its_key(data):
    raw = copy.deepcopy(BASE)
    data.draw(mutation(raw))
    lines = yaml.safe_dump(raw, sort_keys=False).splitlines()
    keyed = [i for i, line in enumerate(lines) if re.match(r"^ *[a-z_]+:", line)]
    if not keyed:
        return
    i = data.draw(st.sampled_from(keyed))
    indent = len(lines[i]) - len(lines[i].lstrip())
    path = [lines[i].strip().split(":")[0]]
    for line in reversed(lines[:i]):  # the sections above it, by indentation
        depth = len(line) - len(line.lstrip())
        if depth < indent and line.rstrip().endswith(":"):
            path.insert(0, line.strip()[:-1])
            indent = depth
    end = i + 1  # the line's block: following lines indented deeper
    while end < len(lines) and len(lines[end]) - len(lines[end].lstrip()) > len(lines[i]) - len(lines[i].lstrip()):
        end += 1
    duplicated = lines[:end] + lines[i:end] + lines[end:]
    _, error = load_text("\n".join(duplicated) + "\n")
    assert error is not None and f"duplicate key '{'.'.join(path)}'" in error, (path, error)


@SETTINGS
@given(st.binary(min_size=1, max_size=64))
def test_arbitrary_bytes_never_raise_anything_but_params_error(blob):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "params.yaml"
        path.write_bytes(blob)
        try:
            params = load_params(path)
        except ParamsError as err:
            assert str(err).startswith(str(path))
        else:
            round_trips(params, Path(tmp))


@SETTINGS
@given(st.text(alphabet=st.sampled_from(list("abc:-[]{}#&*!|>'\"%@` \n\t.,?01")), max_size=40))
def test_yaml_shaped_text_never_raises_anything_but_params_error(text):
    params, _ = load_text(text)  # round-trips if accepted
