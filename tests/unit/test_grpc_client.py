"""The typed gRPC client's own parts (no server): how it spells labels and records as messages."""

from __future__ import annotations

import grpc
import pytest

from driftloop_grpc.client import CallError, _label, _struct


@pytest.mark.parametrize(
    ("label", "kind", "value"),
    [
        pytest.param(True, "flag", True, id="bool-is-a-flag-not-a-number"),
        pytest.param(False, "flag", False, id="false"),
        pytest.param(1, "number", 1, id="int"),
        pytest.param(0, "number", 0, id="zero-is-set"),
        pytest.param("Yes", "text", "Yes", id="text"),
        pytest.param("", "text", "", id="empty-text-is-set"),
    ],
)
def test_a_label_takes_the_oneof_member_of_its_type(
    label: object, kind: str, value: object
) -> None:
    message = _label("r1", label)  # type: ignore[arg-type]
    assert message.request_id == "r1"
    assert message.WhichOneof("label") == kind
    assert getattr(message, kind) == value


def test_a_record_keeps_numbers_text_and_nulls() -> None:
    struct = _struct({"age": 30, "charges": 70.5, "region": "north", "note": None})
    fields = struct.fields
    assert fields["age"].number_value == 30.0
    assert fields["charges"].number_value == 70.5
    assert fields["region"].string_value == "north"
    assert fields["note"].WhichOneof("kind") == "null_value"


def test_a_call_error_reads_retry_after() -> None:
    error = CallError(grpc.StatusCode.RESOURCE_EXHAUSTED, "rate limit", {"retry-after": "2"})
    assert error.retry_after_s == 2.0
    assert str(error) == "RESOURCE_EXHAUSTED: rate limit"
    assert CallError(grpc.StatusCode.INVALID_ARGUMENT, "bad", {}).retry_after_s is None
