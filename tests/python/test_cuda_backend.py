"""The CUDA backend from the command line, as a user runs it.

Without a GPU, `--device cuda` fails with an error naming the missing device (no crash). The
interpreter flavour of the binaries (<build>/bin/interp: the same CUDA kernel sources compiled
for the CPU interpreter in kernels/interp) gives the CPU backend's greedy text on the default
model and on tiny random-weight Llama (GQA, llama3 rope), Mistral (sliding window) and Qwen2 (qkv
bias, tied embeddings) checkpoints, in one process and through a 1x1 cluster (`tandem serve`
with both workers on `--device cuda`). The cluster moves KV pages over cuda_ipc by default
(device pages copied into the decode worker's exported device pool: the interpreter's stand-in
for the driver's virtual memory API shares real memory between the two processes), or with
`--kv-transport shm` through host staging, which the workers' tandem_kv_staged_bytes_total
counters show.
"""
import json
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
    """stdout and stderr as str, without newline translation (random tokens may be a '\r')."""
    cmd = [str(binary), "generate", "--model", str(model_dir), *args, PROMPT]
    proc = subprocess.run(cmd, capture_output=True, timeout=1800)
    proc.stdout = proc.stdout.decode("utf-8", errors="replace")
    proc.stderr = proc.stderr.decode("utf-8", errors="replace")
    return proc


def cpu_text(model_dir) -> str:
    proc = generate(tandem_binary("tandem"), model_dir, "--device", "cpu", *FLAGS)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip()
    return proc.stdout


TINY = {
    "llama": dict(arch="LlamaForCausalLM", hidden=128, heads=2, kv_heads=1,
                  rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                "high_freq_factor": 4.0, "original_max_position_embeddings": 64}),
    "mistral": dict(arch="MistralForCausalLM", hidden=192, heads=3, kv_heads=3, sliding_window=7),
    "qwen2": dict(arch="Qwen2ForCausalLM", hidden=128, heads=2, kv_heads=1, qkv_bias=True,
                  tied=True),
}


