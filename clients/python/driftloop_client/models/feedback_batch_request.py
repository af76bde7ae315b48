from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from attrs import define as _attrs_define

if TYPE_CHECKING:
    from ..models.feedback_request import FeedbackRequest


T = TypeVar("T", bound="FeedbackBatchRequest")


@_attrs_define
class FeedbackBatchRequest:
    """
    Attributes:
        labels (list[FeedbackRequest]): up to 1,000 labels, each like /feedback's body
    """

    labels: list[FeedbackRequest]

    def to_dict(self) -> dict[str, Any]:
        labels = []
        for labels_item_data in self.labels:
            labels_item = labels_item_data.to_dict()
            labels.append(labels_item)

        field_dict: dict[str, Any] = {}

        field_dict.update(
            {
                "labels": labels,
            }
        )

        return field_dict

    @classmethod
    def from_dict(cls: type[T], src_dict: Mapping[str, Any]) -> T:
        from ..models.feedback_request import FeedbackRequest  # noqa: PLC0415

        d = dict(src_dict)
        labels = []
        _labels = d.pop("labels")
        for labels_item_data in _labels:
            labels_item = FeedbackRequest.from_dict(labels_item_data)

            labels.append(labels_item)

        feedback_batch_request = cls(
            labels=labels,
        )

        return feedback_batch_request
