"""A deployment's models: read from the models folder, chosen by name, never guessed."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.errors import DriftloopError, NotFoundError
from training.models import dag_id, model_entries, select_spec
from training.settings import Settings
from training.spec import BUILTIN_SPEC, SpecError


def _write(folder: Path, file: str, name: str) -> Path:
    folder.mkdir(exist_ok=True)
    path = folder / file
    path.write_text(BUILTIN_SPEC.read_text().replace("name: churn", f"name: {name}", 1))
    return path


def test_without_specs_the_builtin_churn_model_is_the_one_model(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, models=tmp_path / "models")
    assert list(model_entries(settings)) == ["churn"]
    assert select_spec(settings, None).name == "churn"


def test_a_folder_of_specs_is_the_deployment(tmp_path: Path) -> None:
    _write(tmp_path / "models", "a.yaml", "telco")
    _write(tmp_path / "models", "b.yml", "fraud")
    (tmp_path / "models" / "notes.txt").write_text("not a spec")
    settings = Settings(home=tmp_path, models=tmp_path / "models")
    assert list(model_entries(settings)) == ["telco", "fraud"]
    assert select_spec(settings, "fraud").name == "fraud"
    with pytest.raises(DriftloopError, match=r"2 models \(telco, fraud\); say which with --model"):
        select_spec(settings, None)
    with pytest.raises(NotFoundError, match="no model named 'churn'"):
        select_spec(settings, "churn")


def test_model_spec_variable_wins_over_the_folder(tmp_path: Path) -> None:
    _write(tmp_path / "models", "a.yaml", "telco")
    one = _write(tmp_path / "elsewhere", "x.yaml", "single")
    settings = Settings(home=tmp_path, models=tmp_path / "models", model_spec=one)
    assert list(model_entries(settings)) == ["single"]
    assert select_spec(settings, None).name == "single"


def test_two_specs_with_one_name_are_refused(tmp_path: Path) -> None:
    _write(tmp_path / "models", "a.yaml", "telco")
    _write(tmp_path / "models", "b.yaml", "telco")
    with pytest.raises(SpecError, match=r"name .telco. is already used by .*a\.yaml"):
        model_entries(Settings(home=tmp_path, models=tmp_path / "models"))


def test_models_folder_from_the_environment_is_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DRIFTLOOP_MODELS", "specs")
    assert Settings().models == tmp_path / "specs"


def test_dag_id_names_the_model() -> None:
    assert dag_id("telco") == "driftloop_retrain__telco"
