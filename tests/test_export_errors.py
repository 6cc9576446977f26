"""Every way an export can be asked wrongly: a one-paragraph error naming the problem, exit status 2,
and the repository untouched."""

import sys

import pytest
import torch

from attnserve.demo import demo_checkpoint
from attnserve.export.cli import main


@pytest.fixture
def repo(tmp_path):
    return tmp_path / "repo"


def fails(capsys, repo, args: list[str]) -> str:
    assert main([*args, "--repository", str(repo), "--no-progress"]) == 2
    assert not repo.exists(), "a failed export leaves the repository untouched"
    err = capsys.readouterr().err
    assert "attnserve export: error:" in err and "Traceback" not in err
    return err


USER = ["--task", "classification", "--input-size", "32", "32", "--name", "user"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--arch", "resnet9000"], "unknown architecture 'resnet9000'"),
        (["--arch", "cbam_classifier", "--checkpoint", "/nonexistent/w.pt"], "does not exist"),
        (["--factory", "no_such_module:build", *USER], "could not import 'no_such_module'"),
        (["--factory", "user_models:nothing_here", *USER], "has no 'nothing_here'"),
        (["--factory", "user_models", *USER], "is not MODULE:CALLABLE"),
        (["--factory", "user_models:build_not_a_module", *USER], "returned a dict, not a torch.nn.Module"),
        (["--factory", "user_models:build_broken", *USER], "RuntimeError: CUDA out of memory (pretend)"),
        (["--factory", "user_models:build", "--factory-kwargs", "{oops", *USER], "not valid JSON"),
        (["--factory", "user_models:build", "--name", "x"], "--factory needs --task"),
        (["--factory", "user_models:build_unexportable", *USER], "could not be exported to ONNX"),
        (["--factory", "user_models:build", *USER, "--attention", "declared"], "declares no attention"),
        (["--factory", "user_models:build", *USER, "--precision", "int8"], "int8 needs --calibration"),
        (
            ["--arch", "cbam_classifier", "--image-mean", "0", "0", "0", "--image-std", "1", "1", "1"],
            "our models normalise their input themselves",
        ),
        (["--arch", "cbam_classifier", "--opset", "13"], "opset 18 or later"),
        (["--arch", "cbam_classifier", "--task", "detection"], "which is a classification model"),
        (["--demo", "--arch", "cbam_classifier"], "--demo exports the shipped demo models"),
        ([*USER], "pass exactly one of --arch NAME"),
    ],
)
def test_bad_requests_fail_with_the_problem_named(capsys, repo, args, message):
    assert message in fails(capsys, repo, args)


@pytest.mark.parametrize("args", [["--arch", "cbam_classifier"], ["--demo"]])
def test_the_demo_weights_missing_names_their_distribution(capsys, repo, monkeypatch, args):
    monkeypatch.setitem(sys.modules, "attnserve.demo", None)  # as without attnserve-demo installed
    err = fails(capsys, repo, args)
    assert "attnserve-demo distribution (pip install ./demo" in err and "--checkpoint" in err


def test_unexportable_op_names_the_op_for_both_exporters(capsys, repo):
    err = fails(capsys, repo, ["--factory", "user_models:build_unexportable", *USER])
    assert "torch.export:" in err and "torchscript:" in err and "bessel_j0" in err


def test_model_whose_outputs_do_not_fit_the_task(capsys, repo, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\n")
    args = ["--factory", "user_models:build", "--task", "detection", "--input-size", "32", "32"]
    err = fails(capsys, repo, [*args, "--labels", str(labels), "--name", "det"])
    assert "does not fit detection" in err and "a tensor of shape (2, 5)" in err


def test_labels_must_match_the_classes(capsys, repo, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\nc\n")
    err = fails(capsys, repo, ["--factory", "user_models:build", *USER, "--labels", str(labels)])
    assert "the model has 5 classes but 3 labels were given" in err


def test_corrupt_checkpoint(capsys, repo, tmp_path):
    path = tmp_path / "weights.pt"
    path.write_bytes(b"\x80\x04 not a checkpoint at all")
    assert "could not be read as weights" in fails(
        capsys, repo, ["--arch", "cbam_classifier", "--checkpoint", str(path)]
    )


def test_pickled_module_is_never_unpickled(capsys, repo, tmp_path):
    path = tmp_path / "whole_model.pt"
    torch.save(torch.nn.Linear(2, 2), path)  # the module object, not its state dict
    err = fails(capsys, repo, ["--arch", "cbam_classifier", "--checkpoint", str(path)])
    assert "save model.state_dict(), not the model object" in err


def test_state_dict_of_another_model_lists_the_keys(capsys, repo):
    """ECA weights into the CBAM architecture: the keys that differ are listed by name."""
    err = fails(
        capsys, repo, ["--arch", "cbam_classifier", "--checkpoint", str(demo_checkpoint("eca_classifier"))]
    )
    assert "missing key(s) (backbone.blocks.0.attn.channel_gate" in err
    assert "unexpected key(s) (backbone.blocks.0.attn.conv.weight" in err


def test_state_dict_with_wrong_shapes(capsys, repo, tmp_path):
    state = torch.load(demo_checkpoint("cbam_classifier"), weights_only=True)["state_dict"]
    state["head.weight"] = torch.zeros(3, 192)
    path = tmp_path / "w.pt"
    torch.save(state, path)
    err = fails(capsys, repo, ["--arch", "cbam_classifier", "--checkpoint", str(path)])
    assert "head.weight (3, 192) vs model (6, 192)" in err


def test_existing_version_is_not_replaced(capsys, tmp_path):
    repo = tmp_path / "repo"
    (repo / "eca_classifier" / "1").mkdir(parents=True)
    marker = repo / "eca_classifier" / "1" / "keep.txt"
    marker.write_text("user data")
    assert main(["--arch", "eca_classifier", "--version", "1", "--repository", str(repo)]) == 2
    assert "already exists" in capsys.readouterr().err and marker.read_text() == "user data"


def test_forced_exporter_that_cannot_handle_the_model(capsys, repo):
    err = fails(
        capsys, repo, ["--factory", "user_models:build_data_dependent", *USER, "--exporter", "torch.export"]
    )
    assert "data-dependent" in err
