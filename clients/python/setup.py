"""Build hooks for tandem-client: the gRPC stubs are generated from the repository's proto.

`proto/tandem/v1/generate.proto` lives at the repository root, outside this package folder. The
build looks for it, in order, in

1. ``$TANDEM_PROTO_DIR`` (a folder holding ``tandem/v1/generate.proto``),
2. ``<this folder>/proto`` (where an sdist carries its copy),
3. ``<this folder>/../../proto`` (a checkout of the repository),

runs grpc_tools.protoc on it and writes ``tandem_client/_proto/generate_pb2{,_grpc}.py{,i}`` into
the build (or, for an editable install, into the source folder, where git ignores them).
Everything else is declared in pyproject.toml.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

HERE = Path(__file__).resolve().parent
PROTO_FILE = "tandem/v1/generate.proto"
OUT_PACKAGE = Path("tandem_client") / "_proto"


def find_proto_root() -> Path:
    """The folder holding tandem/v1/generate.proto; raises with every place it looked."""
    candidates = []
    if os.environ.get("TANDEM_PROTO_DIR"):
        candidates.append(Path(os.environ["TANDEM_PROTO_DIR"]))
    candidates += [HERE / "proto", HERE.parent.parent / "proto"]
    for root in candidates:
        if (root / PROTO_FILE).is_file():
            return root.resolve()
    looked = ", ".join(str(c / PROTO_FILE) for c in candidates)
    raise RuntimeError(
        f"tandem-client: cannot find {PROTO_FILE} (looked at {looked}). Install from a checkout "
        "of the Tandem repository (pip install ./clients/python) or set TANDEM_PROTO_DIR to the "
        "folder that holds tandem/v1/generate.proto.")


def generate_stubs(out_dir: Path) -> list[Path]:
    """Runs protoc on generate.proto and writes the modules into out_dir; returns their paths.

    protoc names modules after the proto's path (tandem/v1/generate_pb2.py) and the gRPC module
    imports `from tandem.v1 import generate_pb2`; the files are moved into tandem_client._proto
    and that import is made relative, so the SDK installs no top-level `tandem` package while
    the descriptor keeps its canonical file name tandem/v1/generate.proto.
    """
    import grpc_tools
    from grpc_tools import protoc

    proto_root = find_proto_root()
    well_known = Path(grpc_tools.__file__).resolve().parent / "_proto"
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tandem-client-protoc-") as tmp:
        rc = protoc.main([
            "grpc_tools.protoc", f"-I{proto_root}", f"-I{well_known}", f"--python_out={tmp}",
            f"--pyi_out={tmp}", f"--grpc_python_out={tmp}", str(proto_root / PROTO_FILE)])
        if rc != 0:
            raise RuntimeError(f"tandem-client: protoc failed ({rc}) on {proto_root / PROTO_FILE}")
        generated = Path(tmp) / "tandem" / "v1"
        written = []
        for name in ("generate_pb2.py", "generate_pb2.pyi", "generate_pb2_grpc.py"):
            text = (generated / name).read_text()
            if name == "generate_pb2_grpc.py":
                text, n = re.subn(r"^from tandem\.v1 import generate_pb2 as",
                                  "from . import generate_pb2 as", text, flags=re.M)
                if n != 1:
                    raise RuntimeError("tandem-client: unexpected import layout in protoc's "
                                       "generate_pb2_grpc.py; update setup.py")
            (out_dir / name).write_text(text)
            written.append(out_dir / name)
    return written


class BuildPyWithStubs(build_py):
    """build_py that also generates the gRPC stubs (in the source tree for editable installs)."""

    def run(self) -> None:
        if not self.editable_mode:
            # In-tree builds reuse build/lib: drop what an older build left (removed modules).
            shutil.rmtree(Path(self.build_lib) / "tandem_client", ignore_errors=True)
        super().run()
        target = HERE if self.editable_mode else Path(self.build_lib)
        self._stubs = generate_stubs(target / OUT_PACKAGE)

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        outputs = list(super().get_outputs(include_bytecode))
        if not self.editable_mode:
            outputs += [str(Path(self.build_lib) / OUT_PACKAGE / n)
                        for n in ("generate_pb2.py", "generate_pb2.pyi", "generate_pb2_grpc.py")]
        return outputs


class SdistWithProto(sdist):
    """sdist that carries a copy of generate.proto, so the sdist builds outside the repository."""

    def make_release_tree(self, base_dir: str, files: list[str]) -> None:
        super().make_release_tree(base_dir, files)
        dest = Path(base_dir) / "proto" / PROTO_FILE
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(find_proto_root() / PROTO_FILE, dest)


setup(cmdclass={"build_py": BuildPyWithStubs, "sdist": SdistWithProto})
