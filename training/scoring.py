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
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import (
    FunctionTransformer,
    OneHotEncoder,
    OrdinalEncoder,
    StandardScaler,
)

from training.spec import ModelSpec

__all__ = ["FastScorer"]

Family = Literal["lightgbm", "logistic_regression"]

# feature_frame fills absent categorical values with this before encoding; a spec could list it as
# a category, so a None must take whatever code this string has, not blindly "unknown".
MISSING_CATEGORY: Final = "__missing__"

# LightGBM's sklearn wrapper forwards every estimator parameter to Booster.predict; of those, only
# the prediction early-stopping ones change the numbers (num_threads changes only the speed).
_PREDICT_PARAMS: Final = ("pred_early_stop", "pred_early_stop_freq", "pred_early_stop_margin")

_THREAD_ALIASES: Final = ("num_threads", "num_thread", "nthread", "nthreads", "n_jobs")

_V = TypeVar("_V")


class _Lookup(dict[object, _V]):
    """Category → code, resolving misses the way ``feature_frame`` + the encoder would.

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


class FastScorer:
    """The positive-class probability a fitted ``build_pipeline`` pipeline gives, without pandas.

    Records are dicts keyed by feature name (extra keys are ignored), validated as the service
    does: numerics int/float or None, categoricals str or None. Conversions follow
    ``feature_frame``: a None numeric is NaN; a None categorical is ``"__missing__"``, which like any
    category the encoder never saw encodes as unknown (ordinal ``unknown_value``, one-hot all zeros).

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
        self._ordinal_end = len(ordinals)
        self._hot_end = self._ordinal_end + len(one_hots)
        self._ordinal_codes = tuple(o.codes for o in ordinals)
        self._ordinal_columns = tuple(o.column for o in ordinals)
        self._hot_columns = tuple(h.columns for h in one_hots)
        self._numeric_names = tuple(n.name for n in numerics)
        self._numeric_columns = np.array([n.column for n in numerics], dtype=np.intp)
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
                estimator, transformers, encoder settings or class labels), or it does not match
                the spec's family and features; the message says what differs.
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
            "lightgbm": (OrdinalEncoder,),
            "logistic_regression": (OneHotEncoder, StandardScaler),
        }
        ordinals: list[_Ordinal] = []
        one_hots: list[_OneHot] = []
        numerics: list[_Numeric] = []
        seen: list[str] = []
        for label, transformer, columns in preprocess.transformers_:
            names = _column_names(columns, names_in)
            if isinstance(transformer, str) and transformer == "drop":
                if names:
                    raise ValueError(f"preprocess block {label!r} drops features {names}")
                continue
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
                # A scaler with with_mean/with_std off keeps statistics it does not apply.
                scaler = None if passthrough else transformer
                mean = scaler.mean_ if scaler is not None and scaler.with_mean else None
                scale = scaler.scale_ if scaler is not None and scaler.with_std else None
                for i, name in enumerate(names):
                    numerics.append(
                        _Numeric(
                            name,
                            out.start + i,
                            None if mean is None else float(mean[i]),
                            None if scale is None else float(scale[i]),
                        )
                    )
        if sorted(seen) != sorted(spec.feature_names):
            raise ValueError(
                f"the preprocess step reads {sorted(seen)}, not the spec's features {sorted(spec.feature_names)}"
            )
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
            estimator=estimator,
            predict_params={k: params[k] for k in _PREDICT_PARAMS if k in params},
            threads=num_threads if num_threads is not None else _threads(threads),
        )

    def matrix(self, records: Sequence[Mapping[str, Any]]) -> NDArray[np.float64]:
        """The float64 matrix the pipeline's preprocess step gives for ``records``.

        Args:
            records: feature dicts; extra keys are ignored.

        Returns:
            One row per record, columns in the ColumnTransformer's output order.

        Raises:
            ValueError: a record lacks a feature, or (logistic regression) a numeric value is
                missing or not finite; the message names the feature.
        """
        n = len(records)
        out = (np.zeros if self._hot_columns else np.empty)((n, self._width), dtype=np.float64)
        if n == 0:
            return out
        try:
            columns = list(zip(*map(self._get, records), strict=True))
        except KeyError as exc:
            raise _lacking(records, exc) from None
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
        if self._family == "logistic_regression":
            finite = np.isfinite(numbers).all(axis=1)
            if not finite.all():
                # sklearn's LogisticRegression refuses NaN/inf too, with a message naming no column.
                name = self._numeric_names[int(np.argmin(finite))]
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
