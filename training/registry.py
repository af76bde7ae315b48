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
import pandas as pd
import yaml
from pydantic import ValidationError
from sklearn.pipeline import Pipeline

from training.errors import NotFoundError
from training.lineage import Lineage, capture
from training.spec import ModelSpec
from training.store import Connection

__all__ = [
    "ModelVersion",
    "champion",
    "clear_bento_uri",
    "get_version",
    "load_model",
    "model_spec",
    "promote",
    "promotions",
    "register",
    "reject",
    "rollback_target",
    "save_model",
    "set_bento",
    "set_bento_uri",
    "versions",
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
    training_set: pd.DataFrame | None = None,
) -> str:
    """Save a fitted pipeline and its spec to BentoML's model store; return the model tag.

    With ``training_set`` (the rows it was fitted on), the model's :class:`~training.lineage.Lineage`
    goes into its metadata (and so into its Bento), from where :func:`register` records it.
    """
    import bentoml

    meta: dict[str, Any] = {"metrics": metrics, "train_data_uri": train_data_uri}
    if training_set is not None:
        meta["lineage"] = capture(training_set, spec.time_column).as_dict()
    with bentoml.models.create(
        spec.name,
        labels={"family": spec.model.family, "owner": "driftloop"},
        metadata=meta,
    ) as model:
        with _plain_pickle():
            joblib.dump(pipeline, model.path_of(MODEL_FILE))
        with open(model.path_of(SPEC_FILE), "w") as out:
            yaml.safe_dump(spec.model_dump(mode="json"), out, sort_keys=False)
    return str(model.tag)


def _stored_model(tag: str) -> Any:
    import bentoml
    from bentoml.exceptions import BentoMLException, NotFound

    missing = f"model {tag} is not in the BentoML model store"
    try:
        model = bentoml.models.get(tag)
    except (NotFound, StopIteration):
        # A ``:latest`` of a name with no model at all ends in StopIteration inside BentoML.
        raise NotFoundError(missing) from None
    except BentoMLException:
        # BentoML matches a version by its prefix: "churn:a" names every version starting with
        # "a", and several of them is an error rather than "not found".
        raise NotFoundError(missing) from None
    version = tag.partition(":")[2]
    if version and version != "latest" and str(model.tag) != tag:
        # ...and one of them would be returned as if it were the version asked for.
        raise NotFoundError(f"{missing} (only {model.tag}, whose version starts alike)")
    return model


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
    retired_at: datetime | None = None
    data_start: datetime | None = None
    data_end: datetime | None = None
    data_sha256: str | None = None
    data_rows: int | None = None
    code_revision: str | None = None
    packages: dict[str, str] | None = None
    # The Bento exported to the artifact store (training.bento.publish_bento).
    bento_uri: str | None = None


_COLUMNS = (
    "model_name, version, tag, status, metrics, train_data_uri, bento_tag, training_run_id,"
    " created_at, promoted_at, retired_at, data_start, data_end, data_sha256, data_rows,"
    " code_revision, packages, bento_uri"
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
    lineage: Lineage | None = None,
) -> ModelVersion:
    """Add a model as ``candidate`` with the next version number (idempotent on ``tag``).

    Its lineage is ``lineage``, else the one :func:`save_model` kept in the model's metadata.
    """
    found = lineage or _saved_lineage(tag)
    with conn.cursor() as cur:
        # Serialise numbering per model so two concurrent registrations cannot take one number.
        cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (model_name,))
        cur.execute(
            "INSERT INTO model_versions"
            " (model_name, version, tag, status, metrics, train_data_uri, training_run_id,"
            " data_start, data_end, data_sha256, data_rows, code_revision, packages)"
            " SELECT %(name)s, COALESCE(MAX(version), 0) + 1, %(tag)s, 'candidate', %(metrics)s,"
            " %(uri)s, %(run)s, %(start)s, %(end)s, %(sha)s, %(rows)s, %(rev)s, %(packages)s"
            " FROM model_versions WHERE model_name = %(name)s"
            " ON CONFLICT (tag) DO NOTHING",
            {
                "name": model_name,
                "tag": tag,
                "metrics": json.dumps(metrics),
                "uri": train_data_uri,
                "run": training_run_id,
                "start": found.data_start if found else None,
                "end": found.data_end if found else None,
                "sha": found.data_sha256 if found else None,
                "rows": found.data_rows if found else None,
                "rev": found.code_revision if found else None,
                "packages": json.dumps(found.packages) if found else None,
            },
        )
    return get_version(conn, tag)


def _saved_lineage(tag: str) -> Lineage | None:
    try:
        raw = _stored_model(tag).info.metadata.get("lineage")
    except NotFoundError:
        return None
    return Lineage.from_dict(raw) if isinstance(raw, dict) else None


def get_version(conn: Connection, tag: str) -> ModelVersion:
    with conn.cursor() as cur:
        cur.execute(f"SELECT {_COLUMNS} FROM model_versions WHERE tag = %s", (tag,))  # noqa: S608
        row = cur.fetchone()
    if row is None:
        raise NotFoundError(f"model {tag} is not in the registry")
    return _row(row)


def by_bento(conn: Connection, bento_tag: str) -> ModelVersion | None:
    """The model version a Bento was built for, if the registry knows the Bento."""
    with conn.cursor() as cur:
        cur.execute(
            f"SELECT {_COLUMNS} FROM model_versions WHERE bento_tag = %s"  # noqa: S608
            " ORDER BY version DESC LIMIT 1",
            (bento_tag,),
        )
        row = cur.fetchone()
    return _row(row) if row else None


