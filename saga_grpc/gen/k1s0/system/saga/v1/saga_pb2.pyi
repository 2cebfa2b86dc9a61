from saga_grpc.gen.k1s0.system.common.v1 import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SagaStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SAGA_STATUS_UNSPECIFIED: _ClassVar[SagaStatus]
    SAGA_STATUS_RUNNING: _ClassVar[SagaStatus]
    SAGA_STATUS_COMPLETED: _ClassVar[SagaStatus]
    SAGA_STATUS_FAILED: _ClassVar[SagaStatus]
    SAGA_STATUS_COMPENSATING: _ClassVar[SagaStatus]
    SAGA_STATUS_COMPENSATED: _ClassVar[SagaStatus]

class SagaStepAction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SAGA_STEP_ACTION_UNSPECIFIED: _ClassVar[SagaStepAction]
    SAGA_STEP_ACTION_EXECUTE: _ClassVar[SagaStepAction]
    SAGA_STEP_ACTION_COMPENSATE: _ClassVar[SagaStepAction]

class SagaStepStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SAGA_STEP_STATUS_UNSPECIFIED: _ClassVar[SagaStepStatus]
    SAGA_STEP_STATUS_SUCCESS: _ClassVar[SagaStepStatus]
    SAGA_STEP_STATUS_FAILED: _ClassVar[SagaStepStatus]
    SAGA_STEP_STATUS_TIMEOUT: _ClassVar[SagaStepStatus]
    SAGA_STEP_STATUS_SKIPPED: _ClassVar[SagaStepStatus]
SAGA_STATUS_UNSPECIFIED: SagaStatus
SAGA_STATUS_RUNNING: SagaStatus
SAGA_STATUS_COMPLETED: SagaStatus
SAGA_STATUS_FAILED: SagaStatus
SAGA_STATUS_COMPENSATING: SagaStatus
SAGA_STATUS_COMPENSATED: SagaStatus
SAGA_STEP_ACTION_UNSPECIFIED: SagaStepAction
SAGA_STEP_ACTION_EXECUTE: SagaStepAction
SAGA_STEP_ACTION_COMPENSATE: SagaStepAction
SAGA_STEP_STATUS_UNSPECIFIED: SagaStepStatus
SAGA_STEP_STATUS_SUCCESS: SagaStepStatus
SAGA_STEP_STATUS_FAILED: SagaStepStatus
SAGA_STEP_STATUS_TIMEOUT: SagaStepStatus
SAGA_STEP_STATUS_SKIPPED: SagaStepStatus

class SagaStateProto(_message.Message):
    __slots__ = ("id", "workflow_name", "current_step", "status", "payload", "correlation_id", "initiated_by", "error_message", "created_at", "updated_at", "status_enum", "trace_id")
    ID_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_NAME_FIELD_NUMBER: _ClassVar[int]
    CURRENT_STEP_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    CORRELATION_ID_FIELD_NUMBER: _ClassVar[int]
    INITIATED_BY_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    STATUS_ENUM_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    workflow_name: str
    current_step: int
    status: str
    payload: bytes
    correlation_id: str
    initiated_by: str
    error_message: str
    created_at: _types_pb2.Timestamp
    updated_at: _types_pb2.Timestamp
    status_enum: SagaStatus
    trace_id: str
    def __init__(self, id: _Optional[str] = ..., workflow_name: _Optional[str] = ..., current_step: _Optional[int] = ..., status: _Optional[str] = ..., payload: _Optional[bytes] = ..., correlation_id: _Optional[str] = ..., initiated_by: _Optional[str] = ..., error_message: _Optional[str] = ..., created_at: _Optional[_Union[_types_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[_types_pb2.Timestamp, _Mapping]] = ..., status_enum: _Optional[_Union[SagaStatus, str]] = ..., trace_id: _Optional[str] = ...) -> None: ...

class SagaStepLogProto(_message.Message):
    __slots__ = ("id", "saga_id", "step_index", "step_name", "action", "status", "request_payload", "response_payload", "error_message", "started_at", "completed_at", "action_enum", "status_enum")
    ID_FIELD_NUMBER: _ClassVar[int]
    SAGA_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_INDEX_FIELD_NUMBER: _ClassVar[int]
    STEP_NAME_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_AT_FIELD_NUMBER: _ClassVar[int]
    ACTION_ENUM_FIELD_NUMBER: _ClassVar[int]
    STATUS_ENUM_FIELD_NUMBER: _ClassVar[int]
    id: str
    saga_id: str
    step_index: int
    step_name: str
    action: str
    status: str
    request_payload: bytes
    response_payload: bytes
    error_message: str
    started_at: _types_pb2.Timestamp
    completed_at: _types_pb2.Timestamp
    action_enum: SagaStepAction
    status_enum: SagaStepStatus
    def __init__(self, id: _Optional[str] = ..., saga_id: _Optional[str] = ..., step_index: _Optional[int] = ..., step_name: _Optional[str] = ..., action: _Optional[str] = ..., status: _Optional[str] = ..., request_payload: _Optional[bytes] = ..., response_payload: _Optional[bytes] = ..., error_message: _Optional[str] = ..., started_at: _Optional[_Union[_types_pb2.Timestamp, _Mapping]] = ..., completed_at: _Optional[_Union[_types_pb2.Timestamp, _Mapping]] = ..., action_enum: _Optional[_Union[SagaStepAction, str]] = ..., status_enum: _Optional[_Union[SagaStepStatus, str]] = ...) -> None: ...

class WorkflowSummary(_message.Message):
    __slots__ = ("name", "step_count", "step_names")
    NAME_FIELD_NUMBER: _ClassVar[int]
    STEP_COUNT_FIELD_NUMBER: _ClassVar[int]
    STEP_NAMES_FIELD_NUMBER: _ClassVar[int]
    name: str
    step_count: int
    step_names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., step_count: _Optional[int] = ..., step_names: _Optional[_Iterable[str]] = ...) -> None: ...

