"""Issue 11, item 4: params that used to pass the loader and fail late inside training.

Each must be refused by the loader (or by the stage's first check, for facts of the machine or
the dataset) with the key or the file named, before any work starts.
"""

from pathlib import Path

import pytest
import yaml

from alexnet.config.params import ParamsError, load_params, parse_params
from alexnet.pipeline.preflight import check_dataset, check_runtime

PROJECT = Path(__file__).resolve().parents[2]


def error_of(raw: dict) -> str:
    with pytest.raises(ParamsError) as err:
        parse_params(raw, "params.yaml")
    return str(err.value)


def file_error(tmp_path: Path, content: bytes | str, name: str = "params.yaml") -> str:
    path = tmp_path / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    with pytest.raises(ParamsError) as err:
        load_params(path)
    return str(err.value)


# --- model.crop_size the network cannot pool --------------------------------------------------

@pytest.mark.parametrize("pooling,minimum", [("overlapping", 63), ("non_overlapping", 35)])
def test_crop_too_small_to_pool_names_the_key_and_the_minimum(pooling, minimum):
    msg = error_of({"preprocess": {"stored_size": 128}, "model": {"crop_size": minimum - 1, "pooling": pooling}})
    assert "model.crop_size" in msg and f"at least {minimum}" in msg and pooling in msg
    parse_params({"preprocess": {"stored_size": 128}, "model": {"crop_size": minimum, "pooling": pooling}})


def test_minimum_crop_is_the_smallest_the_model_builds_with():
    from alexnet.model.network import pooled_size

    with pytest.raises(ValueError):
        pooled_size(62, "overlapping")
    assert pooled_size(63, "overlapping") == 1


# --- devices this machine does not have (a runtime check, not pure validation) --------------

def test_cuda_device_on_a_machine_without_cuda_is_refused_by_name():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    params = parse_params({"model": {"devices": ["cuda:0"]}})  # valid params: a fact of the machine
    with pytest.raises(ParamsError, match=r"params.yaml: model.devices: 'cuda:0'.*no CUDA"):
        check_runtime(params, "params.yaml")


def test_mps_device_without_mps_is_refused_by_name():
    import torch

    if torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    with pytest.raises(ParamsError, match=r"model.devices: 'mps'"):
        check_runtime(parse_params({"model": {"devices": ["cpu", "mps"]}}), "params.yaml")


def test_cpu_passes_the_runtime_check():
    check_runtime(load_params(PROJECT / "params.yaml"), "params.yaml")


# --- model.num_classes against the dataset ----------------------------------------------------

def test_num_classes_contradicting_synthetic_classes_names_both_keys():
    msg = error_of({"model": {"num_classes": 5}, "data": {"synthetic": {"classes": 10}}})
    assert "model.num_classes" in msg and "data.synthetic.classes=10" in msg
    parse_params({"model": {"num_classes": 10}, "data": {"synthetic": {"classes": 10}}})


def test_num_classes_contradicting_a_folder_dataset_names_the_key_and_the_file(tmp_path):
    prepared = tmp_path / "prepared"
    prepared.mkdir()
    (prepared / "classes.csv").write_text("label,wnid,name\n0,n01,a\n1,n02,b\n2,n03,c\n")
    params = parse_params({"data": {"source": "folder", "root": "images"}, "model": {"num_classes": 1000}})
    with pytest.raises(ParamsError) as err:
        check_dataset(params, prepared, "params.yaml")
    msg = str(err.value)
    assert "model.num_classes" in msg and "1000" in msg and str(prepared / "classes.csv") in msg and "3" in msg
    check_dataset(parse_params({"data": {"source": "folder", "root": "images"}, "model": {"num_classes": 3}}),
                  prepared, "params.yaml")
    check_dataset(parse_params({"data": {"source": "folder", "root": "images"}}), prepared, "params.yaml")


def test_missing_classes_file_is_named(tmp_path):
    params = parse_params({"data": {"source": "folder", "root": "images"}, "model": {"num_classes": 3}})
    with pytest.raises(FileNotFoundError, match="classes.csv"):
        check_dataset(params, tmp_path, "params.yaml")


def test_train_stage_refuses_a_contradicting_num_classes_before_prefect(tmp_path, capsys):
    from stages.train import main

    prepared = tmp_path / "prepared"
    prepared.mkdir()
    (prepared / "classes.csv").write_text("label,wnid,name\n0,n01,a\n1,n02,b\n")
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"data": {"source": "folder", "root": "x"}, "model": {"num_classes": 7}}))
    code = main(["--params", str(params), "--prepared", str(prepared), "--shards", str(tmp_path / "shards"),
                 "--models", str(tmp_path / "m"), "--history", str(tmp_path / "h"),
                 "--checkpoints", str(tmp_path / "c"), "--tracking-state", str(tmp_path / "m" / "t.json")])
    err = capsys.readouterr().err
    assert code == 2 and "model.num_classes" in err and "classes.csv" in err
    assert not (tmp_path / "m").exists() and not (tmp_path / "c").exists()


# --- numbers that are not numbers -------------------------------------------------------------

