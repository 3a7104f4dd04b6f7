"""Shared fixtures for Tandem's Python tests.

Environment:
  TANDEM_BUILD_DIR  CMake build folder (default <repo>/build); binaries are in <build>/bin
  TANDEM_MODEL_DIR  converted default model (default <repo>/models/SmolLM2-135M-Instruct)
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def build_dir_path() -> Path:
    return Path(os.environ.get("TANDEM_BUILD_DIR", REPO / "build")).resolve()


def model_dir_path() -> Path:
    return Path(os.environ.get("TANDEM_MODEL_DIR",
                               REPO / "models" / "SmolLM2-135M-Instruct")).resolve()


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def build_dir() -> Path:
    return build_dir_path()


@pytest.fixture(scope="session")
def model_dir() -> Path:
    d = model_dir_path()
    if not (d / "config.json").exists():
        pytest.fail(f"model folder {d} is missing; run tools/setup.sh "
                    f"(or python tools/gguf_to_hf.py --out {d})")
    return d


def tandem_binary(name: str) -> Path:
    """Path of <build>/bin/<name>; fails the test with a clear message if it is not built."""
    p = build_dir_path() / "bin" / name
    if not p.exists():
        pytest.fail(f"{p} is not built (TANDEM_BUILD_DIR={build_dir_path()})")
    return p


@pytest.fixture(scope="session")
def probe_bin() -> Path:
    return tandem_binary("tandem-probe")


def run_probe(model: Path | str, prompts, forced, *, chunk: int | None = None,
              batch_mode: str | None = None, workdir: Path, tag: str = "run",
              timeout: float = 3000.0, weights: str = "f32"):
    """Runs tandem-probe (teacher-forced scoring) and returns the parsed `results` list.

    prompts: list of token-id lists; forced: list of token-id lists (same length as prompts).
    """
    probe = tandem_binary("tandem-probe")
    workdir.mkdir(parents=True, exist_ok=True)
    inp = workdir / f"{tag}.in.json"
    out = workdir / f"{tag}.out.json"
    inp.write_text(json.dumps({"prompts": [list(map(int, p)) for p in prompts],
                               "forced": [list(map(int, f)) for f in forced]}))
    if out.exists():
        out.unlink()
    cmd = [str(probe), "--model", str(model), "--input", str(inp), "--output", str(out)]
    if chunk is not None:
        cmd += ["--chunk", str(chunk)]
    if batch_mode is not None:
        cmd += ["--batch-mode", batch_mode]
    cmd += ["--weights", weights]
    try:
        cp = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"tandem-probe timed out after {timeout}s: {' '.join(cmd)}")
    if cp.returncode != 0:
        tail = (cp.stdout + cp.stderr)[-4000:]
        pytest.fail(f"tandem-probe failed (rc={cp.returncode}): {' '.join(cmd)}\n{tail}")
    data = json.loads(out.read_text())
    results = data.get("results")
    assert isinstance(results, list) and len(results) == len(prompts), \
        f"{tag}: probe returned {len(results) if isinstance(results, list) else results!r} " \
        f"results for {len(prompts)} prompts"
    for i, (r, f) in enumerate(zip(results, forced)):
        assert len(r["argmax"]) == len(f), \
            f"{tag}: prompt {i}: {len(r['argmax'])} argmax entries for {len(f)} forced tokens"
    return results


def import_hf():
    """Imports torch + transformers and works around Debian's torch 1.13 on Python 3.11, where
    `import torch.distributed.fsdp` raises (dataclass mutable default) and transformers'
    generate() imports it to ask whether the model is FSDP-managed. Returns (torch, transformers)."""
    import torch
    import transformers
    try:
        import torch.distributed.fsdp  # noqa: F401
    except Exception:
        import transformers.generation.utils as gen_utils
        gen_utils.is_fsdp_managed_module = lambda module: False
    transformers.logging.set_verbosity_error()
    return torch, transformers
