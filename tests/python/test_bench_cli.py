"""`tandem bench` as a user runs it: against a real `tandem serve` over gRPC and HTTP, and the
in-process engine; its JSON is checked against the workload it was given, and
bench/plot_serving.py turns it into tables and plots."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO, tandem_binary
from serve_util import Serve


def bench(model_dir, out, *args):
    cmd = [str(tandem_binary("tandem")), "bench", "--model", str(model_dir), "--warmup", "1",
           "--json", str(out), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ttft" in proc.stdout and "throughput" in proc.stdout
    return json.loads(out.read_text())


def check_synthetic(run, n, input_len, output_len):
    assert run["num_requests"] == n and run["completed"] == n and run["failed"] == 0
    assert run["total_input_tokens"] == n * input_len
    assert run["total_output_tokens"] == n * output_len  # synthetic requests ignore EOS
    assert run["output_throughput"] > 0
    for q in run["requests"]:
        assert q["ok"] and q["prompt_tokens"] == input_len and q["output_tokens"] == output_len
        assert 0 < q["ttft_ms"] <= q["e2e_ms"]
        assert len(q["itl_ms"]) == output_len - 1
    for k in ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms"):
        s = run[k]
        assert 0 < s["p50"] <= s["p90"] <= s["p99"], (k, s)


@pytest.mark.timeout(1200)
def test_bench_measures_serve_over_grpc_and_http_and_the_engine(model_dir, tmp_path):
    s = Serve(model_dir, tmp_path / "serve")
    try:
        s.wait_for_router()
        grpc_json = bench(model_dir, tmp_path / "grpc.json", "--target", f"grpc://{s.address}",
                          "--num-requests", "4", "--input-len", "24", "--output-len", "6",
                          "--concurrency", "1,2")
        assert [r["concurrency"] for r in grpc_json["runs"]] == [1, 2]
        for run in grpc_json["runs"]:
            check_synthetic(run, 4, 24, 6)

        http_json = bench(model_dir, tmp_path / "http.json", "--target", s.http,
                          "--num-requests", "4", "--input-len", "24", "--output-len", "6",
                          "--request-rate", "4,8", "--ttft-slo-ms", "3600000",
                          "--tpot-slo-ms", "3600000")  # targets every request meets, anywhere
        assert [r["request_rate"] for r in http_json["runs"]] == [4, 8]
        for run in http_json["runs"]:
            check_synthetic(run, 4, 24, 6)
            assert run["goodput"]["good_requests"] == 4

        dataset = tmp_path / "prompts.jsonl"
        dataset.write_text(
            json.dumps({"prompt": "The capital of France is", "max_tokens": 5}) + "\n" +
            json.dumps({"messages": [{"role": "user", "content": "Say hi."}]}) + "\n")
        ds = bench(model_dir, tmp_path / "ds.json", "--target", s.http, "--dataset",
                   str(dataset), "--output-len", "4")["runs"][0]
        assert ds["completed"] == 2
        assert [q["output_tokens"] <= m for q, m in zip(ds["requests"], (5, 4))] == [True, True]
    finally:
        s.stop()
    engine = bench(model_dir, tmp_path / "engine.json", "--target", "engine", "--threads", "1",
                   "--num-requests", "3", "--input-len", "24", "--output-len", "6")
    check_synthetic(engine["runs"][0], 3, 24, 6)

    # The plot script reads the files under the names run_serving_bench.sh gives them.
    (tmp_path / "http_rates.json").write_text((tmp_path / "http.json").read_text())
    (tmp_path / "concurrency_serve.json").write_text((tmp_path / "grpc.json").read_text())
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "plot_serving.py"),
                           str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "OpenAI HTTP API, Poisson arrivals" in (tmp_path / "summary.md").read_text()
    for png in ("latency_cdf.png", "goodput_vs_rate.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_refuses_bad_targets_and_datasets(model_dir, tmp_path):
    r = subprocess.run([str(tandem_binary("tandem")), "bench", "--target", "ftp://x"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode != 0 and "--target" in r.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\nnot json\n')
    r = subprocess.run([str(tandem_binary("tandem")), "bench", "--target", "engine", "--model",
                        str(model_dir), "--dataset", str(bad)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode != 0 and "bad.jsonl:2" in r.stderr
