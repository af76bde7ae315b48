from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from attrs import define as _attrs_define
from attrs import field as _attrs_field

T = TypeVar("T", bound="Prediction")


@_attrs_define
class Prediction:
    """
    Attributes:
        request_id (str): quote it when posting feedback for this prediction
        score (float): probability of the positive class
        label (int): score at or above the model's threshold
        model_name (str):
        model_version (str):
    """

    request_id: str
    score: float
    label: int
    model_name: str
    model_version: str
    additional_properties: dict[str, Any] = _attrs_field(init=False, factory=dict)

    def to_dict(self) -> dict[str, Any]:
        request_id = self.request_id

        score = self.score

        label = self.label

        model_name = self.model_name

        model_version = self.model_version

        field_dict: dict[str, Any] = {}
        field_dict.update(self.additional_properties)
        field_dict.update(
            {
                "request_id": request_id,
                "score": score,
                "label": label,
                "model_name": model_name,
                "model_version": model_version,
            }
        )

        return field_dict

    @classmethod
    def from_dict(cls: type[T], src_dict: Mapping[str, Any]) -> T:
        d = dict(src_dict)
        request_id = d.pop("request_id")

        score = d.pop("score")

        label = d.pop("label")

        model_name = d.pop("model_name")

        model_version = d.pop("model_version")

        prediction = cls(
            request_id=request_id,
            score=score,
            label=label,
            model_name=model_name,
            model_version=model_version,
        )

        prediction.additional_properties = d
        return prediction

    @property
    def additional_keys(self) -> list[str]:
        return list(self.additional_properties.keys())

    def __getitem__(self, key: str) -> Any:
        return self.additional_properties[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self.additional_properties[key] = value

    def __delitem__(self, key: str) -> None:
        del self.additional_properties[key]

    def __contains__(self, key: str) -> bool:
        return key in self.additional_properties
