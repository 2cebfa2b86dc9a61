#!/usr/bin/env bash
# Regenerate the Python code for the saga gRPC API from saga_grpc/protos.
#
# Usage: scripts/gen_protos.sh [OUT_DIR]     (default OUT_DIR: saga_grpc/gen)
#        PYTHON=/path/to/python scripts/gen_protos.sh
#
# The output is deterministic for a given grpcio-tools version: tests/unit/test_proto_fresh.py
# runs this script into a temporary directory and compares it byte for byte with the
# committed saga_grpc/gen. Never edit saga_grpc/gen by hand; change the .proto and rerun.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
OUT="${1:-$ROOT/saga_grpc/gen}"
PROTOS="$ROOT/saga_grpc/protos"

mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
rm -rf "$OUT/k1s0"

# Sorted paths keep the output independent of the file system's listing order.
mapfile -t FILES < <(find "$PROTOS/k1s0" -name '*.proto' | LC_ALL=C sort)
"$PYTHON" -m grpc_tools.protoc -I "$PROTOS" \
    --python_out="$OUT" --pyi_out="$OUT" --grpc_python_out="$OUT" \
    "${FILES[@]}"

# protoc writes imports relative to the proto root ("from k1s0.system... import x_pb2");
# rewrite them so the generated modules import as the saga_grpc.gen package.
find "$OUT/k1s0" \( -name '*.py' -o -name '*.pyi' \) -print0 | LC_ALL=C sort -z \
    | xargs -0 sed -i -E \
        -e 's/^from k1s0\./from saga_grpc.gen.k1s0./' \
        -e 's/^import k1s0\./import saga_grpc.gen.k1s0./'

# Every directory is a regular package.
find "$OUT/k1s0" -type d -print0 | while IFS= read -r -d '' dir; do
    : > "$dir/__init__.py"
done
printf '"""Generated protobuf and gRPC code; regenerate with scripts/gen_protos.sh, never edit by hand."""\n' \
    > "$OUT/__init__.py"
