from typing import Literal

FeedbackItemReceiptStatus = Literal["created", "not_found", "unchanged", "updated"]

FEEDBACK_ITEM_RECEIPT_STATUS_VALUES: set[FeedbackItemReceiptStatus] = {
    "created",
    "not_found",
    "unchanged",
    "updated",
}


def check_feedback_item_receipt_status(value: str) -> FeedbackItemReceiptStatus:
    if value in FEEDBACK_ITEM_RECEIPT_STATUS_VALUES:
        return value
    raise TypeError(f"Unexpected value {value!r}. Expected one of {FEEDBACK_ITEM_RECEIPT_STATUS_VALUES!r}")
