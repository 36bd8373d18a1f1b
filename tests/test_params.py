"""alexnet/config/params.py: bad params fail before any work, with a message naming the key."""

import json
from pathlib import Path

import pytest

from alexnet.config.params import ParamsError, load_params, parse_params
from tests.tiny import tiny_params


def error_of(raw) -> str:
    with pytest.raises(ParamsError) as err:
        parse_params(raw, "params.yaml")
    return str(err.value)


def test_defaults_are_valid_and_paper_sized():
    p = parse_params({})
    assert p.preprocess.stored_size == 256 and p.model.crop_size == 224 and p.data.source == "synthetic"


def test_unknown_key_is_named_with_the_allowed_ones():
    msg = error_of({"data": {"sorce": "folder"}})
    assert "data.sorce" in msg and "unknown key" in msg and "source" in msg


def test_wrong_type_is_named():
    msg = error_of({"train": {"epochs": "ten"}})
    assert "train.epochs" in msg and "'ten'" in msg


def test_negative_learning_rate_is_named():
    assert "train.lr" in error_of({"train": {"lr": -0.01}})


def test_crop_larger_than_stored_size_names_both_keys():
    msg = error_of({"preprocess": {"stored_size": 146}, "model": {"crop_size": 224}})
    assert "model.crop_size" in msg and "preprocess.stored_size=146" in msg


@pytest.mark.parametrize("key", ["preprocess.workers", "train.workers"])
def test_zero_workers_is_named(key):
    section, field = key.split(".")
    assert key in error_of({section: {field: 0}})


@pytest.mark.parametrize("source", ["folder", "imagenet"])
def test_missing_root_is_named(source):
    msg = error_of({"data": {"source": source}})
    assert "data" in msg and "root is required" in msg and source in msg


def test_unknown_source_and_format_list_the_choices():
    msg = error_of({"data": {"source": "lmdb"}, "preprocess": {"format": "png"}})
    assert "data.source" in msg and "preprocess.format" in msg and "'synthetic'" in msg


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(ParamsError, match="mapping"):
        load_params(bad)


PROJECT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["params.yaml", "params/paper.yaml", "params/imagenette.yaml"])
def test_shipped_params_files_load(name):
    load_params(PROJECT / name)


def test_paper_profile_is_the_papers_recipe():
    paper = load_params(PROJECT / "params/paper.yaml")
    defaults = parse_params({})
    # Every model and training key of the paper profile equals the paper defaults in config.py,
    # except the settings the paper leaves to the machine (devices, loader workers, determinism).
    assert paper.model.model_dump(exclude={"devices"}) == defaults.model.model_dump(exclude={"devices"})
    assert paper.train.model_dump(exclude={"workers", "deterministic"}) == defaults.train.model_dump(
        exclude={"workers", "deterministic"})
    assert (paper.model.crop_size, paper.preprocess.stored_size, paper.train.batch_size) == (224, 256, 128)
    assert paper.model.devices == ("cuda:0", "cuda:1") and paper.model.init == "paper"


@pytest.mark.parametrize("ensemble", [{"devices": ["cpu", "cpu", "cpu", "cpu"]}, {"runner": "ray"}])
def test_ddp_replicas_do_not_combine_with_a_member_pool_or_ray(ensemble):
    raw = {"train": {"replicas": 2}, "model": {"devices": ["cpu", "cpu"]}, "ensemble": ensemble}
    with pytest.raises(ParamsError, match="train.replicas: above 1, the train stage runs under torchrun"):
        parse_params(raw)
    parse_params({**raw, "train": {"replicas": 1}})  # one rank: either is fine


def test_params_read_as_dvc_reads_them(tmp_path):
    # One YAML reading: `dvc params diff` (ruamel.yaml, YAML 1.2) and the loader get the same values.
    import subprocess
    import sys
    from pathlib import Path

    from alexnet.config.file import read_params_file

    text = ("x:\n  flag_yes: yes\n  flag_no: no\n  on_: on\n  off_: off\n  small: 1e-3\n  quoted: '2026-12-05'\n"
            "  octal: 012\n  real: true\n  hex: 0x1F\n  none: ~\n  under: 1_000\n")
    (tmp_path / "params.yaml").write_text(text)
    (tmp_path / "dvc.yaml").write_text("stages:\n  s:\n    cmd: echo\n    params:\n      - x\n")
    bin_dir = Path(sys.executable).parent

    def run(*cmd: str) -> str:
        return subprocess.run(cmd, cwd=tmp_path, check=True, capture_output=True, text=True).stdout

    run("git", "init", "-q")
    run(str(bin_dir / "dvc"), "init", "-q")
    run("git", "add", "-A")
    run("git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "params")
    dvc = json.loads(run(str(bin_dir / "dvc"), "params", "diff", "--all", "--json"))["params.yaml"]
    ours = read_params_file(tmp_path / "params.yaml")["x"]
    assert {k.removeprefix("x."): v["new"] for k, v in dvc.items()} == ours
    assert (ours["flag_yes"], ours["on_"], ours["small"], ours["octal"]) == ("yes", "on", 0.001, 12)
    # A date DVC refuses to load ("Unsupported value of type 'date'"): refused here too, by key.
    (tmp_path / "params.yaml").write_text("x:\n  when: 2026-12-05\n")
    with pytest.raises(ParamsError, match=r"x.when: 2026-12-05 reads as a date, which DVC cannot load"):
        read_params_file(tmp_path / "params.yaml")


def test_yes_is_no_boolean():
    with pytest.raises(ParamsError, match="train.deterministic: .*true or false is expected"):
        parse_params({"train": {"deterministic": "yes"}})


@pytest.mark.parametrize(("section", "key", "value"), [
    ("ensemble", "members", 1_000_000), ("train", "epochs", 1_000_000)])
def test_sizes_past_any_use_are_refused_at_load_naming_the_key(section, key, value):
    raw = tiny_params()
    raw.setdefault(section, {})[key] = value
    with pytest.raises(ParamsError, match=rf"{section}\.{key}"):
        parse_params(raw)


def test_a_synthetic_dataset_past_any_use_is_refused_at_load_naming_the_key():
    raw = tiny_params()
    raw["data"]["synthetic"]["train_per_class"] = 1_000_000_000
    with pytest.raises(ParamsError, match=r"data\.synthetic\.train_per_class"):
        parse_params(raw)