class StartSagaRequest(_message.Message):
    __slots__ = ("workflow_name", "payload", "correlation_id", "initiated_by")
    WORKFLOW_NAME_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    CORRELATION_ID_FIELD_NUMBER: _ClassVar[int]
    INITIATED_BY_FIELD_NUMBER: _ClassVar[int]
    workflow_name: str
    payload: bytes
    correlation_id: str
    initiated_by: str
    def __init__(self, workflow_name: _Optional[str] = ..., payload: _Optional[bytes] = ..., correlation_id: _Optional[str] = ..., initiated_by: _Optional[str] = ...) -> None: ...

class StartSagaResponse(_message.Message):
    __slots__ = ("saga_id", "status")
    SAGA_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    saga_id: str
    status: str
    def __init__(self, saga_id: _Optional[str] = ..., status: _Optional[str] = ...) -> None: ...

class GetSagaRequest(_message.Message):
    __slots__ = ("saga_id",)
    SAGA_ID_FIELD_NUMBER: _ClassVar[int]
    saga_id: str
    def __init__(self, saga_id: _Optional[str] = ...) -> None: ...

class OperatorActionProto(_message.Message):
    __slots__ = ("action", "resume_action", "payload_replaced", "by", "at")
    ACTION_FIELD_NUMBER: _ClassVar[int]
    RESUME_ACTION_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_REPLACED_FIELD_NUMBER: _ClassVar[int]
    BY_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    action: str
    resume_action: str
    payload_replaced: bool
    by: str
    at: _types_pb2.Timestamp
    def __init__(self, action: _Optional[str] = ..., resume_action: _Optional[str] = ..., payload_replaced: _Optional[bool] = ..., by: _Optional[str] = ..., at: _Optional[_Union[_types_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetSagaResponse(_message.Message):
    __slots__ = ("saga", "step_logs", "operator_actions")
    SAGA_FIELD_NUMBER: _ClassVar[int]
    STEP_LOGS_FIELD_NUMBER: _ClassVar[int]
    OPERATOR_ACTIONS_FIELD_NUMBER: _ClassVar[int]
    saga: SagaStateProto
    step_logs: _containers.RepeatedCompositeFieldContainer[SagaStepLogProto]
    operator_actions: _containers.RepeatedCompositeFieldContainer[OperatorActionProto]
    def __init__(self, saga: _Optional[_Union[SagaStateProto, _Mapping]] = ..., step_logs: _Optional[_Iterable[_Union[SagaStepLogProto, _Mapping]]] = ..., operator_actions: _Optional[_Iterable[_Union[OperatorActionProto, _Mapping]]] = ...) -> None: ...

class ListSagasRequest(_message.Message):
    __slots__ = ("pagination", "workflow_name", "status", "correlation_id")
    PAGINATION_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_NAME_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CORRELATION_ID_FIELD_NUMBER: _ClassVar[int]
    pagination: _types_pb2.Pagination
    workflow_name: str
    status: str
    correlation_id: str
    def __init__(self, pagination: _Optional[_Union[_types_pb2.Pagination, _Mapping]] = ..., workflow_name: _Optional[str] = ..., status: _Optional[str] = ..., correlation_id: _Optional[str] = ...) -> None: ...

class ListSagasResponse(_message.Message):
    __slots__ = ("sagas", "pagination")
    SAGAS_FIELD_NUMBER: _ClassVar[int]
    PAGINATION_FIELD_NUMBER: _ClassVar[int]
    sagas: _containers.RepeatedCompositeFieldContainer[SagaStateProto]
    pagination: _types_pb2.PaginationResult
    def __init__(self, sagas: _Optional[_Iterable[_Union[SagaStateProto, _Mapping]]] = ..., pagination: _Optional[_Union[_types_pb2.PaginationResult, _Mapping]] = ...) -> None: ...

class CancelSagaRequest(_message.Message):
    __slots__ = ("saga_id",)
    SAGA_ID_FIELD_NUMBER: _ClassVar[int]
    saga_id: str
    def __init__(self, saga_id: _Optional[str] = ...) -> None: ...

class CancelSagaResponse(_message.Message):
    __slots__ = ("success", "message")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    success: bool
    message: str
    def __init__(self, success: _Optional[bool] = ..., message: _Optional[str] = ...) -> None: ...

class CompensateSagaRequest(_message.Message):
    __slots__ = ("saga_id",)
    SAGA_ID_FIELD_NUMBER: _ClassVar[int]
    saga_id: str
    def __init__(self, saga_id: _Optional[str] = ...) -> None: ...

class CompensateSagaResponse(_message.Message):
    __slots__ = ("success", "status", "message", "saga_id")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    SAGA_ID_FIELD_NUMBER: _ClassVar[int]
    success: bool
    status: str
    message: str
    saga_id: str
    def __init__(self, success: _Optional[bool] = ..., status: _Optional[str] = ..., message: _Optional[str] = ..., saga_id: _Optional[str] = ...) -> None: ...

class RegisterWorkflowRequest(_message.Message):
    __slots__ = ("workflow_yaml",)
    WORKFLOW_YAML_FIELD_NUMBER: _ClassVar[int]
    workflow_yaml: str
    def __init__(self, workflow_yaml: _Optional[str] = ...) -> None: ...

class RegisterWorkflowResponse(_message.Message):
    __slots__ = ("name", "step_count")
    NAME_FIELD_NUMBER: _ClassVar[int]
    STEP_COUNT_FIELD_NUMBER: _ClassVar[int]
    name: str
    step_count: int
    def __init__(self, name: _Optional[str] = ..., step_count: _Optional[int] = ...) -> None: ...

class ListWorkflowsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListWorkflowsResponse(_message.Message):
    __slots__ = ("workflows",)
    WORKFLOWS_FIELD_NUMBER: _ClassVar[int]
    workflows: _containers.RepeatedCompositeFieldContainer[WorkflowSummary]
    def __init__(self, workflows: _Optional[_Iterable[_Union[WorkflowSummary, _Mapping]]] = ...) -> None: ...

class PauseSagaRequest(_message.Message):
    __slots__ = ("saga_id",)
    SAGA_ID_FIELD_NUMBER: _ClassVar[int]
    saga_id: str
    def __init__(self, saga_id: _Optional[str] = ...) -> None: ...

class PauseSagaResponse(_message.Message):
    __slots__ = ("success", "message")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    success: bool
    message: str
    def __init__(self, success: _Optional[bool] = ..., message: _Optional[str] = ...) -> None: ...

class ResumeSagaRequest(_message.Message):
    __slots__ = ("saga_id", "action", "payload")
    SAGA_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    saga_id: str
    action: str
    payload: bytes
    def __init__(self, saga_id: _Optional[str] = ..., action: _Optional[str] = ..., payload: _Optional[bytes] = ...) -> None: ...

class ResumeSagaResponse(_message.Message):
    __slots__ = ("success", "status", "message")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    success: bool
    status: str
    message: str
    def __init__(self, success: _Optional[bool] = ..., status: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...
