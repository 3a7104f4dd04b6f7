"""The CUDA backend from the command line, as a user runs it.

Without a GPU, `--device cuda` fails with an error naming the missing device (no crash). The
interpreter flavour of the binaries (<build>/bin/interp: the same CUDA kernel sources compiled
for the CPU interpreter in kernels/interp) gives the CPU backend's greedy text on the default
model, in one process and through a 1x1 cluster (`tandem serve` with both workers on
`--device cuda`, KV pages moved over TCP).
"""
import shutil
import subprocess

import pytest

from conftest import build_dir_path, tandem_binary
from serve_util import WAIT_TIMEOUT_S, Serve

PROMPT = "The capital of France is"
TOKENS = "6"
FLAGS = ["--weights", "f32", "--max-tokens", TOKENS, "--threads", "1", "--log-level", "warn"]


def interp_binary(name: str):
    p = build_dir_path() / "bin" / "interp" / name
    if not p.exists():
        pytest.fail(f"{p} is not built: configure with the CUDA toolkit's headers present "
                    f"(TANDEM_CUDA_INTERP=ON)")
    return p


def has_gpu() -> bool:
    smi = shutil.which("nvidia-smi")
    return smi is not None and subprocess.run([smi, "-L"], capture_output=True).returncode == 0


def generate(binary, model_dir, *args):
    cmd = [str(binary), "generate", "--model", str(model_dir), *args, PROMPT]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=1800)


def cpu_text(model_dir) -> str:
    proc = generate(tandem_binary("tandem"), model_dir, "--device", "cpu", *FLAGS)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip()
    return proc.stdout


def test_device_cuda_without_a_gpu_names_the_missing_device(model_dir):
    if has_gpu():
        pytest.skip("a GPU is present here: the no-device error cannot happen")
    proc = generate(tandem_binary("tandem"), model_dir, "--device", "cuda", *FLAGS)
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    assert "no usable CUDA device" in proc.stderr, proc.stderr
    assert proc.stdout == ""


def test_interpreter_generate_gives_the_cpu_text(model_dir):
    proc = generate(interp_binary("tandem"), model_dir, "--device", "cuda", "--deterministic",
                    *FLAGS)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == cpu_text(model_dir)


def test_interpreter_one_by_one_cluster_gives_the_cpu_text(model_dir, tmp_path):
    import tandem_client as tc

    want = cpu_text(model_dir)
    serve = Serve(model_dir, tmp_path / "logs", "--prefill", "1", "--decode", "1", "--device",
                  "cuda", "--deterministic", "--weights", "f32", "--port", "0",
                  binary=interp_binary("tandem"))
    try:
        serve.wait_for_router()
        with tc.Client(serve.address, timeout=WAIT_TIMEOUT_S) as c:
            final = c.generate(PROMPT, max_tokens=int(TOKENS), temperature=0.0)
        assert final.text + "\n" == want, (final.text, want)
    finally:
        serve.stop()
    log = serve.stderr_path.read_text(errors="replace")
    assert "cuda-interp" in log, "the workers should register with their CUDA device"
