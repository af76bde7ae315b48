"""Contains all the data models used in inputs/outputs"""

from .churn_request import ChurnRequest
from .error import Error
from .feedback_batch_request import FeedbackBatchRequest
from .feedback_item_receipt import FeedbackItemReceipt
from .feedback_item_receipt_status import FeedbackItemReceiptStatus
from .feedback_receipt import FeedbackReceipt
from .feedback_receipt_status import FeedbackReceiptStatus
from .feedback_request import FeedbackRequest
from .feedback_request_label_type_1 import FeedbackRequestLabelType1
from .feedback_request_label_type_2 import FeedbackRequestLabelType2
from .field_error import FieldError
from .predict_batch_request import PredictBatchRequest
from .prediction import Prediction

__all__ = (
    "ChurnRequest",
    "Error",
    "FeedbackBatchRequest",
    "FeedbackItemReceipt",
    "FeedbackItemReceiptStatus",
    "FeedbackReceipt",
    "FeedbackReceiptStatus",
    "FeedbackRequest",
    "FeedbackRequestLabelType1",
    "FeedbackRequestLabelType2",
    "FieldError",
    "PredictBatchRequest",
    "Prediction",
)
