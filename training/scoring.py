"""Score request records without pandas: a fitted pipeline's preprocessing compiled to lookups.

``evaluate.score`` builds a DataFrame, runs ``feature_frame`` and the ColumnTransformer, and lets
the estimator validate its input again; for one request that is milliseconds of overhead around a
few microseconds of model. ``FastScorer`` reads the fitted pieces once (encoder categories, the
ColumnTransformer's output layout, scaler statistics, the booster or the linear coefficients) and
then builds the same float64 matrix from plain dicts with per-column lookups and numpy.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, Final, Literal, TypeVar

import numpy as np
from numpy.typing import NDArray
from scipy.special import expit  # type: ignore[import-untyped]
from sklearn.compose import ColumnTransformer
from sklearn.impute import MissingIndicator, SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import (
    FunctionTransformer,
    OneHotEncoder,
    OrdinalEncoder,
    StandardScaler,
)

from training.features import MISSING_CATEGORY
from training.spec import ModelSpec

__all__ = ["FastScorer"]

Family = Literal["lightgbm", "logistic_regression"]

# LightGBM's sklearn wrapper forwards every estimator parameter to Booster.predict; of those, only
# the prediction early-stopping ones change the numbers (num_threads changes only the speed).
_PREDICT_PARAMS: Final = ("pred_early_stop", "pred_early_stop_freq", "pred_early_stop_margin")

_THREAD_ALIASES: Final = ("num_threads", "num_thread", "nthread", "nthreads", "n_jobs")

_V = TypeVar("_V")


class _Lookup(dict[object, _V]):
    """Category → code, resolving misses the way ``feature_frame`` + the encoder would.

    ``feature_frame`` fills absent categorical values with ``MISSING_CATEGORY``; a nullable feature's
    encoder (or a spec) lists it as a category, so a None takes whatever code it has, not blindly
    "unknown".

    Hits (known strings, and None) are a plain dict lookup; only misses reach ``__missing__``.
    """

    def __init__(self, codes: Mapping[str, _V], unknown: _V) -> None:
        super().__init__(codes.items())
        self._unknown = unknown
        self._absent = codes.get(MISSING_CATEGORY, unknown)
        self[None] = self._absent

    def __missing__(self, key: object) -> _V:
        if isinstance(key, str):
            return self._unknown
        if isinstance(key, float | np.floating) and math.isnan(key):
            return self._absent
        # pandas' astype("string") spells other scalars with str(); validated requests never
        # get here, but a stray int must not score differently from the pipeline.
        return self.get(str(key), self._unknown)


@dataclass(frozen=True)
class _Ordinal:
    name: str
    column: int
    codes: _Lookup[float]


@dataclass(frozen=True)
class _OneHot:
    name: str
    columns: _Lookup[int]  # absolute output column of each category; -1 for none


@dataclass(frozen=True)
class _Numeric:
    name: str
    column: int
    mean: float | None  # None: passed through untouched
    scale: float | None
    fill: float | None = (
        None  # what a missing value becomes (SimpleImputer's statistic); None: kept
    )


@dataclass(frozen=True)
class _Indicator:
    name: str
    column: int  # 1.0 there when the value is missing (MissingIndicator)


def _lacking(records: Sequence[Mapping[str, Any]], error: KeyError) -> ValueError | KeyError:
    """The ValueError naming the absent feature behind ``error`` (the error itself if unrelated)."""
    name = error.args[0] if error.args else None
    index = next((i for i, record in enumerate(records) if name not in record), None)
    if index is None:
        return error
    return ValueError(f"record {index} lacks feature {name!r}")


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _numbers(columns: Sequence[tuple[Any, ...]]) -> NDArray[np.float64]:
    """Like ``pd.to_numeric(errors="coerce")``: None becomes NaN, and so does anything unparsable."""
    try:
        return np.array(columns, dtype=np.float64)
    except (TypeError, ValueError):
        return np.array([[_number(v) for v in column] for column in columns], dtype=np.float64)


def _getter(names: Sequence[str]) -> Callable[[Mapping[str, Any]], tuple[Any, ...]]:
    """A function giving a record's values for ``names`` as a tuple (itemgetter's, in C)."""
    if len(names) == 1:
        (name,) = names
        return lambda record: (record[name],)
    get: Callable[[Mapping[str, Any]], tuple[Any, ...]] = itemgetter(*names)
    return get


def _column_names(columns: Any, names_in: Sequence[str]) -> list[str]:
    """The input columns a fitted transformer reads, as names (remainders may hold indices)."""
    if isinstance(columns, str):
        return [columns]
    out: list[str] = []
    for column in list(columns):
        if isinstance(column, str):
            out.append(column)
        elif isinstance(column, int | np.integer) and not isinstance(column, bool | np.bool_):
            out.append(str(names_in[int(column)]))
        else:
            raise ValueError(f"unsupported column selector {columns!r} in the preprocess step")
    return out


def _categories(encoder: OneHotEncoder | OrdinalEncoder, names: list[str]) -> list[list[str]]:
    if encoder.max_categories is not None or encoder.min_frequency is not None:
        raise ValueError("encoders grouping infrequent categories are not supported")
    if np.dtype(encoder.dtype) != np.float64:
        raise ValueError(f"encoder dtype {encoder.dtype!r} is not float64")
    categories = [list(c) for c in encoder.categories_]
    if len(categories) != len(names) or not all(
        isinstance(c, str) for cs in categories for c in cs
    ):
        raise ValueError("encoder categories are not one list of strings per feature")
    return categories


def _is_passthrough(transformer: Any) -> bool:
    # Fitted ColumnTransformers keep a remainder="passthrough" as an identity FunctionTransformer.
    if isinstance(transformer, str):
        return transformer == "passthrough"
    return (
        isinstance(transformer, FunctionTransformer)
        and transformer.func is None
        and transformer.inverse_func is None
    )


def _fitted(estimator: Any, attribute: str, what: str) -> None:
    if not hasattr(estimator, attribute):
        raise ValueError(f"the pipeline's {what} is not fitted")


def _is_nan(value: Any) -> bool:
    return isinstance(value, float | np.floating) and math.isnan(value)


def _imputer_fills(imputer: SimpleImputer, label: str, names: list[str]) -> list[float]:
    """The value a SimpleImputer puts in place of a missing one, per feature."""
    _fitted(imputer, "statistics_", f"imputer of block {label!r}")
    if not _is_nan(imputer.missing_values) or imputer.add_indicator:
        raise ValueError(
            f"the imputer of block {label!r} must fill NaN and add no indicator of its own"
        )
    fills = [float(v) for v in imputer.statistics_]
    if len(fills) != len(names):
        raise ValueError(f"the imputer of block {label!r} has {len(fills)} values for {names}")
    empty = [n for n, v in zip(names, fills, strict=True) if not math.isfinite(v)]
    if empty:
        # keep_empty_features=False: an all-missing training column is dropped, not filled.
        raise ValueError(f"the imputer of block {label!r} has no value to fill {empty} with")
    return fills


def _numeric_steps(
    transformer: Any, label: str
) -> tuple[SimpleImputer | None, StandardScaler | None]:
    """The imputer and scaler a numeric block applies, in that order (either may be absent)."""
    if _is_passthrough(transformer):
        return None, None
    if isinstance(transformer, SimpleImputer):
        return transformer, None
    if isinstance(transformer, StandardScaler):
        return None, transformer
    steps = [step for _, step in transformer.steps]
    if (
        len(steps) != 2
        or not isinstance(steps[0], SimpleImputer)
        or not isinstance(steps[1], StandardScaler)
    ):
        kinds = [type(step).__name__ for step in steps]
        raise ValueError(
            f"preprocess block {label!r} is a Pipeline of {kinds}, not [SimpleImputer, StandardScaler]"
        )
    return steps[0], steps[1]


def _indicator_columns(indicator: MissingIndicator, label: str, names: list[str]) -> None:
    """Check that a MissingIndicator gives one column per feature it reads, 1.0 where NaN."""
    _fitted(indicator, "features_", f"missing indicator of block {label!r}")
    if (
        indicator.features != "all"
        or not _is_nan(indicator.missing_values)
        or list(indicator.features_) != list(range(len(names)))
    ):
        raise ValueError(
            f"the missing indicator of block {label!r} must flag NaN in every feature it reads "
            "(features='all')"
        )


class FastScorer:
    """The positive-class probability a fitted ``build_pipeline`` pipeline gives, without pandas.

    Records are dicts keyed by feature name (extra keys are ignored), validated as the service
    does: numerics int/float or None, categoricals str or None; a nullable feature may also be
    absent, which is the same as None. Conversions follow ``feature_frame``: a None numeric is NaN
    (a nullable one then takes its imputed value and sets its missing-indicator column); a None
    categorical is ``MISSING_CATEGORY``, which a nullable feature's encoder knows as a category and
    any other encodes as unknown (ordinal ``unknown_value``, one-hot all zeros).

    Exactness: for LightGBM, ``score`` calls the same booster on the same float64 matrix the pipeline
    would build, so the result is bit-identical to ``evaluate.score``, batch or single record. For
    logistic regression the matrix is identical too and the probability uses sklearn's own
    operations (``X @ coef.T + intercept``, then scipy's ``expit``), so a batch matches
    ``evaluate.score`` on that batch bit for bit while the fitted ColumnTransformer outputs dense
    arrays (the churn spec's case). The promise is only a difference of at most 1e-12, though:
    BLAS may round a one-row product differently from a many-row one (a record scored alone can
    differ from its batch score by about 2e-16), and a ColumnTransformer that chose sparse output
    at fit time (it decides from the density) makes sklearn take a sparse dot product.
    """

    def __init__(
        self,
        *,
        family: Family,
        width: int,
        ordinals: tuple[_Ordinal, ...],
        one_hots: tuple[_OneHot, ...],
        numerics: tuple[_Numeric, ...],
        indicators: tuple[_Indicator, ...],
        nullable: tuple[str, ...],
        estimator: Any,
        predict_params: Mapping[str, Any],
        threads: int,
    ) -> None:
        """Use ``FastScorer.compile``; this stores what it derived from the fitted pipeline."""
        self._family: Family = family
        self._width = width
        # One pass pulls every feature of a record (itemgetter, in C); the columns that zip(*rows)
        # gives then convert with one C-level map or array call each, for one record or a batch.
        names = [o.name for o in ordinals] + [h.name for h in one_hots] + [n.name for n in numerics]
        self._get = _getter(names)
        self._nullable = nullable
        self._ordinal_end = len(ordinals)
        self._hot_end = self._ordinal_end + len(one_hots)
        self._ordinal_codes = tuple(o.codes for o in ordinals)
        self._ordinal_columns = tuple(o.column for o in ordinals)
        self._hot_columns = tuple(h.columns for h in one_hots)
        self._numeric_names = tuple(n.name for n in numerics)
        self._numeric_columns = np.array([n.column for n in numerics], dtype=np.intp)
        # Rows of the numbers array (one per numeric feature) that are imputed, that are flagged
        # when missing, and that must hold a finite number for a logistic regression.
        row = {n.name: i for i, n in enumerate(numerics)}
        filled = [i for i, n in enumerate(numerics) if n.fill is not None]
        self._filled_rows = np.array(filled, dtype=np.intp)
        self._fills = np.array([[numerics[i].fill] for i in filled], dtype=np.float64)
        self._indicator_rows = np.array([row[i.name] for i in indicators], dtype=np.intp)
        self._indicator_columns = np.array([i.column for i in indicators], dtype=np.intp)
        # sklearn's imputer and indicator refuse infinity (NaN is what they look for).
        self._guarded_rows = np.union1d(self._filled_rows, self._indicator_rows).astype(np.intp)
        strict = [i for i, n in enumerate(numerics) if n.fill is None]
        self._strict_rows = None if not filled else np.array(strict, dtype=np.intp)
        scaled = any(n.mean is not None or n.scale is not None for n in numerics)
        # x - 0.0 and x / 1.0 are exact for every float, so unscaled columns can share the arrays.
        self._means = (
            np.array([[0.0 if n.mean is None else n.mean] for n in numerics]) if scaled else None
        )
        self._scales = (
            np.array([[1.0 if n.scale is None else n.scale] for n in numerics]) if scaled else None
        )
        self._predict_params = dict(predict_params)
        self._threads = threads
        if family == "lightgbm":
            self._booster = estimator.booster_
        else:
            self._coef_t = np.array(estimator.coef_, dtype=np.float64).T
            self._intercept = np.array(estimator.intercept_, dtype=np.float64)

    @property
    def family(self) -> Family:
        """The model family the scorer was compiled for."""
        return self._family

    @classmethod
    def compile(
        cls, pipeline: Pipeline, spec: ModelSpec, *, num_threads: int | None = None
    ) -> FastScorer:
        """Derive a scorer from a fitted pipeline made by ``build_pipeline`` for ``spec``.

        Args:
            pipeline: the fitted ``preprocess`` ColumnTransformer + estimator pipeline.
            spec: the spec the pipeline was trained with (it decides how raw values convert).
            num_threads: LightGBM threads for a batch (speed only, never the scores); the model's
                ``n_jobs`` when None. A server worker passes 1: workers are the parallelism, and
                OpenMP threads of one worker would wait at barriers for cores the others hold.

        Raises:
            ValueError: the pipeline is unfitted or not of a shape ``build_pipeline`` makes (other
                estimator, transformers, encoder, imputer or indicator settings or class labels),
                or it does not match the spec's family and features; the message says what differs.
        """
        if not isinstance(pipeline, Pipeline) or len(pipeline.steps) != 2:
            raise ValueError("expected a two-step sklearn Pipeline (preprocess, model)")
        preprocess, estimator = pipeline.steps[0][1], pipeline.steps[1][1]
        if not isinstance(preprocess, ColumnTransformer):
            raise ValueError(
                f"the pipeline's first step is {type(preprocess).__name__}, not a ColumnTransformer"
            )
        family = _family(estimator)
        if family != spec.model.family:
            raise ValueError(
                f"the pipeline holds a {family} model but the spec says {spec.model.family}"
            )
        _fitted(preprocess, "transformers_", "preprocess step")
        _fitted(estimator, "classes_", "model")
        if [int(c) for c in estimator.classes_] != [0, 1]:
            raise ValueError(f"model classes are {list(estimator.classes_)}, expected [0, 1]")

        kinds = {f.name: f.type for f in spec.features}
        names_in = [str(n) for n in preprocess.feature_names_in_]
        expected: dict[Family, tuple[type, ...]] = {
            "lightgbm": (OrdinalEncoder, SimpleImputer, MissingIndicator),
            "logistic_regression": (OneHotEncoder, StandardScaler, Pipeline, MissingIndicator),
        }
        ordinals: list[_Ordinal] = []
        one_hots: list[_OneHot] = []
        numerics: list[_Numeric] = []
        indicators: list[_Indicator] = []
        seen: list[str] = []
        for label, transformer, columns in preprocess.transformers_:
            names = _column_names(columns, names_in)
            if isinstance(transformer, str) and transformer == "drop":
                if names:
                    raise ValueError(f"preprocess block {label!r} drops features {names}")
                continue
            if not names:
                continue  # reads nothing, gives nothing (and was never fitted)
            out: slice = preprocess.output_indices_[label]
            passthrough = _is_passthrough(transformer)
            if passthrough and family != "lightgbm":
                raise ValueError("a passthrough block belongs to the lightgbm pipeline only")
            if not passthrough and not isinstance(transformer, expected[family]):
                raise ValueError(
                    f"preprocess block {label!r} is {type(transformer).__name__}, unexpected for {family}"
                )
            wanted = (
                "categorical"
                if isinstance(transformer, OrdinalEncoder | OneHotEncoder)
                else "numeric"
            )
            wrong = [n for n in names if kinds.get(n) != wanted]
            if wrong:
                raise ValueError(
                    f"preprocess block {label!r} reads {wrong}, not {wanted} spec features"
                )
            if isinstance(transformer, MissingIndicator):
                # Flags features that another block gives the values of: not counted as read.
                _indicator_columns(transformer, label, names)
                indicators.extend(_Indicator(n, out.start + i) for i, n in enumerate(names))
                continue
            seen.extend(names)
            if isinstance(transformer, OrdinalEncoder):
                if transformer.handle_unknown != "use_encoded_value":
                    raise ValueError(
                        "the OrdinalEncoder must encode unknown categories, not refuse them"
                    )
                unknown = float(transformer.unknown_value)
                for i, (name, cats) in enumerate(
                    zip(names, _categories(transformer, names), strict=True)
                ):
                    codes = _Lookup({c: float(j) for j, c in enumerate(cats)}, unknown)
                    ordinals.append(_Ordinal(name, out.start + i, codes))
            elif isinstance(transformer, OneHotEncoder):
                if transformer.handle_unknown != "ignore" or transformer.drop_idx_ is not None:
                    raise ValueError(
                        "the OneHotEncoder must ignore unknown categories and drop none"
                    )
                offset = out.start
                for name, cats in zip(names, _categories(transformer, names), strict=True):
                    one_hots.append(
                        _OneHot(name, _Lookup({c: offset + j for j, c in enumerate(cats)}, -1))
                    )
                    offset += len(cats)
            else:
                imputer, scaler = _numeric_steps(transformer, label)
                fills = (
                    [None] * len(names)
                    if imputer is None
                    else _imputer_fills(imputer, label, names)
                )
                if scaler is not None:
                    _fitted(scaler, "scale_", f"scaler of block {label!r}")
                # A scaler with with_mean/with_std off keeps statistics it does not apply.
                mean = scaler.mean_ if scaler is not None and scaler.with_mean else None
                scale = scaler.scale_ if scaler is not None and scaler.with_std else None
                for i, name in enumerate(names):
                    numerics.append(
                        _Numeric(
                            name,
                            out.start + i,
                            None if mean is None else float(mean[i]),
                            None if scale is None else float(scale[i]),
                            fills[i],
                        )
                    )
        if sorted(seen) != sorted(spec.feature_names):
            raise ValueError(
                f"the preprocess step reads {sorted(seen)}, not the spec's features {sorted(spec.feature_names)}"
            )
        stray = [i.name for i in indicators if i.name not in {n.name for n in numerics}]
        if stray:
            raise ValueError(f"the preprocess step flags {stray} missing but gives no value for it")
        width = max(s.stop for s in preprocess.output_indices_.values())
        blocks = sum(s.stop - s.start for s in preprocess.output_indices_.values())
        if family == "lightgbm":
            model_width = int(estimator.n_features_in_)
            objective = estimator.objective_
            if objective != "binary":
                raise ValueError(f"the LightGBM objective is {objective!r}, not 'binary'")
        else:
            if estimator.coef_.shape[0] != 1 or estimator.intercept_.shape != (1,):
                raise ValueError("the logistic regression is not a binary one")
            model_width = int(estimator.coef_.shape[1])
        if not width == blocks == model_width:
            raise ValueError(
                f"the preprocess step gives {width} columns, the model takes {model_width}"
            )
        params = estimator.get_params() if family == "lightgbm" else {}
        threads = next((params[k] for k in _THREAD_ALIASES if params.get(k) is not None), None)
        return cls(
            family=family,
            width=width,
            ordinals=tuple(ordinals),
            one_hots=tuple(one_hots),
            numerics=tuple(numerics),
            indicators=tuple(indicators),
            nullable=tuple(f.name for f in spec.features if f.nullable),
            estimator=estimator,
            predict_params={k: params[k] for k in _PREDICT_PARAMS if k in params},
            threads=num_threads if num_threads is not None else _threads(threads),
        )

    def _columns(self, records: Sequence[Mapping[str, Any]]) -> list[tuple[Any, ...]]:
        """Each feature's values across ``records``; an absent nullable feature reads as None.

        Raises:
            ValueError: a record lacks a feature that is not nullable (the message names it).
        """
        try:
            return list(zip(*map(self._get, records), strict=True))
        except KeyError as exc:
            if not self._nullable:
                raise _lacking(records, exc) from None
        # Rare (validated requests carry every field, null or not): only these records are copied.
        absent = dict.fromkeys(self._nullable)
        completed = [
            record if all(n in record for n in self._nullable) else {**absent, **record}
            for record in records
        ]
        try:
            return list(zip(*map(self._get, completed), strict=True))
        except KeyError as exc:
            raise _lacking(completed, exc) from None

    def matrix(self, records: Sequence[Mapping[str, Any]]) -> NDArray[np.float64]:
        """The float64 matrix the pipeline's preprocess step gives for ``records``.

        Args:
            records: feature dicts; extra keys are ignored, absent nullable features are None.

        Returns:
            One row per record, columns in the ColumnTransformer's output order.

        Raises:
            ValueError: a record lacks a non-nullable feature, a nullable numeric value is
                infinite, or (logistic regression) a non-nullable numeric value is missing or not
                finite; the message names the feature.
        """
        n = len(records)
        out = (np.zeros if self._hot_columns else np.empty)((n, self._width), dtype=np.float64)
        if n == 0:
            return out
        columns = self._columns(records)
        for codes, column, values in zip(
            self._ordinal_codes, self._ordinal_columns, columns, strict=False
        ):
            out[:, column] = np.fromiter(map(codes.__getitem__, values), np.float64, count=n)
        if self._hot_columns:
            hot = np.array(
                [
                    list(map(lookup.__getitem__, values))
                    for lookup, values in zip(
                        self._hot_columns, columns[self._ordinal_end : self._hot_end], strict=True
                    )
                ],
                dtype=np.intp,
            )
            known = hot >= 0
            out[known.nonzero()[1], hot[known]] = 1.0
        if not self._numeric_names:
            return out
        numbers = _numbers(columns[self._hot_end :])
        if self._guarded_rows.size:
            infinite = np.isinf(numbers[self._guarded_rows]).any(axis=1)
            if infinite.any():
                name = self._numeric_names[self._guarded_rows[int(np.argmax(infinite))]]
                raise ValueError(f"feature {name!r} is infinite; send a number or null")
        if self._indicator_rows.size:
            out[:, self._indicator_columns] = np.isnan(numbers[self._indicator_rows]).T
        if self._filled_rows.size:
            # SimpleImputer copies its statistic into the gaps: the same values, hence equal bits.
            filled = numbers[self._filled_rows]
            numbers[self._filled_rows] = np.where(np.isnan(filled), self._fills, filled)
        if self._family == "logistic_regression":
            strict = numbers if self._strict_rows is None else numbers[self._strict_rows]
            finite = np.isfinite(strict).all(axis=1)
            if not finite.all():
                # sklearn's LogisticRegression refuses NaN/inf too, with a message naming no column.
                row = int(np.argmin(finite))
                name = self._numeric_names[
                    row if self._strict_rows is None else self._strict_rows[row]
                ]
                raise ValueError(
                    f"feature {name!r} is missing or not finite; the model needs a number"
                )
        if self._means is not None and self._scales is not None:
            # The same element-wise IEEE operations as StandardScaler.transform, hence equal bits.
            numbers = (numbers - self._means) / self._scales
        out[:, self._numeric_columns] = numbers.T
        return out

    def score(self, records: Sequence[Mapping[str, Any]]) -> NDArray[np.float64]:
        """P(label 1) for each record, as ``evaluate.score`` gives it (see the class docstring).

        Args:
            records: feature dicts; extra keys are ignored. An empty sequence gives an empty array.

        Raises:
            ValueError: as ``matrix``.
        """
        matrix = self.matrix(records)
        if len(records) == 0:
            return np.empty(0, dtype=np.float64)
        if self._family == "lightgbm":
            # Thread counts change speed, not results (each row is summed by one thread). One row
            # cannot be split, and a second OpenMP thread then only adds a barrier to wait at,
            # which on a busy host costs milliseconds; batches use the model's n_jobs, as sklearn.
            threads = 1 if len(records) == 1 else self._threads
            # For a binary objective the booster already returns P(class index 1), which is exactly
            # predict_proba's second column; classes_ == [0, 1] was checked at compile time.
            return np.asarray(
                self._booster.predict(matrix, num_threads=threads, **self._predict_params),
                dtype=np.float64,
            )
        decision = (matrix @ self._coef_t + self._intercept).reshape(-1)
        return np.asarray(expit(decision, out=decision), dtype=np.float64)


def _threads(n_jobs: Any) -> int:
    """LightGBM's sklearn reading of n_jobs (None: every core; -1 too, -2 all but one; 0: OpenMP's
    default); it uses physical cores for None, this the logical count, which only changes speed."""
    cores = os.cpu_count() or 1
    if n_jobs is None:
        return cores
    return int(n_jobs) if n_jobs >= 0 else max(cores + 1 + int(n_jobs), 1)


def _family(estimator: Any) -> Family:
    if isinstance(estimator, LogisticRegression):
        return "logistic_regression"
    # Imported here, as build_pipeline does: lightgbm is heavy and only its models need it.
    from lightgbm import LGBMClassifier

    if isinstance(estimator, LGBMClassifier):
        return "lightgbm"
    raise ValueError(
        f"unsupported model {type(estimator).__name__}; expected LGBMClassifier or LogisticRegression"
    )