def champion(conn: Connection, model_name: str) -> ModelVersion | None:
    with conn.cursor() as cur:
        cur.execute(
            f"SELECT {_COLUMNS} FROM model_versions"  # noqa: S608 - column list is a constant
            " WHERE model_name = %s AND status = 'champion'",
            (model_name,),
        )
        row = cur.fetchone()
    return _row(row) if row else None


Action = Literal["retrain", "promote", "rollback"]


@dataclass(frozen=True)
class Promotion:
    model_name: str
    tag: str
    previous_tag: str | None
    action: str
    by: str
    reason: str
    at: datetime


def promote(
    conn: Connection,
    tag: str,
    *,
    by: str = "driftloop",
    reason: str = "no reason given",
    action: Action = "retrain",
) -> ModelVersion:
    """Make ``tag`` the champion and retire the previous one, in one transaction, recorded in
    ``promotions`` with who (``by``) and why.

    A ``candidate`` is promoted by a retrain (or ``driftloop train``); a ``retired`` version comes
    back by ``driftloop promote`` or ``rollback``, and only with a Bento to serve.

    Raises:
        NotFoundError: no such version.
        ValueError: it is rejected, already the champion, or a retired version without a Bento.
    """
    version = get_version(conn, tag)
    if version.status == "champion":
        raise ValueError(f"model {tag} is already the champion")
    if version.status == "rejected":
        raise ValueError(f"model {tag} was rejected (it failed its gates or its run failed)")
    if version.status == "retired" and version.bento_tag is None:
        raise ValueError(f"model {tag} has no Bento to serve")
    with conn.cursor() as cur:
        # One promotion of a model at a time: the previous champion read here stays the one retired.
        cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (version.model_name,))
        before = champion(conn, version.model_name)
        cur.execute(
            "UPDATE model_versions SET status = 'retired', retired_at = now()"
            " WHERE model_name = %s AND status = 'champion' AND tag <> %s",
            (version.model_name, tag),
        )
        cur.execute(
            "UPDATE model_versions SET status = 'champion', promoted_at = now(), retired_at = NULL"
            " WHERE tag = %s",
            (tag,),
        )
        cur.execute(
            "INSERT INTO promotions (model_name, tag, previous_tag, action, by, reason)"
            " VALUES (%s, %s, %s, %s, %s, %s)",
            (version.model_name, tag, before.tag if before else None, action, by, reason),
        )
    return get_version(conn, tag)


def rollback_target(conn: Connection, model_name: str) -> ModelVersion:
    """The champion before the current one: the version the current champion replaced when it
    was promoted (its promotions by rollback skipped, so that rolling back twice walks further
    back instead of undoing the first rollback).

    Raises:
        NotFoundError: no champion, or nothing it replaced that can still serve.
    """
    current = champion(conn, model_name)
    if current is None:
        raise NotFoundError(f"model {model_name!r} has no champion to roll back")
    with conn.cursor() as cur:
        cur.execute(
            "SELECT previous_tag, action FROM promotions WHERE tag = %s ORDER BY at DESC, id DESC",
            (current.tag,),
        )
        recorded = cur.fetchall()
        row: tuple[Any, ...] | None = None
        forward = [previous for previous, action in recorded if action != "rollback"]
        if forward:
            row = (forward[0],) if forward[0] is not None else None
        elif not recorded:
            # Promoted before promotions were recorded: the one retired last before it.
            cur.execute(
                "SELECT tag FROM model_versions WHERE model_name = %s AND status = 'retired'"
                " AND bento_tag IS NOT NULL AND promoted_at < %s"
                " ORDER BY promoted_at DESC LIMIT 1",
                (model_name, current.promoted_at),
            )
            row = cur.fetchone()
    if row is None:
        raise NotFoundError(f"{current.tag} replaced no earlier champion: nothing to roll back to")
    target = get_version(conn, row[0])
    if target.status != "retired" or target.bento_tag is None:
        raise NotFoundError(
            f"{current.tag} replaced {target.tag}, which is {target.status}"
            + ("" if target.bento_tag else " and has no Bento")
            + ": promote another one by hand (`driftloop promote <tag>`)"
        )
    return target


def promotions(conn: Connection, model_name: str, limit: int = 20) -> list[Promotion]:
    """The model's latest promotions, newest first."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT model_name, tag, previous_tag, action, by, reason, at FROM promotions"
            " WHERE model_name = %s ORDER BY at DESC, id DESC LIMIT %s",
            (model_name, limit),
        )
        return [Promotion(*row) for row in cur.fetchall()]


def versions(conn: Connection, model_name: str) -> list[ModelVersion]:
    """Every version of a model, newest first."""
    with conn.cursor() as cur:
        cur.execute(
            f"SELECT {_COLUMNS} FROM model_versions"  # noqa: S608 - column list is a constant
            " WHERE model_name = %s ORDER BY version DESC",
            (model_name,),
        )
        return [_row(row) for row in cur.fetchall()]


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


def set_bento_uri(conn: Connection, tag: str, bento_uri: str) -> None:
    with conn.cursor() as cur:
        cur.execute("UPDATE model_versions SET bento_uri = %s WHERE tag = %s", (bento_uri, tag))


def clear_bento_uri(conn: Connection, tag: str) -> None:
    """The version's Bento export was deleted (``driftloop prune-models``)."""
    with conn.cursor() as cur:
        cur.execute("UPDATE model_versions SET bento_uri = NULL WHERE tag = %s", (tag,))