@pytest.mark.parametrize("key", ["train.lr", "train.momentum", "train.weight_decay", "model.dropout",
                                 "model.input_scale", "train.augment.pca_std"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_floats_are_refused_by_key(key, value):
    *sections, field = key.split(".")
    raw: dict = {}
    node = raw
    for s in sections:
        node = node.setdefault(s, {})
    node[field] = value
    assert key in error_of(raw)


def test_non_finite_learning_rate_from_yaml_is_refused(tmp_path):
    assert "train.lr" in file_error(tmp_path, "train:\n  lr: .nan\n")
    assert "train.lr" in file_error(tmp_path, "train:\n  lr: .inf\n")


@pytest.mark.parametrize("key", ["ensemble.members", "train.epochs", "train.batch_size", "preprocess.workers",
                                 "data.synthetic.classes", "model.towers", "model.num_classes", "train.seed"])
def test_booleans_for_counts_are_refused(key):
    *sections, field = key.split(".")
    raw: dict = {}
    node = raw
    for s in sections:
        node = node.setdefault(s, {})
    node[field] = True
    msg = error_of(raw)
    assert key in msg and "boolean" in msg


@pytest.mark.parametrize("value", [2.0, 2.5, "2"])
def test_counts_are_whole_numbers_written_as_numbers(value):
    msg = error_of({"ensemble": {"members": value}})
    assert "ensemble.members" in msg


def test_yaml_ints_and_int_valued_floats_still_load(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("ensemble:\n  members: 2\ntrain:\n  lr: 1\n  weight_decay: 5e-4\n")
    p = load_params(path)
    assert p.ensemble.members == 2 and p.train.lr == 1.0 and isinstance(p.train.lr, float)
    assert p.train.weight_decay == 5e-4  # YAML 1.1 reads 5e-4 as a string; a number here


def test_string_for_a_float_is_refused_by_key():
    assert "train.lr" in error_of({"train": {"lr": "0.01"}})


# --- the file itself ------------------------------------------------------------------------

def test_duplicate_section_names_the_key_and_both_lines(tmp_path):
    msg = file_error(tmp_path, "train:\n  lr: 0.01\nmodel:\n  lrn: true\ntrain:\n  epochs: 3\n")
    assert "params.yaml" in msg and "duplicate key 'train'" in msg and "line 5" in msg and "line 1" in msg


def test_duplicate_nested_key_is_named_with_its_path(tmp_path):
    msg = file_error(tmp_path, "train:\n  lr: 0.01\n  epochs: 3\n  lr: 0.1\n")
    assert "duplicate key 'train.lr'" in msg and "line 4" in msg


@pytest.mark.parametrize("content", ["", "\n\n", "# only a comment\n", "---\n"])
def test_empty_params_file_is_refused(tmp_path, content):
    assert file_error(tmp_path, content).startswith(f"{tmp_path / 'params.yaml'}: empty")


@pytest.mark.parametrize("content", [b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", b"train:\n  lr: 0.01 \xff\xfe\n",
                                     b"\x00\x01\x02\x03"])
def test_a_file_that_is_not_text_is_named(tmp_path, content):
    msg = file_error(tmp_path, content)
    assert msg.startswith(str(tmp_path / "params.yaml")) and "not a text file" in msg


def test_a_folder_as_params_file_is_named(tmp_path):
    with pytest.raises(ParamsError, match=f"{tmp_path}: .*not a file"):
        load_params(tmp_path)


def test_stage_reports_a_binary_params_file_in_one_line(tmp_path, capsys):
    from stages.prepare import main

    params = tmp_path / "params.yaml"
    params.write_bytes(b"\xff\xd8\xff\xe0 a jpeg")
    assert main(["--params", str(params), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(params) in err and "not a text file" in err


# --- hostile YAML: the loader must answer in one short message, never a traceback ------------

def test_deeply_nested_yaml_is_refused_by_name(tmp_path):
    msg = file_error(tmp_path, "train:\n  epochs: " + "[" * 5000 + "]" * 5000 + "\n")
    assert msg.startswith(str(tmp_path / "params.yaml")) and "nested too deeply" in msg


def test_an_alias_bomb_gives_a_short_message_naming_the_key(tmp_path):
    # Each level refers to the one below 9 times: 9**7 integers once expanded.
    lines = ["  a0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    lines += [f"  a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 7)]
    msg = file_error(tmp_path, "anchors:\n" + "\n".join(lines) + "\ntrain:\n  epochs: *a6\n")
    assert "train.epochs" in msg and "anchors" in msg and len(msg) < 2000


# --- a batch larger than the training split: no step would run ----------------------------------

def test_batch_larger_than_the_synthetic_train_split_is_refused_by_key():
    msg = error_of({"data": {"synthetic": {"classes": 2, "train_per_class": 10}}, "train": {"batch_size": 21}})
    assert "train.batch_size" in msg and "20" in msg
    parse_params({"data": {"synthetic": {"classes": 2, "train_per_class": 10}}, "train": {"batch_size": 20}})


def test_batch_larger_than_a_prepared_train_split_names_the_key_and_the_file(tmp_path):
    import json

    (tmp_path / "dataset.json").write_text(json.dumps({"splits": {"train": {"found": 9, "indexed": 7,
                                                                             "reported": 2}}}))
    (tmp_path / "classes.csv").write_text("label,wnid,name\n0,n01,a\n")
    folder = {"source": "folder", "root": "images"}
    with pytest.raises(ParamsError) as err:
        check_dataset(parse_params({"data": folder, "train": {"batch_size": 8}}), tmp_path, "params.yaml")
    assert "train.batch_size" in str(err.value) and "7" in str(err.value) and "dataset.json" in str(err.value)
    check_dataset(parse_params({"data": folder, "train": {"batch_size": 7}}), tmp_path, "params.yaml")
