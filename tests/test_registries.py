"""What kiln writes back to a model registry, and how it reads a logged MLflow folder (the live server's round
trip is tests/test_service.py::test_mlflow_logged_model_optimized_and_its_version_tagged)."""

from __future__ import annotations

import pytest

from kiln.errors import ProgramError
from kiln.registries.base import outcome_tags
from kiln.registries.mlflow import program_in


def _outcome(**fields):
    from kiln.artifact.manifest import Manifest
    from kiln.artifact.outcome import OptimizeOutcome

    manifest = Manifest.model_construct(name="m", selected=fields.get("selected", "tvm"))
    return OptimizeOutcome.model_construct(**{"name": "m", "manifest": manifest, "speedup": None, "message": None,
                                              "upload": None, "image": None, **fields})


def test_outcome_tags_say_what_the_registry_shows():
    published = outcome_tags(_outcome(artifact="/store/m/abc", selected="tvm", speedup=1.8312, published=True,
                                      upload="s3://models/m/abc", image="reg:5000/m:abc"), run="r1")
    assert published == {"kiln.run": "r1", "kiln.status": "published", "kiln.selected": "tvm",
                         "kiln.speedup": "1.83x", "kiln.artifact": "s3://models/m/abc", "kiln.image": "reg:5000/m:abc",
                         "kiln.profile": "static"}
    kept = outcome_tags(_outcome(artifact="/store/m/old", selected="current", published=False,
                                 message="the current version is still the fastest"))
    assert kept["kiln.status"] == "kept-current" and kept["kiln.artifact"] == "/store/m/old"
    assert "still the fastest" in kept["kiln.message"] and "kiln.speedup" not in kept
    failed = outcome_tags(None, "x" * 10_000, run="r2")
    assert failed["kiln.status"] == "failed" and len(failed["kiln.message"]) == 4000


def test_one_list_of_registries_answers_for_sources_tags_and_webhooks():
    """Sources, the request's report_to and the web's webhook routes all ask kiln.registries: nothing else names
    a registry's schemes."""
    from kiln import registries
    from kiln.optimize.request import OptimizeRequest
    from kiln.program import sources

    assert registries.for_source("models:/m/1").name == "mlflow" and registries.for_source("s3://b/k") is None
    assert set(registries.source_schemes()) <= set(sources.schemes())
    assert sources.is_location("runs:/abc/model") and sources.is_location("/abs/p")
    assert not sources.is_location("http://x") and not sources.is_location(None)
    assert registries.taggable() == ["mlflow"]
    with pytest.raises(Exception, match="takes no tags"):
        OptimizeRequest.of(program="m.onnx", report_to={"registry": "huggingface", "name": "a", "version": "1"})


def test_a_logged_folder_is_its_program_or_its_onnx_model(tmp_path):
    flavour = tmp_path / "flavour"
    flavour.mkdir()
    for name in ("MLmodel", "model.onnx", "conda.yaml"):
        (flavour / name).write_text("x")
    assert program_in(flavour) == flavour / "model.onnx"
    program = tmp_path / "program"
    program.mkdir()
    (program / "program.py").write_text("")
    (program / "model.onnx").write_text("x")
    assert program_in(program) == program
    (tmp_path / "empty").mkdir()
    with pytest.raises(ProgramError, match="no program.py and no .onnx model"):
        program_in(tmp_path / "empty")


def test_an_mlflow_source_without_a_tracking_server_says_which_setting(monkeypatch, tmp_path):
    from kiln.program.sources import localize

    monkeypatch.delenv("KILN_MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("KILN_HOME", str(tmp_path))
    with pytest.raises(ProgramError) as err:
        localize("models:/m-0123")
    assert "KILN_MLFLOW_TRACKING_URI" in err.value.render()
