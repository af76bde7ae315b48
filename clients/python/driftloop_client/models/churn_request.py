from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from attrs import define as _attrs_define

T = TypeVar("T", bound="ChurnRequest")


@_attrs_define
class ChurnRequest:
    """
    Attributes:
        tenure_months (float): months since sign-up
        monthly_charges (float): current monthly bill
        support_calls (float): support calls in the last 90 days
        usage_hours (float): hours of use in the last 30 days
        age (float):
        contract (str):
        payment_method (str):
        region (str):
    """

    tenure_months: float
    monthly_charges: float
    support_calls: float
    usage_hours: float
    age: float
    contract: str
    payment_method: str
    region: str

    def to_dict(self) -> dict[str, Any]:
        tenure_months = self.tenure_months

        monthly_charges = self.monthly_charges

        support_calls = self.support_calls

        usage_hours = self.usage_hours

        age = self.age

        contract = self.contract

        payment_method = self.payment_method

        region = self.region

        field_dict: dict[str, Any] = {}

        field_dict.update(
            {
                "tenure_months": tenure_months,
                "monthly_charges": monthly_charges,
                "support_calls": support_calls,
                "usage_hours": usage_hours,
                "age": age,
                "contract": contract,
                "payment_method": payment_method,
                "region": region,
            }
        )

        return field_dict

    @classmethod
    def from_dict(cls: type[T], src_dict: Mapping[str, Any]) -> T:
        d = dict(src_dict)
        tenure_months = d.pop("tenure_months")

        monthly_charges = d.pop("monthly_charges")

        support_calls = d.pop("support_calls")

        usage_hours = d.pop("usage_hours")

        age = d.pop("age")

        contract = d.pop("contract")

        payment_method = d.pop("payment_method")

        region = d.pop("region")

        churn_request = cls(
            tenure_months=tenure_months,
            monthly_charges=monthly_charges,
            support_calls=support_calls,
            usage_hours=usage_hours,
            age=age,
            contract=contract,
            payment_method=payment_method,
            region=region,
        )

        return churn_request
