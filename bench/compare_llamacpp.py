#!/usr/bin/env python3
"""Helpers of bench/compare_llamacpp.sh (run it, not this).

  compare_llamacpp.py weights --model DIR --gguf-dir DIR --out weights.json
      Checks that llama.cpp's GGUFs hold the weights Tandem serves: the F32 GGUF (llama-quantize
      --allow-requantize from the Q4_1 file) against model.safetensors element by element, the
      BF16 GGUF against the safetensors rounded to bfloat16 (nearest even, what Tandem's
      --weights bf16 does), and the quantized files' error for information. q/k are un-permuted
      from llama.cpp's rope layout with tools/gguf_to_hf.py's own code.

  compare_llamacpp.py table OUT_DIR
      Reads the raw JSON the script left in OUT_DIR and writes OUT_DIR/summary.md (printed too).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRECISIONS = ("f32", "bf16", "q8_0", "q4_0", "q4_1")


# ----------------------------------------------------------------------------- weights
def bf16_round(x):
    """float32 -> bfloat16 (round to nearest even) -> float32."""
    import numpy as np

    u = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000
    return u.astype(np.uint32).view(np.float32)


def gguf_as_hf(path):
    """The GGUF's tensors dequantized to float32 under their Hugging Face names, plus the
    llama.cpp type of each."""
    import gguf

    sys.path.insert(0, os.path.join(REPO, "tools"))
    import gguf_to_hf  # noqa: E402  (the converter that made model.safetensors)

    reader = gguf.GGUFReader(path)

    def g(key):
        return gguf_to_hf.field_value(reader, f"llama.{key}")

    n_head = int(g("attention.head_count"))
    n_kv = int(g("attention.head_count_kv") or n_head)
    tensors = gguf_to_hf.convert_tensors(reader, n_head, n_kv)
    types = {}
    for t in reader.tensors:
        types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
    return tensors, types


def cmd_weights(args):
    import numpy as np
    from safetensors.numpy import load_file

    ref = load_file(os.path.join(args.model, "model.safetensors"))
    report = {"model": args.model, "files": {}}
    ok = True
    for prec in PRECISIONS:
        path = os.path.join(args.gguf_dir, f"{prec.upper()}.gguf")
        if not os.path.exists(path):
            continue
        got, types = gguf_as_hf(path)
        missing = sorted(set(ref) ^ set(got))
        exact = 0
        worst = (0.0, "")
        n_diff = 0
        sq_err = sq_ref = 0.0
        for name, want in ref.items():
            if name not in got:
                continue
            if prec == "bf16":
                want = bf16_round(want)
            have = got[name].reshape(want.shape)
            d = np.abs(have.astype(np.float64) - want.astype(np.float64))
            if np.array_equal(have, want):
                exact += 1
            n_diff += int(np.count_nonzero(d))
            sq_err += float((d * d).sum())
            sq_ref += float((want.astype(np.float64) ** 2).sum())
            if d.size and float(d.max()) > worst[0]:
                worst = (float(d.max()), name)
        entry = {
            "path": os.path.realpath(path),
            "tensor_types": types,
            "compared_against": "bf16(safetensors)" if prec == "bf16" else "safetensors",
            "tensors": len(ref),
            "tensors_bit_identical": exact,
            "elements_differing": n_diff,
            "max_abs_diff": worst[0],
            "max_abs_diff_tensor": worst[1],
            "nmse": sq_err / sq_ref if sq_ref else 0.0,
            "name_mismatches": missing,
        }
        report["files"][prec] = entry
        if prec in ("f32", "bf16", "q4_1") and (exact != len(ref) or missing):
            ok = False
        print(f"  {prec.upper():5} {exact}/{len(ref)} tensors bit-identical to "
              f"{entry['compared_against']}, max |diff| {worst[0]:.3g}, NMSE {entry['nmse']:.3g}"
              f"  ({', '.join(f'{k} x{v}' for k, v in sorted(types.items()))})")
    report["f32_bf16_q4_1_exact"] = ok
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    return 0


# ----------------------------------------------------------------------------- table
def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def peak_rss_mib(time_log):
    """Maximum resident set size from a GNU time -v log, in MiB."""
    try:
        with open(time_log) as f:
            m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", f.read())
        return int(m.group(1)) / 1024 if m else None
    except OSError:
        return None


def llama_bench(out, prec):
    """{'pp128': tok/s, 'pp512': ..., 'tg': ...} (median of llama-bench's repetitions)."""
    rows = load(os.path.join(out, f"llama-bench_{prec}.json"))
    if not rows:
        return None
    res = {"rss": peak_rss_mib(os.path.join(out, f"llama-bench_{prec}.time")), "raw": {}}
    for r in rows:
        ts = statistics.median(r["samples_ts"]) if r.get("samples_ts") else r["avg_ts"]
        key = f"pp{r['n_prompt']}" if r["n_gen"] == 0 else "tg"
        res[key] = ts
        res["raw"][key] = (r.get("avg_ts"), r.get("stddev_ts"))
        res["model_type"] = r.get("model_type")
    return res


def engine_bench(out, prec):
    j = load(os.path.join(out, f"engine_bench_{prec}.json"))
    if not j:
        return None
    res = {"rss": j.get("peak_rss_mib"), "decode_context": j.get("decode_context")}
    for n, v in j.get("prefill", {}).items():
        res[f"pp{n}"] = v["tokens_per_s"]
    for b, v in j.get("decode", {}).items():
        res[f"b{b}"] = v["tokens_per_s"]
    return res


def engine_refused(out, prec):
    """engine_bench ran for `prec` and failed (the script leaves a .failed marker)."""
    if os.path.exists(os.path.join(out, f"engine_bench_{prec}.failed")):
        return True
    try:
        with open(os.path.join(out, f"engine_bench_{prec}.log")) as f:
            log = f.read().lower()
        return any(w in log for w in ("error", "invalid", "unknown", "unsupported"))
    except OSError:
        return False


def fmt(x, digits=1):
    return "—" if x is None else f"{x:.{digits}f}"


def ratio(t, l):
    return "—" if t is None or l is None or l == 0 else f"{t / l:.2f}"


def serving(out, engine, prec):
    j = load(os.path.join(out, f"serve_{engine}_{prec}.json"))
    if not j:
        return None
    res = {}
    for r in j["runs"]:
        reqs = r.get("requests", [])
        ok = [q for q in reqs if q.get("ok")]
        res[r["concurrency"]] = {
            "tok_s": r["output_throughput"],
            "ttft_p50": r["ttft_ms"]["p50"],
            "failed": r["failed"],
            "prompt_tokens": statistics.median([q["prompt_tokens"] for q in ok]) if ok else None,
            "output_tokens": statistics.median([q["output_tokens"] for q in ok]) if ok else None,
        }
    return res


def cmd_table(args):
    out = args.out
    meta = load(os.path.join(out, "meta.json")) or {}
    lines = [f"# Tandem vs llama.cpp on {meta.get('machine', 'this machine')}", ""]
    lines.append(
        f"{meta.get('model', 'SmolLM2-135M-Instruct')}, {meta.get('threads', '?')} threads, "
        f"llama.cpp from llama-cpp-python {meta.get('llama_cpp_python', '?')} "
        f"(vendor/llama.cpp, CPU, GGML_NATIVE); {meta.get('date', '')}.")
    lines.append("")
    if meta.get("load_note"):
        lines += [f"Note: {meta['load_note']}", ""]

    eng_rows = []
    for prec in PRECISIONS:
        lb, tb = llama_bench(out, prec), engine_bench(out, prec)
        if lb is None and tb is None:
            continue
        lb = lb or {}
        if tb is None:
            na = "n/a (unsupported)" if engine_refused(out, prec) else "—"
            t = {}
        else:
            na, t = None, tb
        b1 = t.get("b1")
        row = [prec.upper(),
               fmt(lb.get("pp128")), na or fmt(t.get("pp128")), ratio(t.get("pp128"), lb.get("pp128")),
               fmt(lb.get("pp512")), na or fmt(t.get("pp512")), ratio(t.get("pp512"), lb.get("pp512")),
               fmt(lb.get("tg"), 2), na or fmt(b1, 2), ratio(b1, lb.get("tg")),
               na or ratio(t.get("b8"), b1), na or ratio(t.get("b32"), b1),
               fmt(lb.get("rss"), 0), na or fmt(t.get("rss"), 0)]
        eng_rows.append("| " + " | ".join(row) + " |")
    if eng_rows:
        lines += [
            "## Engine (tokens/s; ratio = Tandem / llama.cpp)", "",
            "llama-bench `-p 128,512 -n 128` (median of its repetitions) against `engine_bench "
            "--prefill-lens 128,512` (median of runs). llama.cpp's tg is 128 tokens decoded from an "
            "empty context; Tandem's decode steps follow a "
            f"{meta.get('decode_context', 128)}-token prompt. Peak RSS in MiB (llama-bench: GNU "
            "time, model mmap'd; engine_bench: getrusage, includes its 1 GiB KV cache reservation "
            "only as far as touched).", "",
            "| precision | llama.cpp pp128 | Tandem pp128 | ratio | llama.cpp pp512 | Tandem pp512 "
            "| ratio | llama.cpp tg (decode b1) | Tandem decode b1 | ratio | Tandem decode b8 / b1 "
            "| b32 / b1 | llama.cpp RSS | Tandem RSS |",
            "|---|" + "---:|" * 13, *eng_rows, ""]

    srv_rows = []
    for prec in PRECISIONS:
        ls, ts = serving(out, "llama", prec), serving(out, "tandem", prec)
        if ls is None and ts is None and not os.path.exists(os.path.join(out, f"serve_tandem_{prec}.failed")):
            continue
        unsupported = os.path.exists(os.path.join(out, f"serve_tandem_{prec}.failed"))
        for c in sorted(set((ls or {}).keys()) | set((ts or {}).keys())):
            l = (ls or {}).get(c, {})
            t = (ts or {}).get(c, {})
            na = "n/a (unsupported)" if unsupported else None
            srv_rows.append("| " + " | ".join([
                prec.upper(), str(c),
                fmt(l.get("tok_s")), na or fmt(t.get("tok_s")), ratio(t.get("tok_s"), l.get("tok_s")),
                fmt(l.get("ttft_p50"), 0), na or fmt(t.get("ttft_p50"), 0),
                ratio(t.get("ttft_p50"), l.get("ttft_p50")),
                f"{fmt(l.get('prompt_tokens'), 0)} / {fmt(l.get('output_tokens'), 0)}",
                na or f"{fmt(t.get('prompt_tokens'), 0)} / {fmt(t.get('output_tokens'), 0)}",
                f"{l.get('failed', '—')} / {t.get('failed', '—') if not na else '—'}",
            ]) + " |")
    if srv_rows:
        lines += [
            "## Serving (`tandem bench` over the OpenAI HTTP API, same client for both)", "",
            f"{meta.get('num_requests', 32)} requests of {meta.get('input_len', 128)} random "
            f"prompt token ids / {meta.get('output_len', 32)} output tokens (EOS ignored, greedy). "
            f"llama-server: `{meta.get('llama_server_flags', '')}`; tandem serve: "
            f"`{meta.get('tandem_serve_flags', '')}` (router + 1 prefill + 1 decode worker). "
            "Ratio = Tandem / llama-server (TTFT: lower is better).", "",
            "| precision | concurrency | llama-server out tok/s | Tandem out tok/s | ratio "
            "| llama-server TTFT p50 ms | Tandem TTFT p50 ms | ratio "
            "| llama-server in / out tokens | Tandem in / out tokens | failed (llama / Tandem) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|", *srv_rows, ""]

    w = load(os.path.join(out, "weights_check.json"))
    if w:
        lines += ["## Same weights?", ""]
        for prec, e in w["files"].items():
            lines.append(
                f"- {prec.upper()} GGUF vs {e['compared_against']}: {e['tensors_bit_identical']}/"
                f"{e['tensors']} tensors bit-identical, max |diff| {e['max_abs_diff']:.3g}, "
                f"NMSE {e['nmse']:.3g} ({', '.join(f'{k} x{v}' for k, v in sorted(e['tensor_types'].items()))})")
        lines.append("")
    text = "\n".join(lines)
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write(text)
    print(text)
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("weights")
    w.add_argument("--model", required=True)
    w.add_argument("--gguf-dir", required=True)
    w.add_argument("--out", required=True)
    t = sub.add_parser("table")
    t.add_argument("out")
    args = ap.parse_args()
    return cmd_weights(args) if args.cmd == "weights" else cmd_table(args)


if __name__ == "__main__":
    sys.exit(main())
