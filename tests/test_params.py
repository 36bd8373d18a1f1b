"""alexnet/config/params.py: bad params fail before any work, with a message naming the key."""

from pathlib import Path

import pytest

from alexnet.config.params import ParamsError, load_params, parse_params


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
