"""The model registry: models in BentoML's model store, their lifecycle in PostgreSQL.

A model version is ``candidate`` when registered, then ``champion`` (served), ``rejected`` (failed its
gates) or ``retired`` (a later champion replaced it). The champion is whatever this table says.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import joblib
import yaml
from pydantic import ValidationError
from sklearn.pipeline import Pipeline

from training.errors import NotFoundError
from training.spec import ModelSpec
from training.store import Connection

__all__ = [
    "ModelVersion",
    "champion",
    "get_version",
    "load_model",
    "model_spec",
    "promote",
    "record_deployment",
    "register",
    "reject",
    "save_model",
    "set_bento",
]

MODEL_FILE = "model.joblib"
SPEC_FILE = "spec.yaml"
Status = Literal["candidate", "champion", "retired", "rejected"]


@contextlib.contextmanager
def _plain_pickle() -> Iterator[None]:
    """Pickle without dill's types. Importing dill (Airflow does, in every task process) adds them
    to the pure-Python pickler's dispatch table, which joblib's pickler copied when it was imported;
    a model dumped in a DAG task would then need dill to load, and the Bento's image has no dill."""
    dill = sys.modules.get("dill")
    if dill is None:
        yield
        return
    import pickle

    from joblib.numpy_pickle import NumpyPickler

    saved = NumpyPickler.dispatch
    dill.extend(False)
    NumpyPickler.dispatch = pickle._Pickler.dispatch.copy()
    try:
        yield
    finally:
        NumpyPickler.dispatch = saved
        dill.extend(True)


def save_model(
    spec: ModelSpec,
    pipeline: Pipeline,
    *,
    metrics: dict[str, float],
    train_data_uri: str,
) -> str:
    """Save a fitted pipeline and its spec to BentoML's model store; return the model tag."""
    import bentoml

    with bentoml.models.create(
        spec.name,
        labels={"family": spec.model.family, "owner": "driftloop"},
        metadata={"metrics": metrics, "train_data_uri": train_data_uri},
    ) as model:
        with _plain_pickle():
            joblib.dump(pipeline, model.path_of(MODEL_FILE))
        with open(model.path_of(SPEC_FILE), "w") as out:
            yaml.safe_dump(spec.model_dump(mode="json"), out, sort_keys=False)
    return str(model.tag)


def _stored_model(tag: str) -> Any:
    import bentoml
    from bentoml.exceptions import NotFound

    try:
        return bentoml.models.get(tag)
    except (NotFound, StopIteration):
        # A ``:latest`` of a name with no model at all ends in StopIteration inside BentoML.
        raise NotFoundError(f"model {tag} is not in the BentoML model store") from None


def model_spec(tag: str) -> ModelSpec:
    """The spec a model was trained with, saved beside it in the model store (a built Bento's
    own models when serving one); the pipeline is not loaded.

    Raises:
        NotFoundError: no model with that tag, or no spec saved with it.
        ValueError: the saved spec is not a valid spec (the message says how).
    """
    model = _stored_model(tag)
    try:
        raw = yaml.safe_load(Path(model.path_of(SPEC_FILE)).read_text())
    except OSError:
        raise NotFoundError(
            f"model {model.tag} has no {SPEC_FILE}: it was not saved by driftloop's training"
        ) from None
    try:
        return ModelSpec.model_validate(raw)
    except ValidationError as exc:
        raise ValueError(
            f"model {model.tag}: its {SPEC_FILE} is not a valid model spec ({exc.error_count()} "
            f"errors, first: {exc.errors()[0]['msg']}); retrain it with this version of driftloop"
        ) from None


def load_model(tag: str) -> tuple[Pipeline, ModelSpec]:
    """Load a saved pipeline and the spec it was trained with.

    Raises:
        NotFoundError: no model with that tag in the model store, or no spec saved with it.
        ValueError: the saved spec is not a valid spec.
    """
    spec = model_spec(tag)
    pipeline: Pipeline = joblib.load(_stored_model(tag).path_of(MODEL_FILE))
    return pipeline, spec


