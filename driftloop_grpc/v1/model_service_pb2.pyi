from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FeedbackStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FEEDBACK_STATUS_UNSPECIFIED: _ClassVar[FeedbackStatus]
    FEEDBACK_STATUS_CREATED: _ClassVar[FeedbackStatus]
    FEEDBACK_STATUS_UPDATED: _ClassVar[FeedbackStatus]
    FEEDBACK_STATUS_UNCHANGED: _ClassVar[FeedbackStatus]
    FEEDBACK_STATUS_NOT_FOUND: _ClassVar[FeedbackStatus]
FEEDBACK_STATUS_UNSPECIFIED: FeedbackStatus
FEEDBACK_STATUS_CREATED: FeedbackStatus
FEEDBACK_STATUS_UPDATED: FeedbackStatus
FEEDBACK_STATUS_UNCHANGED: FeedbackStatus
FEEDBACK_STATUS_NOT_FOUND: FeedbackStatus

class PredictRequest(_message.Message):
    __slots__ = ("features",)
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    features: _struct_pb2.Struct
    def __init__(self, features: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class Prediction(_message.Message):
    __slots__ = ("request_id", "score", "label", "model_name", "model_version")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    score: float
    label: int
    model_name: str
    model_version: str
    def __init__(self, request_id: _Optional[str] = ..., score: _Optional[float] = ..., label: _Optional[int] = ..., model_name: _Optional[str] = ..., model_version: _Optional[str] = ...) -> None: ...

class PredictBatchRequest(_message.Message):
    __slots__ = ("records",)
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[_struct_pb2.Struct]
    def __init__(self, records: _Optional[_Iterable[_Union[_struct_pb2.Struct, _Mapping]]] = ...) -> None: ...

class PredictBatchResponse(_message.Message):
    __slots__ = ("predictions",)
    PREDICTIONS_FIELD_NUMBER: _ClassVar[int]
    predictions: _containers.RepeatedCompositeFieldContainer[Prediction]
    def __init__(self, predictions: _Optional[_Iterable[_Union[Prediction, _Mapping]]] = ...) -> None: ...

class Label(_message.Message):
    __slots__ = ("request_id", "text", "number", "flag")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    FLAG_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    text: str
    number: int
    flag: bool
    def __init__(self, request_id: _Optional[str] = ..., text: _Optional[str] = ..., number: _Optional[int] = ..., flag: _Optional[bool] = ...) -> None: ...

class FeedbackRequest(_message.Message):
    __slots__ = ("labels",)
    LABELS_FIELD_NUMBER: _ClassVar[int]
    labels: _containers.RepeatedCompositeFieldContainer[Label]
    def __init__(self, labels: _Optional[_Iterable[_Union[Label, _Mapping]]] = ...) -> None: ...

class FeedbackReceipt(_message.Message):
    __slots__ = ("request_id", "label", "status")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    label: int
    status: FeedbackStatus
    def __init__(self, request_id: _Optional[str] = ..., label: _Optional[int] = ..., status: _Optional[_Union[FeedbackStatus, str]] = ...) -> None: ...

class FeedbackResponse(_message.Message):
    __slots__ = ("receipts",)
    RECEIPTS_FIELD_NUMBER: _ClassVar[int]
    receipts: _containers.RepeatedCompositeFieldContainer[FeedbackReceipt]
    def __init__(self, receipts: _Optional[_Iterable[_Union[FeedbackReceipt, _Mapping]]] = ...) -> None: ...
