"""A real OTLP trace receiver for tests: a gRPC server on 127.0.0.1 implementing the OTLP
`TraceService` from opentelemetry-proto's generated code, keeping every span it is sent."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from typing import Any

import grpc
from attrs import frozen
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from tests.harness import wait_until


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    return None if kind is None else getattr(value, kind)


@frozen
class ReceivedSpan:
    """One span as the receiver got it, ids as lower-case hex ("" for no parent)."""

    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: int
    attributes: dict[str, Any]
    status_code: int  # 0 unset, 1 ok, 2 error (OTLP)
    start_ns: int
    end_ns: int
    service_name: str


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.spans: list[ReceivedSpan] = []

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        got = []
        for resource_spans in request.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    got.append(
                        ReceivedSpan(
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_span_id=span.parent_span_id.hex(),
                            name=span.name,
                            kind=span.kind,
                            attributes={a.key: _value(a.value) for a in span.attributes},
                            status_code=span.status.code,
                            start_ns=span.start_time_unix_nano,
                            end_ns=span.end_time_unix_nano,
                            service_name=str(resource.get("service.name", "")),
                        )
                    )
        with self.lock:
            self.spans.extend(got)
        return trace_service_pb2.ExportTraceServiceResponse()


class OtlpReceiver:
    """What an OTLP/gRPC collector at `endpoint` was sent."""

    def __init__(self, service: _TraceService, port: int) -> None:
        self._service = service
        self.port = port
        self.endpoint = f"http://127.0.0.1:{port}"

    def spans(self, trace_id: str | None = None) -> list[ReceivedSpan]:
        with self._service.lock:
            found = list(self._service.spans)
        return [s for s in found if trace_id is None or s.trace_id == trace_id]

    def wait_for(
        self, trace_id: str, name_prefix: str, count: int = 1, timeout: float = 20
    ) -> list[ReceivedSpan]:
        """The spans of `trace_id` named `name_prefix...`, once at least `count` arrived."""

        def enough() -> list[ReceivedSpan] | None:
            found = [s for s in self.spans(trace_id) if s.name.startswith(name_prefix)]
            return found if len(found) >= count else None

        found: list[ReceivedSpan] = wait_until(
            enough, timeout, interval=0.1, what=f"{count} span(s) {name_prefix!r} of {trace_id}"
        )
        return found


@contextmanager
def otlp_receiver() -> Iterator[OtlpReceiver]:
    """An OTLP trace receiver listening on 127.0.0.1 (a free port) until the block ends."""
    service = _TraceService()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield OtlpReceiver(service, port)
    finally:
        server.stop(grace=None)
