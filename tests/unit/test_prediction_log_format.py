"""The COPY text line of one prediction, checked without a database."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import numpy as np
import pytest

from training.store import PredictionRecord, encode_prediction

AT = datetime(2026, 3, 1, 12, 30, 45, 123456, tzinfo=UTC)
_UNESCAPE = {"\\": "\\", "t": "\t", "n": "\n", "r": "\r"}


def _record(**overrides: Any) -> PredictionRecord:
    fields: dict[str, Any] = {
        "request_id": "r1",
        "model_name": "churn",
        "model_version": "v1",
        "features": {"age": 42.0, "plan": "basic"},
        "score": 0.25,
        "label": 0,
        "created_at": AT,
    }
    return PredictionRecord(**(fields | overrides))


def _decode(line: bytes) -> list[str]:
    """The fields of one COPY text line, as PostgreSQL reads them (the escapes the encoder uses)."""
    assert line.endswith(b"\n")
    fields = []
    for raw in line[:-1].decode().split("\t"):
        out, chars = [], iter(raw)
        for char in chars:
            out.append(_UNESCAPE[next(chars)] if char == "\\" else char)
        fields.append("".join(out))
    return fields


def test_a_plain_record_is_one_tab_separated_line() -> None:
    assert encode_prediction(_record()) == (
        b'r1\tchurn\tv1\t{"age":42.0,"plan":"basic"}\t0.25\t0\t2026-03-01T12:30:45.123456+00:00\n'
    )


def test_awkward_text_round_trips_through_the_copy_escapes() -> None:
    features = {
        "path": "C:\\temp\\new",
        "quote": 'say "hi"',
        "controls": "tab\there\nnew line\r\n",
        "unicode": "Zürich 東京 😀",
        "nothing": None,
        "escape-lookalike": "\\u0000 and \\n are text here",
        "nested": {"list": [1, 2.5, "x\\y"]},
    }
    record = _record(
        request_id="id\twith\\odd\nbits\r",
        model_version="v\\1",
        features=features,
        score=0.1 + 0.2,
        created_at=AT.astimezone(timezone(timedelta(hours=5, minutes=30))),
    )
    line = encode_prediction(record)
    assert line.count(b"\n") == 1
    assert line.count(b"\t") == 6

    request_id, name, version, raw_features, score, label, created_at = _decode(line)
    assert (request_id, name, version) == (record.request_id, "churn", "v\\1")
    assert json.loads(raw_features) == features
    assert raw_features.isascii()
    assert float(score) == record.score  # repr round-trips every float exactly
    assert int(label) == 0
    assert datetime.fromisoformat(created_at) == AT
    assert datetime.fromisoformat(created_at).utcoffset() == timedelta(hours=5, minutes=30)


def test_numpy_scalars_are_written_as_plain_numbers() -> None:
    line = encode_prediction(_record(score=np.float64(0.75), label=np.int64(1)))
    assert _decode(line)[4:6] == ["0.75", "1"]


def test_created_at_is_required_and_must_carry_a_time_zone() -> None:
    with pytest.raises(ValueError, match="created_at must be set"):
        encode_prediction(_record(created_at=None))
    with pytest.raises(ValueError, match="time zone"):
        encode_prediction(_record(created_at=datetime(2026, 3, 1, 12, 0)))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"features": {"age": math.nan}}, "Out of range float"),
        ({"features": {"age": math.inf}}, "Out of range float"),
        ({"features": {"plan": "a\x00b"}}, "NUL"),
        ({"request_id": "a\x00b"}, "request_id must not contain the NUL"),
        ({"model_version": "v\x00"}, "model_version must not contain the NUL"),
        ({"features": {"plan": "lone \ud800 surrogate"}}, "surrogate"),
        ({"request_id": "lone \udc00"}, "surrogate"),
        ({"label": 40_000}, "does not fit a smallint"),
    ],
)
def test_what_postgresql_would_refuse_is_refused_when_encoding(
    overrides: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        encode_prediction(_record(**overrides))


def test_characters_outside_the_bmp_are_accepted() -> None:
    line = encode_prediction(_record(features={"plan": "😀"}))
    assert json.loads(_decode(line)[3]) == {"plan": "😀"}
