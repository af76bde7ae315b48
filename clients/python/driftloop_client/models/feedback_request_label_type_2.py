from typing import Literal

FeedbackRequestLabelType2 = Literal["0", "1"]

FEEDBACK_REQUEST_LABEL_TYPE_2_VALUES: set[FeedbackRequestLabelType2] = {
    "0",
    "1",
}


def check_feedback_request_label_type_2(value: str) -> FeedbackRequestLabelType2:
    if value in FEEDBACK_REQUEST_LABEL_TYPE_2_VALUES:
        return value
    raise TypeError(f"Unexpected value {value!r}. Expected one of {FEEDBACK_REQUEST_LABEL_TYPE_2_VALUES!r}")
