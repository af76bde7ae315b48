"""Which models this deployment runs: the specs in the models folder, chosen by name.

One deployment may run several models. Each has its spec (``models/<anything>.yaml``), its rows in
the store (keyed by the spec's ``name``), its retrain DAG (``driftloop_retrain__<name>``) and its
Bentos (``<name>_service``). ``DRIFTLOOP_MODEL_SPEC`` names one spec file instead of the folder;
with neither, the built-in churn spec is the one model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from training.errors import DriftloopError, NotFoundError
from training.settings import Settings
from training.spec import BUILTIN_SPEC, ModelSpec, SpecError, load_spec

__all__ = ["ModelEntry", "dag_id", "model_entries", "select_spec"]


@dataclass(frozen=True)
class ModelEntry:
    spec: ModelSpec
    path: Path


def dag_id(model_name: str) -> str:
    """The retrain DAG of a model (Airflow ids allow letters, digits, ``_``, ``-`` and ``.``)."""
    return f"driftloop_retrain__{model_name}"


def _spec_files(settings: Settings) -> list[Path]:
    if settings.model_spec is not None:
        return [settings.model_spec]
    folder = settings.models
    if folder.is_file():
        raise SpecError(f"DRIFTLOOP_MODELS {folder} is a file; point it at a folder of specs")
    files = sorted(p for p in folder.glob("*.y*ml") if p.suffix in (".yaml", ".yml"))
    return files or [BUILTIN_SPEC]


def model_entries(settings: Settings) -> dict[str, ModelEntry]:
    """Every model of this deployment by name, in file order.

    Raises:
        SpecError: a spec cannot be read or is invalid, or two specs give the same name.
    """
    entries: dict[str, ModelEntry] = {}
    for path in _spec_files(settings):
        spec = load_spec(path)
        if spec.name in entries:
            raise SpecError(
                f"model spec {path}: name {spec.name!r} is already used by {entries[spec.name].path}"
            )
        entries[spec.name] = ModelEntry(spec=spec, path=path)
    return entries


def select_spec(settings: Settings, name: str | None) -> ModelSpec:
    """The spec of the model ``name``, or of the only model when ``name`` is None.

    Raises:
        NotFoundError: no model has that name.
        DriftloopError: several models and no name (never guesses).
    """
    entries = model_entries(settings)
    if name is None:
        if len(entries) > 1:
            raise DriftloopError(
                f"this deployment has {len(entries)} models ({', '.join(entries)}); "
                "say which with --model NAME"
            )
        return next(iter(entries.values())).spec
    entry = entries.get(name)
    if entry is None:
        raise NotFoundError(
            f"no model named {name!r} (known: {', '.join(entries)}; specs come from "
            f"{settings.model_spec or settings.models})"
        )
    return entry.spec
