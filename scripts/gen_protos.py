"""Regenerate the Python code of proto/agentbudget/v1 (committed; checked for drift by a test).

Pinned generators: the output depends on them, so a different version is refused.
Usage: python scripts/gen_protos.py [--check]
"""

from __future__ import annotations

import argparse
import filecmp
import importlib.metadata
import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path

PINS = {"grpcio-tools": "1.85.1", "mypy-protobuf": "5.1.0"}
ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
PROTO_DIR = PROTO_ROOT / "agentbudget" / "v1"
SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")


def check_pins() -> None:
    for name, want in PINS.items():
        have = importlib.metadata.version(name)
        if have != want:
            sys.exit(f"gen_protos: {name} {have} installed, {want} pinned")


def include_dirs() -> list[str]:
    import grpc_tools

    wkt = Path(grpc_tools.__file__).parent / "_proto"
    common = Path(importlib.util.find_spec("google.type").submodule_search_locations[0]).parent.parent  # type: ignore[union-attr,index]
    return [str(PROTO_ROOT), str(wkt), str(common)]


def generate(out: Path) -> list[Path]:
    protos = sorted(PROTO_DIR.glob("*.proto"))
    args = ["grpc_tools.protoc", *[f"-I{d}" for d in include_dirs()]]
    args += [f"--python_out={out}", f"--grpc_python_out={out}", f"--mypy_out={out}", f"--mypy_grpc_out={out}"]
    args += [str(p.relative_to(PROTO_ROOT)) for p in protos]
    from grpc_tools import protoc

    # protoc finds the mypy-protobuf plugins on PATH, next to this interpreter.
    os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")
    if protoc.main(args) != 0:
        sys.exit("gen_protos: protoc failed")
    return sorted(p for p in (out / "agentbudget" / "v1").iterdir() if p.name.endswith(SUFFIXES))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--check", action="store_true", help="fail if the committed code differs")
    opts = parser.parse_args()
    check_pins()
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        stale = [
            p.name
            for p in fresh
            if not (PROTO_DIR / p.name).exists() or not filecmp.cmp(p, PROTO_DIR / p.name, shallow=False)
        ]
        if opts.check:
            if stale:
                print("gen_protos: out of date: " + ", ".join(stale), file=sys.stderr)
                return 1
            return 0
        for p in fresh:
            shutil.copyfile(p, PROTO_DIR / p.name)
        print("gen_protos: wrote " + ", ".join(p.name for p in fresh))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
