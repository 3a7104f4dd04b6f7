"""Simulated compute end to end: `tandem serve --simulate-compute` (router + 1 prefill + 2 decode
workers whose forward pass is the checked-in timing profile) serves concurrent requests; every
stream runs to max_tokens and matches `tandem generate --simulate-compute` in one process token
for token (the simulated tokens hash the sequence's KV bytes, so this also checks that the KV
pages crossed the transport intact); KV bytes moved and every page comes back. No timing is
asserted.
"""
from __future__ import annotations

import subprocess
import threading
from pathlib import Path
from typing import List

import tandem_client as tc
from conftest import tandem_binary
from serve_util import Serve

REPO = Path(__file__).resolve().parents[2]
PROFILE = REPO / "bench" / "profiles" / "smollm2-135m-cpu-2core.json"
PROMPTS = ["Once upon a time", "The capital of France is", "def fib(n):",
           "Tell me a story about a lighthouse keeper who", "1, 2, 3,", "Hello"]
MAX_TOKENS = 20
SEED = 11


def single_process_text(model_dir: Path, prompt: str) -> str:
    cmd = [str(tandem_binary("tandem")), "generate", "--model", str(model_dir),
           "--simulate-compute", str(PROFILE), "--log-level", "warn", "--max-tokens",
           str(MAX_TOKENS), "--seed", str(SEED), prompt]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout[:-1] if proc.stdout.endswith("\n") else proc.stdout


def test_simulated_cluster_serves_token_exact_and_frees_pages(model_dir, tmp_path):
    serve = Serve(model_dir, tmp_path, "--simulate-compute", str(PROFILE), "--prefill", "1",
                  "--decode", "2", "--kv-cache-mb", "64")
    try:
        address = serve.wait_for_router()
        results: List[tc.Completion] = [None] * len(PROMPTS)  # type: ignore[list-item]
        errors: List[BaseException] = []

        def run(i: int) -> None:
            try:
                with tc.Client(address, timeout=300) as c:
                    results[i] = c.generate(PROMPTS[i], max_tokens=MAX_TOKENS, seed=SEED)
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(PROMPTS))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=600)
        assert not errors, errors
        for prompt, got in zip(PROMPTS, results):
            assert len(got.token_ids) == MAX_TOKENS, prompt
            assert got.text == single_process_text(model_dir, prompt), prompt
        assert len({r.decode_worker for r in results}) == 2, "both decode workers served"
        assert serve.metric("prefill", "tandem_kv_transfer_bytes_sum") > 0
        assert serve.wait_metric("decode", "tandem_kv_pages_used", 0) == 0
        assert serve.wait_metric("prefill", "tandem_kv_pages_used", 0) == 0
        err = serve.stderr_path.read_text(errors="replace")
        assert "simulated compute" in err, "workers did not load the simulated backend"
    finally:
        serve.stop()
    assert serve.proc.returncode == 0, serve.stderr_tail()
