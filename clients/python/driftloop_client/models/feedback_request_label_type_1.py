from typing import Literal

FeedbackRequestLabelType1 = Literal[0, 1]

FEEDBACK_REQUEST_LABEL_TYPE_1_VALUES: set[FeedbackRequestLabelType1] = {
    0,
    1,
}


def check_feedback_request_label_type_1(value: int) -> FeedbackRequestLabelType1:
    if value in FEEDBACK_REQUEST_LABEL_TYPE_1_VALUES:
        return value
    raise TypeError(f"Unexpected value {value!r}. Expected one of {FEEDBACK_REQUEST_LABEL_TYPE_1_VALUES!r}")