def write_tiny_model(folder, arch, hidden, heads, kv_heads, qkv_bias=False, tied=False,
                     sliding_window=0, rope_scaling=None, layers=2, intermediate=160, vocab=300):
    """A random-weight checkpoint (head_dim 64, f32) with a byte-level BPE tokenizer: two
    specials and the 256 byte symbols, no merges (every byte is a token)."""
    import numpy as np
    from safetensors.numpy import save_file
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(11)
    hd = hidden // heads
    q, kv = heads * hd, kv_heads * hd

    def rnd(*shape, mean=0.0):
        return (mean + 0.3 * rng.standard_normal(shape)).astype(np.float32)

    t = {"model.embed_tokens.weight": rnd(vocab, hidden), "model.norm.weight": rnd(hidden, mean=1)}
    if not tied:
        t["lm_head.weight"] = rnd(vocab, hidden)
    for layer in range(layers):
        p = f"model.layers.{layer}."
        t[p + "input_layernorm.weight"] = rnd(hidden, mean=1)
        t[p + "post_attention_layernorm.weight"] = rnd(hidden, mean=1)
        t[p + "self_attn.q_proj.weight"] = rnd(q, hidden)
        t[p + "self_attn.k_proj.weight"] = rnd(kv, hidden)
        t[p + "self_attn.v_proj.weight"] = rnd(kv, hidden)
        t[p + "self_attn.o_proj.weight"] = rnd(hidden, q)
        if qkv_bias:
            t[p + "self_attn.q_proj.bias"] = rnd(q)
            t[p + "self_attn.k_proj.bias"] = rnd(kv)
            t[p + "self_attn.v_proj.bias"] = rnd(kv)
        t[p + "mlp.gate_proj.weight"] = rnd(intermediate, hidden)
        t[p + "mlp.up_proj.weight"] = rnd(intermediate, hidden)
        t[p + "mlp.down_proj.weight"] = rnd(hidden, intermediate)
    save_file(t, str(folder / "model.safetensors"))
    config = {"architectures": [arch], "hidden_size": hidden, "intermediate_size": intermediate,
              "num_hidden_layers": layers, "num_attention_heads": heads,
              "num_key_value_heads": kv_heads, "vocab_size": vocab,
              "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
              "tie_word_embeddings": tied, "torch_dtype": "float32", "hidden_act": "silu",
              "bos_token_id": 0, "eos_token_id": 1}
    if sliding_window:
        config["sliding_window"] = sliding_window
    if rope_scaling:
        config["rope_scaling"] = rope_scaling
        config["rope_theta"] = 500000.0
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    symbols = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab_map = {"<s>": 0, "</s>": 1, **{ch: i + 2 for i, ch in enumerate(symbols)}}
    tok = Tokenizer(models.BPE(vocab=vocab_map, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<s>", "</s>"])
    tok.save(str(folder / "tokenizer.json"))
    return folder


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


def interp_cluster_generate(model, tmp_path, check=None, *extra):
    """PROMPT through a 1 x 1 `tandem serve` of the interpreter flavour on the CUDA backend;
    `check(serve)` runs before it stops. Returns the stopped Serve and the text."""
    import tandem_client as tc

    serve = Serve(model, tmp_path / "logs", "--prefill", "1", "--decode", "1", "--device",
                  "cuda", "--deterministic", "--weights", "f32", "--port", "0", *extra,
                  binary=interp_binary("tandem"))
    try:
        serve.wait_for_router()
        with tc.Client(serve.address, timeout=WAIT_TIMEOUT_S) as c:
            final = c.generate(PROMPT, max_tokens=int(TOKENS), temperature=0.0)
        if check is not None:
            check(serve)
    finally:
        serve.stop()
    return serve, final.text


def test_interpreter_one_by_one_cluster_gives_the_cpu_text(model_dir, tmp_path):
    want = cpu_text(model_dir)

    def staged_bytes_match(serve):
        # The KV went through host staging (device pages → prefill's host mirror → the KV
        # transport (shm on one host) → decode's host mirror → device pages): the same bytes on
        # both sides.
        sent = serve.metric("prefill", "tandem_kv_staged_bytes_total")
        received = serve.metric("decode", "tandem_kv_staged_bytes_total")
        assert sent > 0, "prefill should stage device pages to host for the KV transport"
        assert received == sent, (sent, received)

    serve, text = interp_cluster_generate(model_dir, tmp_path, staged_bytes_match,
                                          "--kv-transport", "shm")
    assert text + "\n" == want, (text, want)
    log = serve.stderr_path.read_text(errors="replace")
    assert "cuda-interp" in log, "the workers should register with their CUDA device"
    assert "staged through a host mirror" in log, log[-4000:]


def transport_metric(serve, role: str, name: str, transport: str) -> float:
    """Sum of `name` over `role`'s processes, for series labelled transport="<transport>"."""
    import urllib.request

    total = 0.0
    for url in serve.endpoints.get(f"{role} metrics", []):
        body = urllib.request.urlopen(url, timeout=60,
                                      context=serve.metrics_context).read().decode()
        for line in body.splitlines():
            if line.startswith(name + "{") and f'transport="{transport}"' in line:
                total += float(line.rsplit(" ", 1)[1])
    return total


def test_interpreter_cluster_moves_kv_over_cuda_ipc_without_staging(model_dir, tmp_path):
    want = cpu_text(model_dir)

    def straight_into_device_pages(serve):
        # The prefill worker copied its device pages into the decode worker's exported device
        # pool: one cuda_ipc transfer, and no byte through either host mirror.
        assert transport_metric(serve, "prefill", "tandem_kv_transfer_bytes_count",
                                "cuda_ipc") == 1
        assert transport_metric(serve, "prefill", "tandem_kv_transfer_bytes_sum",
                                "cuda_ipc") > 0
        for t in ("tcp", "shm", "nccl"):
            assert transport_metric(serve, "prefill", "tandem_kv_transfer_bytes_count", t) == 0
        assert serve.metric("prefill", "tandem_kv_staged_bytes_total") == 0
        assert serve.metric("decode", "tandem_kv_staged_bytes_total") == 0

    serve, text = interp_cluster_generate(model_dir, tmp_path, straight_into_device_pages)
    assert text + "\n" == want, (text, want)
    log = serve.stderr_path.read_text(errors="replace")
    assert "cuda_ipc senders copy into the KV pages on GPU-" in log, log[-4000:]


@pytest.mark.parametrize("name", sorted(TINY))
def test_interpreter_tiny_architectures_give_the_cpu_text(name, tmp_path):
    model = write_tiny_model(tmp_path / name, **TINY[name])
    want = cpu_text(model)
    single = generate(interp_binary("tandem"), model, "--device", "cuda", "--deterministic",
                      *FLAGS)
    assert single.returncode == 0, single.stderr
    assert single.stdout == want
    _, text = interp_cluster_generate(model, tmp_path)
    assert text + "\n" == want, (text, want)


def test_interpreter_cluster_moves_kv_over_nccl_from_device_pages(model_dir, tmp_path):
    want = cpu_text(model_dir)

    def straight_from_device_pages(serve):
        # The fake NCCL (its CPU loopback) moved the prefill worker's device pages into the
        # decode worker's device pages: the interpreter's device memory is host memory, as the
        # real library's is device memory to it. No byte through either host mirror.
        assert transport_metric(serve, "prefill", "tandem_kv_transfer_bytes_count", "nccl") == 1
        assert serve.metric("prefill", "tandem_kv_staged_bytes_total") == 0
        assert serve.metric("decode", "tandem_kv_staged_bytes_total") == 0

    serve, text = interp_cluster_generate(model_dir, tmp_path, straight_from_device_pages,
                                          "--kv-transport", "nccl", "--nccl-library", "fake")
    assert text + "\n" == want, (text, want)
