"""Train a champion from a table, outside the loop: the first one, or a new one by hand.

The retrain DAG only ever starts from a champion; ``driftloop train`` (and the demo's day 0) make
one from the user's own labelled table, judged on a holdout that is time-ordered when the spec names
a ``time_column`` and random otherwise, with the same gates as every retrain.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from training import registry
from training.columns import not_a_time, parse_times
from training.evaluate import Evaluation, evaluate, judge
from training.features import feature_frame
from training.postgres import ensure_database
from training.retrain import StepContext, build_challenger_bento, promote
from training.rowids import row_request_ids
from training.runs import read_frame, record_training_run, safe_key, upload_frame
from training.settings import Settings
from training.spec import ModelSpec
from training.store import connect
from training.train import fit, labels
from training.trainset import known_ids

__all__ = ["ChampionRun", "bootstrap_champion", "prepare_table", "train_champion"]


def _quiet(_: str) -> None:
    return None


def _labelled_times(column: pd.Series, name: str, labelled: pd.Series) -> pd.Series:
    """The labelled rows' times in UTC (on a new 0..n-1 index), read as backfill reads them, so a
    table train takes is one backfill takes too, with the same ids.

    Raises:
        ValueError: a labelled row's time is empty or not a time; names the first by its row
            (counted from 1, the first row after the header), with its value.
    """
    times = parse_times(column)
    keep = labelled.to_numpy(dtype=bool)
    bad = np.flatnonzero((times.empty | times.unreadable) & keep)
    if len(bad):
        first = int(bad[0])
        what = (
            "is empty; every labelled row needs its time"
            if times.empty[first]
            else not_a_time(column.iloc[first])
        )
        more = f"; and {len(bad) - 1} more row(s)" if len(bad) > 1 else ""
        raise ValueError(f"time_column {name!r}: row {first + 1}: {what}{more}")
    return times.utc[keep].reset_index(drop=True)


def prepare_table(spec: ModelSpec, table: pd.DataFrame) -> pd.DataFrame:
    """The labelled rows of a user's table as the loop stores training data: the spec's features,
    the target as 0/1, ``created_at`` (from ``time_column``, UTC) and ``request_id``.

    Raises:
        ValueError: a column is missing, a label is neither of the spec's, or a labelled row's time
            is empty or not ISO 8601 text or a timestamp (as ``driftloop backfill`` reads them).
    """
    frame = table.copy()
    if spec.target not in frame.columns:
        raise ValueError(f"data lacks the target column {spec.target!r}")
    # A blank target (" " in a CSV) is an unlabelled row, as an empty one is.
    blank = frame[spec.target].astype("string").str.strip().fillna("") == ""
    frame = frame[~blank]
    if frame.empty:
        raise ValueError(f"no row has a value in the target column {spec.target!r}")
    out = feature_frame(spec, frame)
    out[spec.target] = labels(spec, frame).to_numpy()
    if spec.time_column:
        if spec.time_column not in frame.columns:
            raise ValueError(f"data lacks the spec's time_column {spec.time_column!r}")
        times = _labelled_times(table[spec.time_column], spec.time_column, ~blank)
        out["created_at"] = times.array  # by position: out keeps the table's index
    if "request_id" in frame.columns:
        out["request_id"] = frame["request_id"].astype("string").to_numpy()
    else:
        out["request_id"] = row_request_ids(spec, out).to_numpy()
    return out.reset_index(drop=True)


@dataclass(frozen=True)
class ChampionRun:
    model_tag: str
    promoted: bool
    reason: str
    holdout: Literal["time-ordered", "random"]
    train_rows: int
    holdout_rows: int
    metrics: dict[str, float]
    champion_metrics: dict[str, float] | None
    previous_champion: str | None
    bento_tag: str | None
    version: int | None


def _split(spec: ModelSpec, rows: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, bool]:
    if "created_at" in rows.columns:
        ordered = rows.sort_values(["created_at", "request_id"], kind="stable")
        cut = round(len(ordered) * (1 - spec.gates.holdout_fraction))
        return ordered.iloc[:cut], ordered.iloc[cut:], True
    train = rows.sample(frac=1 - spec.gates.holdout_fraction, random_state=spec.training.seed)
    return train, rows.drop(train.index), False


def train_champion(
    settings: Settings,
    spec: ModelSpec,
    rows: pd.DataFrame,
    *,
    run_key: str,
    progress: Callable[[str], None] = _quiet,
) -> ChampionRun:
    """Fit, judge, register and (when its gates pass) promote a model trained on ``rows``.

    Without a champion the gates are the spec's floor (``min_auc``); with one, the new model must
    also beat it on the same holdout (rows the champion trained on are left out of it), exactly as
    a retrain's challenger. A model that passes gets its Bento and becomes the champion.

    Args:
        rows: from :func:`prepare_table` (or any frame with the features and a 0/1 target).

    Raises:
        DriftloopError: there is no champion and the model fails its gates.
        ValueError: too few rows or a single class on either side of the split.
    """
    from training.errors import DriftloopError

    with connect(ensure_database(settings)) as conn:
        champ = registry.champion(conn, spec.name)
    if champ is not None:
        # Rows the champion trained on would flatter it; they may still train the new model.
        seen = (
            rows["request_id"]
            .astype(str)
            .isin(known_ids(read_frame(settings, champ.train_data_uri)))
            if "request_id" in rows.columns
            else pd.Series(False, index=rows.index)
        )
    else:
        seen = pd.Series(False, index=rows.index)
    train_part, holdout, by_time = _split(spec, rows)
    holdout = holdout[~seen.loc[holdout.index]]
    train_part = pd.concat([train_part, rows[seen & ~rows.index.isin(train_part.index)]])
    if len(holdout) < 20 or labels(spec, holdout).nunique() < 2:
        raise ValueError(
            f"the holdout has {len(holdout)} rows and needs both classes; give more labelled rows"
        )
    progress(
        f"training {spec.model.family} on {len(train_part)} rows; holdout {len(holdout)} rows "
        f"({'newest by ' + str(spec.time_column) if by_time else 'random'})"
    )
    pipeline = fit(spec, train_part)
    metrics = evaluate(pipeline, spec, holdout)
    champion_eval: Evaluation | None = None
    if champ is not None:
        champion_pipeline, champion_spec = registry.load_model(champ.tag)
        champion_eval = evaluate(champion_pipeline, champion_spec, holdout)
    verdict = judge(metrics, champion_eval, spec.gates)
    if not verdict.passed and champ is None:
        raise DriftloopError(f"the first model of {spec.name} fails its gates: {verdict.reason}")
    prefix = f"runs/{spec.name}/{safe_key(run_key)}"
    train_uri = upload_frame(settings, train_part, f"{prefix}/train.parquet")
    upload_frame(settings, holdout, f"{prefix}/holdout.parquet")
    tag = registry.save_model(
        spec, pipeline, metrics=metrics.as_dict(), train_data_uri=train_uri, training_set=train_part
    )
    run_id = record_training_run(
        settings,
        spec.name,
        run_key,
        status="trained" if verdict.passed else "rejected",
        reason="trained from a table" if verdict.passed else verdict.reason,
        champion_tag=champ.tag if champ else None,
        challenger_tag=tag,
        metrics={
            "challenger": metrics.as_dict(),
            "champion": champion_eval.as_dict() if champion_eval else None,
        },
        gates=[asdict(g) for g in verdict.gates],
    )
    with connect(ensure_database(settings)) as conn:
        registry.register(
            conn,
            model_name=spec.name,
            tag=tag,
            metrics=metrics.as_dict(),
            train_data_uri=train_uri,
            training_run_id=run_id,
        )
        if not verdict.passed:
            registry.reject(conn, tag)
    result = ChampionRun(
        model_tag=tag,
        promoted=False,
        reason=verdict.reason,
        holdout="time-ordered" if by_time else "random",
        train_rows=len(train_part),
        holdout_rows=len(holdout),
        metrics=metrics.as_dict(),
        champion_metrics=champion_eval.as_dict() if champion_eval else None,
        previous_champion=champ.tag if champ else None,
        bento_tag=None,
        version=None,
    )
    if not verdict.passed:
        return result
    progress(f"model {tag} passed its gates; building its Bento")
    ctx = StepContext(settings, spec, ensure_database(settings), run_key)
    built = build_challenger_bento(ctx, tag)
    promoted = promote(ctx, built)
    return ChampionRun(
        **(
            asdict(result)
            | {"promoted": True, "bento_tag": built.bento_tag, "version": promoted.version}
        )
    )


def bootstrap_champion(
    settings: Settings,
    training_data: pd.DataFrame,
    run_key: str = "bootstrap",
    spec: ModelSpec | None = None,
) -> dict[str, Any]:
    """The demo's day 0: the first champion from a labelled synthetic frame (random holdout)."""
    from training.models import select_spec

    spec = spec or select_spec(settings, None)
    run = train_champion(settings, spec, training_data.reset_index(drop=True), run_key=run_key)
    return {
        "champion_tag": run.model_tag,
        "bento_tag": run.bento_tag,
        "version": run.version,
        "previous_champion": run.previous_champion,
        "metrics": run.metrics,
    }
