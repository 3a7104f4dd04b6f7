"""`tandem bench --conversations`: the multi-turn chat workload against a real `tandem serve`,
with the workers' prefix caches on and off. Every turn's prompt is the chat so far (a shared
system prompt, earlier user turns and the model's own answers), so from turn 2 on the prefill
worker finds each conversation's earlier prompt in its cache and the decode worker holds its
earlier pages (not shipped again); the bench reads that from the workers' /metrics around each
turn."""
from __future__ import annotations

import json
import subprocess

import pytest

from conftest import tandem_binary
from serve_util import Serve

CONVERSATIONS, TURNS, SYSTEM, USER, ANSWER = 2, 2, 48, 16, 4
PAGE = 16  # the workers' default page size


def multi_turn_bench(serve: Serve, model_dir, out):
    # Every process's /metrics: the bench counts only the prefill workers' series.
    urls = [u for k, v in serve.endpoints.items() if k.endswith(" metrics") for u in v]
    cmd = [str(tandem_binary("tandem")), "bench", "--model", str(model_dir), "--target",
           f"grpc://{serve.address}", "--warmup", "1", "--conversations", str(CONVERSATIONS),
           "--turns", str(TURNS), "--system-len", str(SYSTEM), "--user-len", str(USER),
           "--output-len", str(ANSWER), "--metrics", ",".join(urls), "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "turns >= 2: ttft p50" in proc.stdout, proc.stdout
    return proc.stdout, json.loads(out.read_text())["runs"][0]


def check_structure(run):
    assert run["mode"] == "multi-turn" and run["failed"] == 0
    assert run["total_output_tokens"] == CONVERSATIONS * TURNS * ANSWER  # EOS ignored
    assert run["output_throughput"] > 0
    assert run["ttft_ms_turns_2_plus"]["count"] == CONVERSATIONS * (TURNS - 1)
    assert [t["turn"] for t in run["per_turn"]] == list(range(1, TURNS + 1))
    for t in run["per_turn"]:
        # Turn t's prompt: system + t user turns + (t - 1) answers.
        prompt = SYSTEM + t["turn"] * USER + (t["turn"] - 1) * ANSWER
        assert t["completed"] == CONVERSATIONS and t["failed"] == 0
        assert t["prompt_tokens"] == CONVERSATIONS * prompt
        assert 0 < t["ttft_ms"]["p50"] <= t["ttft_ms"]["p99"] <= t["e2e_ms"]["p99"]
        assert len(t["per_request"]) == CONVERSATIONS
        server = t["server"]
        assert server["prompt_tokens"] == CONVERSATIONS * prompt, server
        assert server["computed_tokens"] == server["prompt_tokens"] - server["prefix_hit_tokens"]
        # Every page of every prompt: shipped, or held by the decode worker already.
        assert server["kv_pages_sent"] + server["kv_pages_not_sent"] == \
            CONVERSATIONS * -(-prompt // PAGE), server
        assert server["kv_bytes_sent"] > 0
    return run["per_turn"]


@pytest.mark.timeout(1200)
@pytest.mark.parametrize("cache", ["on", "off"])
def test_multi_turn_bench_reads_prefix_cache_hits_per_turn(model_dir, tmp_path, cache):
    s = Serve(model_dir, tmp_path / "serve", "--prefix-cache",
              "true" if cache == "on" else "false")
    try:
        s.wait_for_router()
        stdout, run = multi_turn_bench(s, model_dir, tmp_path / "multi.json")
    finally:
        s.stop()
    turns = check_structure(run)
    second = turns[1]["server"]
    if cache == "on":
        # Each conversation's turn-1 prompt (system + user = 64 tokens = 4 full pages) is cached
        # and is the start of its turn-2 prompt; the answer starts a page the cache never saw.
        assert second["prefix_hit_tokens"] == CONVERSATIONS * (SYSTEM + USER), second
        # The decode worker kept turn 1's full pages, its answer's tokens but the last included
        # (system + user + 3 = 67 tokens: 4 pages of 16); turn 2 ships only the rest.
        held = (SYSTEM + USER + ANSWER - 1) // PAGE
        assert second["kv_pages_not_sent"] == CONVERSATIONS * held, second
    else:
        assert second["prefix_hit_tokens"] == 0, second
        assert turns[0]["server"]["prefix_hit_tokens"] == 0
        assert all(t["server"]["kv_pages_not_sent"] == 0 for t in turns)
    assert "computed" in stdout and "kv bytes" in stdout


def test_multi_turn_bench_refuses_http_and_metrics_alone(model_dir):
    tandem = str(tandem_binary("tandem"))
    r = subprocess.run([tandem, "bench", "--target", "http://127.0.0.1:1", "--conversations",
                        "2"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 1 and "--conversations" in r.stderr
    r = subprocess.run([tandem, "bench", "--target", "engine", "--model", str(model_dir),
                        "--metrics", "http://127.0.0.1:1/metrics"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 1 and "--metrics" in r.stderr


def test_multi_turn_bench_on_the_engine(model_dir, tmp_path):
    out = tmp_path / "engine.json"
    r = subprocess.run([str(tandem_binary("tandem")), "bench", "--target", "engine", "--model",
                        str(model_dir), "--threads", "1", "--warmup", "0", "--conversations",
                        str(CONVERSATIONS), "--turns", "3", "--system-len", str(SYSTEM),
                        "--user-len", str(USER), "--output-len", str(ANSWER), "--json", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    run = json.loads(out.read_text())["runs"][0]
    assert run["failed"] == 0 and run["total_output_tokens"] == CONVERSATIONS * 3 * ANSWER
    assert [t["prompt_tokens"] for t in run["per_turn"]] == [
        CONVERSATIONS * (SYSTEM + t * USER + (t - 1) * ANSWER) for t in (1, 2, 3)]
    assert all("server" not in t for t in run["per_turn"])  # no --metrics: no server figures
