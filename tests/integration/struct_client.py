"""A client of the later k1s0 saga proto (Struct payloads), run as its own program so its
generated code never meets the server's in one descriptor pool.

Usage: python struct_client.py GENERATED_DIR HOST:PORT

Reads one JSON object per line on stdin, `{"rpc": "GetSaga", "request": {...}}` (the request
in protobuf's JSON mapping), calls the RPC, and writes one line per call:
`{"ok": <response in protobuf's JSON mapping, field names as in the proto>}` or
`{"error": {"code": "INVALID_ARGUMENT", "details": "..."}}`. Ends at the end of stdin.
"""

from __future__ import annotations

import json
import sys


def main() -> int:
    generated, address = sys.argv[1], sys.argv[2]
    sys.path.insert(0, generated)
    import grpc
    from google.protobuf import json_format
    from k1s0.system.saga.v1 import saga_pb2, saga_pb2_grpc  # type: ignore[import-not-found]

    service = saga_pb2.DESCRIPTOR.services_by_name["SagaService"]
    with grpc.insecure_channel(address) as channel:
        stub = saga_pb2_grpc.SagaServiceStub(channel)
        for line in sys.stdin:
            command = json.loads(line)
            method = service.methods_by_name[command["rpc"]]
            request_type = getattr(saga_pb2, method.input_type.name)
            request = json_format.ParseDict(command.get("request", {}), request_type())
            try:
                response = getattr(stub, command["rpc"])(request, timeout=10)
            except grpc.RpcError as exc:
                answer = {"error": {"code": exc.code().name, "details": exc.details()}}
            else:
                answer = {
                    "ok": json_format.MessageToDict(
                        response,
                        preserving_proto_field_name=True,
                        always_print_fields_with_no_presence=True,
                    )
                }
            print(json.dumps(answer), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
