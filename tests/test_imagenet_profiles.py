"""ImageNet on GPUs as one path (docs/imagenet.md): the profiles for 1, 2 and 8 GPUs are the paper's recipe,
reach the stages through `dvc exp run -S` instead of a copy over params.yaml, pass every param check on a
machine without a GPU up to the device check, and the dataset folder at the documented place stays out
of git and DVC."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from alexnet.config.params import load_params, parse_params
from alexnet.pipeline.placement import member_devices, members_at_once
from alexnet.profile import dvc_command, hydra_value, main
from tests.test_ilsvrc import ID_OF, WNIDS, jpeg, tar_bytes, write_devkit

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PROFILES = {1: "params/paper-1gpu.yaml", 2: "params/paper.yaml", 8: "params/paper-8gpu.yaml"}
RELEASE = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar", "ILSVRC2012_devkit_t12.tar.gz")


@pytest.mark.parametrize("gpus", sorted(PROFILES))
def test_each_profile_is_the_papers_recipe_on_its_gpus(gpus):
    params, paper = load_params(ROOT / PROFILES[gpus]), parse_params({})
    # The paper's model and training (§5) everywhere; only the placement and the machine's knobs differ.
    assert params.model.model_dump(exclude={"devices"}) == paper.model.model_dump(exclude={"devices"})
    assert params.train.model_dump(exclude={"workers"}) == paper.train.model_dump(exclude={"workers"})
    assert (params.data.source, str(params.data.root)) == ("imagenet", "data/imagenet")
    assert (params.preprocess.stored_size, params.preprocess.format) == (256, "jpeg")
    placed = member_devices(params)
    gpus_used = {d for devices in placed[: members_at_once(params)] for d in devices}
    pool = params.ensemble.devices or params.model.devices
    if gpus == 8:  # the five CNNs of §6 at once, one GPU each, from a pool of eight
        assert params.ensemble.members == members_at_once(params) == len(gpus_used) == 5
        assert len(set(pool)) == 8
    else:
        assert params.ensemble.members == 1 and len(gpus_used) == len(set(pool)) == gpus
    assert all(d.startswith("cuda:") for d in gpus_used)


def apply_with_dvc(params_file: Path, command: list[str]) -> None:
    """What `dvc exp run -S` does to params.yaml before a run: DVC's own function, on a copy."""
    from dvc.utils.hydra import apply_overrides

    assert command[:3] == ["dvc", "exp", "run"] and command[3::2] == ["-S"] * len(command[4::2])
    apply_overrides(str(params_file), command[4::2])


@pytest.mark.parametrize("start", ["params.yaml", "params/imagenette.yaml", "params/paper-8gpu.yaml"])
@pytest.mark.parametrize("gpus", sorted(PROFILES))
def test_the_overrides_turn_any_params_file_into_the_profile(tmp_path, start, gpus):
    current = tmp_path / "params.yaml"
    shutil.copy(ROOT / start, current)
    apply_with_dvc(current, dvc_command(ROOT / PROFILES[gpus], current))
    # Keys the profile leaves out take the paper's value, not the file's (ensemble.devices back to null).
    assert load_params(current) == load_params(ROOT / PROFILES[gpus])
    assert dvc_command(ROOT / PROFILES[gpus], current) == ["dvc", "exp", "run"]  # nothing left to change


def test_override_values_read_back_unchanged_through_dvc(tmp_path):
    from ruamel.yaml import YAML

    values = ["null", "a,b", 'say "hi"', "it's", "back\\slash", 'back\\"q', "end\\", "1e-3", "cuda:0", "",
              " x ", "a=b", "[x]", "x ${y} z", "é", 1e-05, 58.0, 0, -3, True, None, [], ["cuda:0", "cuda:1"]]
    target = tmp_path / "params.yaml"
    target.write_text("a: 1\n")
    apply_with_dvc(target, ["dvc", "exp", "run", *(a for i, v in enumerate(values)
                                                    for a in ("-S", f"++k{i}={hydra_value(v)}"))])
    written = YAML(typ="safe").load(target.read_text())
    assert [written[f"k{i}"] for i in range(len(values))] == values
    assert all(type(written[f"k{i}"]) is type(v) for i, v in enumerate(values))


