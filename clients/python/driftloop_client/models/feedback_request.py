from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar, cast

from attrs import define as _attrs_define

from ..models.feedback_request_label_type_1 import FeedbackRequestLabelType1, check_feedback_request_label_type_1
from ..models.feedback_request_label_type_2 import FeedbackRequestLabelType2, check_feedback_request_label_type_2

T = TypeVar("T", bound="FeedbackRequest")


@_attrs_define
class FeedbackRequest:
    """The ground truth for one prediction; unknown fields are refused like the prediction's.

    Attributes:
        request_id (str): the request_id of the prediction
        label (bool | FeedbackRequestLabelType1 | FeedbackRequestLabelType2): the outcome as the training data spells
            it, 1 (positive) or 0 (negative), or 1/0, or true/false
    """

    request_id: str
    label: bool | FeedbackRequestLabelType1 | FeedbackRequestLabelType2

    def to_dict(self) -> dict[str, Any]:
        request_id = self.request_id

        label: bool | int | str
        if isinstance(self.label, int):
            label = self.label
        elif isinstance(self.label, str):
            label = self.label
        else:
            label = self.label

        field_dict: dict[str, Any] = {}

        field_dict.update(
            {
                "request_id": request_id,
                "label": label,
            }
        )

        return field_dict

    @classmethod
    def from_dict(cls: type[T], src_dict: Mapping[str, Any]) -> T:
        d = dict(src_dict)
        request_id = d.pop("request_id")

        def _parse_label(data: object) -> bool | FeedbackRequestLabelType1 | FeedbackRequestLabelType2:
            try:
                if not isinstance(data, int):
                    raise TypeError()
                label_type_1 = check_feedback_request_label_type_1(data)

                return label_type_1
            except (TypeError, ValueError, AttributeError, KeyError):
                pass
            try:
                if not isinstance(data, str):
                    raise TypeError()
                label_type_2 = check_feedback_request_label_type_2(data)

                return label_type_2
            except (TypeError, ValueError, AttributeError, KeyError):
                pass
            return cast(bool | FeedbackRequestLabelType1 | FeedbackRequestLabelType2, data)

        label = _parse_label(d.pop("label"))

        feedback_request = cls(
            request_id=request_id,
            label=label,
        )

        return feedback_request