@dataclass(frozen=True)
class ModelVersion:
    model_name: str
    version: int
    tag: str
    status: Status
    metrics: dict[str, Any]
    train_data_uri: str
    bento_tag: str | None
    training_run_id: int | None
    created_at: datetime
    promoted_at: datetime | None


_COLUMNS = (
    "model_name, version, tag, status, metrics, train_data_uri, bento_tag, training_run_id,"
    " created_at, promoted_at"
)


def _row(row: tuple[Any, ...]) -> ModelVersion:
    return ModelVersion(*row)


def register(
    conn: Connection,
    *,
    model_name: str,
    tag: str,
    metrics: dict[str, Any],
    train_data_uri: str,
    training_run_id: int | None = None,
) -> ModelVersion:
    """Add a model as ``candidate`` with the next version number (idempotent on ``tag``)."""
    with conn.cursor() as cur:
        # Serialise numbering per model so two concurrent registrations cannot take one number.
        cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (model_name,))
        cur.execute(
            "INSERT INTO model_versions"
            " (model_name, version, tag, status, metrics, train_data_uri, training_run_id)"
            " SELECT %(name)s, COALESCE(MAX(version), 0) + 1, %(tag)s, 'candidate', %(metrics)s,"
            " %(uri)s, %(run)s FROM model_versions WHERE model_name = %(name)s"
            " ON CONFLICT (tag) DO NOTHING",
            {
                "name": model_name,
                "tag": tag,
                "metrics": json.dumps(metrics),
                "uri": train_data_uri,
                "run": training_run_id,
            },
        )
    return get_version(conn, tag)


def get_version(conn: Connection, tag: str) -> ModelVersion:
    with conn.cursor() as cur:
        cur.execute(f"SELECT {_COLUMNS} FROM model_versions WHERE tag = %s", (tag,))  # noqa: S608
        row = cur.fetchone()
    if row is None:
        raise NotFoundError(f"model {tag} is not in the registry")
    return _row(row)


def champion(conn: Connection, model_name: str) -> ModelVersion | None:
    with conn.cursor() as cur:
        cur.execute(
            f"SELECT {_COLUMNS} FROM model_versions"  # noqa: S608 - column list is a constant
            " WHERE model_name = %s AND status = 'champion'",
            (model_name,),
        )
        row = cur.fetchone()
    return _row(row) if row else None


def promote(conn: Connection, tag: str) -> ModelVersion:
    """Make ``tag`` the champion and retire the previous one, in one transaction."""
    version = get_version(conn, tag)
    if version.status not in ("candidate", "champion", "retired"):
        raise ValueError(f"model {tag} is {version.status}; only a candidate can be promoted")
    with conn.cursor() as cur:
        cur.execute(
            "UPDATE model_versions SET status = 'retired'"
            " WHERE model_name = %s AND status = 'champion' AND tag <> %s",
            (version.model_name, tag),
        )
        cur.execute(
            "UPDATE model_versions SET status = 'champion', promoted_at = now() WHERE tag = %s",
            (tag,),
        )
    return get_version(conn, tag)


def reject(conn: Connection, tag: str) -> ModelVersion:
    with conn.cursor() as cur:
        cur.execute(
            "UPDATE model_versions SET status = 'rejected' WHERE tag = %s AND status = 'candidate'",
            (tag,),
        )
    return get_version(conn, tag)


def set_bento(conn: Connection, tag: str, bento_tag: str) -> None:
    with conn.cursor() as cur:
        cur.execute("UPDATE model_versions SET bento_tag = %s WHERE tag = %s", (bento_tag, tag))


def record_deployment(
    conn: Connection,
    model_tag: str,
    bento_tag: str,
    *,
    target: str,
    status: str,
    detail: dict[str, Any],
) -> None:
    """Record where a model's Bento went (``target``: local serving, an image, a cluster)."""
    with conn.cursor() as cur:
        cur.execute(
            "INSERT INTO deployments (model_name, model_tag, bento_tag, target, status, detail)"
            " VALUES (%s, %s, %s, %s, %s, %s)",
            (model_tag.partition(":")[0], model_tag, bento_tag, target, status, json.dumps(detail)),
        )
