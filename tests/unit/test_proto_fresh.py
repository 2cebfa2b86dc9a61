"""The committed generated protobuf code matches the .proto files and the wire contract (SPEC §5)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
GEN = REPO / "saga_grpc" / "gen"
SCRIPT = REPO / "scripts" / "gen_protos.sh"


def _files(root: Path) -> dict[str, bytes]:
    return {
        path.relative_to(root).as_posix(): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts
    }


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    """Regenerating with scripts/gen_protos.sh gives byte-identical files to saga_grpc/gen."""
    pytest.importorskip("grpc_tools")
    subprocess.run(
        ["bash", str(SCRIPT), str(tmp_path)],
        check=True,
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
    )
    fresh, committed = _files(tmp_path), _files(GEN)
    assert sorted(fresh) == sorted(committed), (
        "generated file set differs; run scripts/gen_protos.sh"
    )
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"stale generated files {stale}; run scripts/gen_protos.sh"


def test_generated_code_imports_as_a_package() -> None:
    """The generated modules import under saga_grpc.gen and expose the SagaService RPCs."""
    from saga_grpc.gen.k1s0.system.saga.v1 import saga_pb2, saga_pb2_grpc

    service = saga_pb2.DESCRIPTOR.services_by_name["SagaService"]
    assert saga_pb2.DESCRIPTOR.package == "k1s0.system.saga.v1"
    assert [m.name for m in service.methods] == [
        "StartSaga",
        "GetSaga",
        "ListSagas",
        "CancelSaga",
        "CompensateSaga",
        "RegisterWorkflow",
        "ListWorkflows",
        "PauseSaga",
        "ResumeSaga",
    ]
    assert hasattr(saga_pb2_grpc, "SagaServiceStub")
    assert hasattr(saga_pb2_grpc, "add_SagaServiceServicer_to_server")


# message -> [(field, number, type, repeated)], copied from SPEC §5.
_CONTRACT: dict[str, list[tuple[str, int, str, bool]]] = {
    "k1s0.system.common.v1.Pagination": [
        ("page", 1, "int32", False),
        ("page_size", 2, "int32", False),
    ],
    "k1s0.system.common.v1.PaginationResult": [
        ("total_count", 1, "int32", False),
        ("page", 2, "int32", False),
        ("page_size", 3, "int32", False),
        ("has_next", 4, "bool", False),
    ],
    "k1s0.system.common.v1.Timestamp": [
        ("seconds", 1, "int64", False),
        ("nanos", 2, "int32", False),
    ],
    "k1s0.system.saga.v1.SagaStateProto": [
        ("id", 1, "string", False),
        ("workflow_name", 2, "string", False),
        ("current_step", 3, "int32", False),
        ("status", 4, "string", False),
        ("payload", 5, "bytes", False),
        ("correlation_id", 6, "string", False),
        ("initiated_by", 7, "string", False),
        ("error_message", 8, "string", False),
        ("created_at", 9, ".k1s0.system.common.v1.Timestamp", False),
        ("updated_at", 10, ".k1s0.system.common.v1.Timestamp", False),
        ("status_enum", 11, ".k1s0.system.saga.v1.SagaStatus", False),
        ("trace_id", 12, "string", False),  # SPEC §12, beyond the k1s0 protos
    ],
    "k1s0.system.saga.v1.SagaStepLogProto": [
        ("id", 1, "string", False),
        ("saga_id", 2, "string", False),
        ("step_index", 3, "int32", False),
        ("step_name", 4, "string", False),
        ("action", 5, "string", False),
        ("status", 6, "string", False),
        ("request_payload", 7, "bytes", False),
        ("response_payload", 8, "bytes", False),
        ("error_message", 9, "string", False),
        ("started_at", 10, ".k1s0.system.common.v1.Timestamp", False),
        ("completed_at", 11, ".k1s0.system.common.v1.Timestamp", False),
        ("action_enum", 12, ".k1s0.system.saga.v1.SagaStepAction", False),
        ("status_enum", 13, ".k1s0.system.saga.v1.SagaStepStatus", False),
    ],
    "k1s0.system.saga.v1.WorkflowSummary": [
        ("name", 1, "string", False),
        ("step_count", 2, "int32", False),
        ("step_names", 3, "string", True),
    ],
    "k1s0.system.saga.v1.StartSagaRequest": [
        ("workflow_name", 1, "string", False),
        ("payload", 2, "bytes", False),
        ("correlation_id", 3, "string", False),
        ("initiated_by", 4, "string", False),
    ],
    "k1s0.system.saga.v1.StartSagaResponse": [
        ("saga_id", 1, "string", False),
        ("status", 2, "string", False),
    ],
    "k1s0.system.saga.v1.GetSagaRequest": [("saga_id", 1, "string", False)],
    "k1s0.system.saga.v1.OperatorActionProto": [
        ("action", 1, "string", False),
        ("resume_action", 2, "string", False),
        ("payload_replaced", 3, "bool", False),
        ("by", 4, "string", False),
        ("at", 5, ".k1s0.system.common.v1.Timestamp", False),
    ],
    "k1s0.system.saga.v1.GetSagaResponse": [
        ("saga", 1, ".k1s0.system.saga.v1.SagaStateProto", False),
        ("step_logs", 2, ".k1s0.system.saga.v1.SagaStepLogProto", True),
        ("operator_actions", 3, ".k1s0.system.saga.v1.OperatorActionProto", True),
    ],
    "k1s0.system.saga.v1.ListSagasRequest": [
        ("pagination", 1, ".k1s0.system.common.v1.Pagination", False),
        ("workflow_name", 2, "string", False),
        ("status", 3, "string", False),
        ("correlation_id", 4, "string", False),
    ],
    "k1s0.system.saga.v1.ListSagasResponse": [
        ("sagas", 1, ".k1s0.system.saga.v1.SagaStateProto", True),
        ("pagination", 2, ".k1s0.system.common.v1.PaginationResult", False),
    ],
    "k1s0.system.saga.v1.CancelSagaRequest": [("saga_id", 1, "string", False)],
    "k1s0.system.saga.v1.CancelSagaResponse": [
        ("success", 1, "bool", False),
        ("message", 2, "string", False),
    ],
    "k1s0.system.saga.v1.CompensateSagaRequest": [("saga_id", 1, "string", False)],
    "k1s0.system.saga.v1.CompensateSagaResponse": [
        ("success", 1, "bool", False),
        ("status", 2, "string", False),
        ("message", 3, "string", False),
        ("saga_id", 4, "string", False),
    ],
    "k1s0.system.saga.v1.RegisterWorkflowRequest": [("workflow_yaml", 1, "string", False)],
    "k1s0.system.saga.v1.RegisterWorkflowResponse": [
        ("name", 1, "string", False),
        ("step_count", 2, "int32", False),
    ],
    "k1s0.system.saga.v1.ListWorkflowsRequest": [],
    "k1s0.system.saga.v1.ListWorkflowsResponse": [
        ("workflows", 1, ".k1s0.system.saga.v1.WorkflowSummary", True),
    ],
    "k1s0.system.saga.v1.PauseSagaRequest": [("saga_id", 1, "string", False)],
    "k1s0.system.saga.v1.PauseSagaResponse": [
        ("success", 1, "bool", False),
        ("message", 2, "string", False),
    ],
    "k1s0.system.saga.v1.ResumeSagaRequest": [
        ("saga_id", 1, "string", False),
        ("action", 2, "string", False),
        ("payload", 3, "bytes", False),
    ],
    "k1s0.system.saga.v1.ResumeSagaResponse": [
        ("success", 1, "bool", False),
        ("status", 2, "string", False),
        ("message", 3, "string", False),
    ],
}


def test_field_numbers_match_the_contract() -> None:
    """Every message in the generated code has exactly the fields, numbers and types of SPEC §5."""
    from google.protobuf import descriptor_pb2

    from saga_grpc.gen.k1s0.system.common.v1 import types_pb2
    from saga_grpc.gen.k1s0.system.saga.v1 import saga_pb2

    type_names = {
        number: name.removeprefix("TYPE_").lower()
        for name, number in descriptor_pb2.FieldDescriptorProto.Type.items()
    }
    seen: dict[str, list[tuple[str, int, str, bool]]] = {}
    for file_descriptor in (types_pb2.DESCRIPTOR, saga_pb2.DESCRIPTOR):
        proto = descriptor_pb2.FileDescriptorProto()
        file_descriptor.CopyToProto(proto)
        for message in proto.message_type:
            seen[f"{proto.package}.{message.name}"] = [
                (
                    field.name,
                    field.number,
                    field.type_name or type_names[field.type],
                    field.label == descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED,
                )
                for field in message.field
            ]
    assert seen == _CONTRACT


# enum -> {name: number}, from SPEC §5 (the later k1s0 proto's values).
_ENUMS: dict[str, dict[str, int]] = {
    "SagaStatus": {
        "SAGA_STATUS_UNSPECIFIED": 0,
        "SAGA_STATUS_RUNNING": 1,
        "SAGA_STATUS_COMPLETED": 2,
        "SAGA_STATUS_FAILED": 3,
        "SAGA_STATUS_COMPENSATING": 4,
        "SAGA_STATUS_COMPENSATED": 5,
    },
    "SagaStepAction": {
        "SAGA_STEP_ACTION_UNSPECIFIED": 0,
        "SAGA_STEP_ACTION_EXECUTE": 1,
        "SAGA_STEP_ACTION_COMPENSATE": 2,
    },
    "SagaStepStatus": {
        "SAGA_STEP_STATUS_UNSPECIFIED": 0,
        "SAGA_STEP_STATUS_SUCCESS": 1,
        "SAGA_STEP_STATUS_FAILED": 2,
        "SAGA_STEP_STATUS_TIMEOUT": 3,
        "SAGA_STEP_STATUS_SKIPPED": 4,
    },
}


def test_enum_values_match_the_contract() -> None:
    """The status and action enums have exactly the numbers of SPEC §5."""
    from saga_grpc.gen.k1s0.system.saga.v1 import saga_pb2

    seen = {
        name: {v.name: v.number for v in enum.values}
        for name, enum in saga_pb2.DESCRIPTOR.enum_types_by_name.items()
    }
    assert seen == _ENUMS