def test_the_command_prints_a_dvc_exp_run_and_refuses_what_is_not_a_profile(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert main([PROFILES[1]]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("dvc exp run \\\n") and "-S '++model.devices=[\"cuda:0\",\"cuda:0\"]'" in printed
    assert main(["params.yaml"]) == 2
    assert "is the params file itself" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lrr: 0.1\n")
    assert main([str(bad)]) == 2
    err = capsys.readouterr().err
    assert "train.lrr: unknown key" in err and "Traceback" not in err


def test_the_docs_give_each_profile_and_the_readme_links_them():
    doc = (ROOT / "docs" / "imagenet.md").read_text()
    assert all(path in doc for path in PROFILES.values()) and all(name in doc for name in RELEASE)
    assert "docs/imagenet.md" in (ROOT / "README.md").read_text()
    assert "cp params/" not in (ROOT / "README.md").read_text()  # a profile never overwrites params.yaml


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


def env() -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL")}
    out.update(GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@localhost", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@localhost", PATH=f"{BIN}:{os.environ['PATH']}")
    return out


def project_copy(dest: Path) -> Path:
    """This working tree as a fresh repository: every file git tracks or would add, one commit."""
    listed = git(ROOT, "ls-files", "-z", "--cached", "--others", "--exclude-standard").split("\0")
    for name in filter(None, listed):
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True, env=env())
    subprocess.run(["git", "add", "-A"], cwd=dest, check=True, env=env())
    subprocess.run(["git", "commit", "-qm", "copy"], cwd=dest, check=True, env=env())
    return dest


def fake_release(root: Path) -> None:
    """The three official files, tiny: 3 classes, 4 train photos each, 6 val photos."""
    import numpy as np

    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    train = {w: [(f"{w}_{k}.JPEG", jpeg(rng, (40 + 7 * k, 36 + 5 * k))) for k in range(4)] for w in WNIDS}
    val = [(f"ILSVRC2012_val_{i + 1:08d}.JPEG", WNIDS[i % 3], jpeg(rng, (45, 52))) for i in range(6)]
    (root / RELEASE[0]).write_bytes(tar_bytes([(f"{w}.tar", tar_bytes(files)) for w, files in train.items()]))
    (root / RELEASE[1]).write_bytes(tar_bytes([(name, data) for name, _, data in val]))
    write_devkit(root / RELEASE[2], [ID_OF[w] for _, w, _ in val])


@pytest.mark.parametrize("kind", ["folder", "symlink"])
def test_the_imagenet_folder_is_ignored_by_git_and_dvc(tmp_path, kind):
    project = project_copy(tmp_path / "project")
    data = project / "data" / "imagenet" if kind == "folder" else tmp_path / "big-disk" / "ilsvrc2012"
    fake_release(data)
    (data / "train" / "n01440764").mkdir(parents=True)  # an extracted tree too
    (data / "train" / "n01440764" / "n01440764_1.JPEG").write_bytes(b"x")
    if kind == "symlink":
        (project / "data" / "imagenet").symlink_to(data)
    assert git(project, "status", "--porcelain", "--untracked-files=all") == ""
    for name in ("", *RELEASE, "train/n01440764/n01440764_1.JPEG"):
        path = f"data/imagenet/{name}".rstrip("/")
        done = subprocess.run([str(BIN / "dvc"), "check-ignore", path], cwd=project, env=env(),
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"DVC does not ignore {path}: {done.stdout}{done.stderr}"


@pytest.mark.slow
def test_dvc_exp_run_with_each_profile_gets_to_the_device_check_on_a_cpu(tmp_path):
    project = project_copy(tmp_path / "project")
    fake_release(project / "data" / "imagenet")
    for gpus, profile in PROFILES.items():
        done = subprocess.run([sys.executable, "-m", "alexnet.profile", profile, "--run", "--", "-n", f"in1k-{gpus}"],
                              cwd=project, env=env(), capture_output=True, text=True, timeout=600)
        out = done.stdout + done.stderr
        assert done.returncode != 0, out[-3000:]
        # prepare and preprocess ran with the profile's params; train stopped at its first check, in one line.
        assert "train: params.yaml: model.devices: 'cuda:0', but this machine has no CUDA device" in out, out[-3000:]
        assert "invalid params" not in out and "Traceback" not in out, out[-3000:]
        manifest = (project / "data" / "shards" / "manifest.json").read_text()
        assert '"stored_size": 256' in manifest and "jpeg" in manifest
        # What DVC wrote into the run's params.yaml is the profile, value for value.
        assert load_params(project / "params.yaml") == load_params(project / profile)
        git(project, "checkout", "--", "params.yaml", "dvc.lock")
