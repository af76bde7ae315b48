from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from attrs import define as _attrs_define

if TYPE_CHECKING:
    from ..models.churn_request import ChurnRequest


T = TypeVar("T", bound="PredictBatchRequest")


@_attrs_define
class PredictBatchRequest:
    """
    Attributes:
        records (list[ChurnRequest]): up to DRIFTLOOP_BATCH_MAX_RECORDS (1,000) records
    """

    records: list[ChurnRequest]

    def to_dict(self) -> dict[str, Any]:
        records = []
        for records_item_data in self.records:
            records_item = records_item_data.to_dict()
            records.append(records_item)

        field_dict: dict[str, Any] = {}

        field_dict.update(
            {
                "records": records,
            }
        )

        return field_dict

    @classmethod
    def from_dict(cls: type[T], src_dict: Mapping[str, Any]) -> T:
        from ..models.churn_request import ChurnRequest  # noqa: PLC0415

        d = dict(src_dict)
        records = []
        _records = d.pop("records")
        for records_item_data in _records:
            records_item = ChurnRequest.from_dict(records_item_data)

            records.append(records_item)

        predict_batch_request = cls(
            records=records,
        )

        return predict_batch_request
