#!/bin/sh
# Regenerate protobuf + grpclib code for the tote agent and the containerd API subset.
# Needs grpcio-tools (protoc) and grpclib (protoc-gen-grpclib_python). Output is committed.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out="$here/../plugins/tote_containerd/_gen"
wkt=$(python -c 'import grpc_tools, os; print(os.path.join(os.path.dirname(grpc_tools.__file__), "_proto"))')
rm -rf "$out"
mkdir -p "$out"
cd "$here"
protos=$(find containerd runtime tote -name '*.proto' | sort)
python -m grpc_tools.protoc -I . -I "$wkt" \
  --python_out="$out" --pyi_out="$out" --grpclib_python_out="$out" $protos
# Generated modules refer to each other by proto package path; make those module paths
# package-absolute under tote_containerd._gen (gRPC method paths like '/containerd.…' stay).
python - "$out" <<'PY'
import pathlib, re, sys
pat = re.compile(r"(?<![/\w.])(containerd|runtime|tote)\.((?:\w+\.)*\w+_pb2)\b")
for f in pathlib.Path(sys.argv[1]).rglob("*.py*"):
    text = f.read_text()
    text = re.sub(r"(?m)^from (containerd|runtime|tote)\.", r"from tote_containerd._gen.\1.", text)
    f.write_text(pat.sub(r"tote_containerd._gen.\1.\2", text))
PY
# Package markers.
find "$out" -type d -exec sh -c 'touch "$1/__init__.py"' _ {} \;
