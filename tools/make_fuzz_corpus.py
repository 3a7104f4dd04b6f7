#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets (fuzz/corpus/<target>/, small files).

Seeds come from the default model's folder (trimmed tokenizer.json, its tokenizer_config.json and
chat template), the gguf package (small GGUF files), protobuf (request messages, from the protos
compiled at run time) and hand-written bodies. Run from the repository root with the venv:

    .venv/bin/python tools/make_fuzz_corpus.py [--model models/SmolLM2-135M-Instruct]
"""
import argparse
import json
import os
import struct
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "fuzz", "corpus")


def write(target, name, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# ---------------------------------------------------------------- OpenAI request bodies
def openai_requests():
    completion = [
        {"prompt": "Hello", "max_tokens": 8},
        {"model": "SmolLM2-135M-Instruct", "prompt": ["a", "b"], "n": 2, "stop": ["\n", "."],
         "temperature": 0.5, "top_p": 0.9, "seed": 7, "logprobs": 2, "stream": True,
         "stream_options": {"include_usage": True}},
        {"prompt": [1, 2, 3], "max_tokens": 4, "stop_token_ids": [2], "ignore_eos": True,
         "top_k": 5, "min_p": 0.1, "repetition_penalty": 1.1, "presence_penalty": 0.5,
         "frequency_penalty": -0.5, "echo": False},
        {"prompt": [[1, 2], [3]], "best_of": 1, "user": "x", "stop": "end"},
    ]
    chat = [
        {"messages": [{"role": "user", "content": "Hi"}]},
        {"messages": [{"role": "system", "content": "Be brief."},
                      {"role": "developer", "content": [{"type": "text", "text": "x"}]},
                      {"role": "assistant", "content": "ok"},
                      {"role": "user", "content": "again"}],
         "max_completion_tokens": 5, "logprobs": True, "top_logprobs": 3,
         "response_format": {"type": "text"}, "n": 3},
    ]
    for i, body in enumerate(completion):
        write("openai_request", f"completion_{i}", b"\x00" + json.dumps(body).encode())
    for i, body in enumerate(chat):
        write("openai_request", f"chat_{i}", b"\x01" + json.dumps(body).encode())


# ---------------------------------------------------------------- safetensors
def safetensors_file(tensors, metadata=None):
    header, data = {}, b""
    for name, (dtype, shape, payload) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape,
                        "data_offsets": [len(data), len(data) + len(payload)]}
        data += payload
    if metadata is not None:
        header["__metadata__"] = metadata
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + data


def safetensors():
    write("safetensors", "two_tensors", safetensors_file({
        "a.weight": ("F32", [2, 2], struct.pack("<4f", 1, 2, 3, 4)),
        "b.bias": ("F16", [3], b"\x00" * 6)}))
    write("safetensors", "metadata_bf16", safetensors_file(
        {"x": ("BF16", [1, 2], b"\x00" * 4)}, metadata={"format": "pt"}))
    write("safetensors", "empty", safetensors_file({}))


# ---------------------------------------------------------------- GGUF
def gguf_files(tokenizer_json, config, workdir):
    import gguf  # the venv's gguf package
    import numpy as np
    vocab = sorted(tokenizer_json["model"]["vocab"].items(), key=lambda kv: kv[1])
    tokens = [t for t, _ in vocab]
    merges = [" ".join(m) if isinstance(m, list) else m for m in tokenizer_json["model"]["merges"]]
    for name, with_tok in (("llama_tokenizer", True), ("llama_bare", False)):
        path = os.path.join(workdir, name + ".gguf")
        w = gguf.GGUFWriter(path, "llama")
        w.add_block_count(1)
        w.add_context_length(64)
        w.add_embedding_length(8)
        w.add_head_count(2)
        w.add_head_count_kv(1)
        w.add_uint32("general.alignment", 32)
        w.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-5)
        w.add_array("test.ints", [1, 2, 3])
        if with_tok:
            w.add_tokenizer_model("gpt2")
            w.add_tokenizer_pre("smollm")
            w.add_token_list(tokens)
            w.add_token_types([1] * len(tokens))
            w.add_token_merges(merges)
            w.add_bos_token_id(0)
            w.add_eos_token_id(2)
            w.add_chat_template(config.get("chat_template", ""))
        w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
        w.add_tensor("blk.0.attn_norm.weight", np.ones((8,), dtype=np.float16))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        with open(path, "rb") as f:
            write("gguf", name, f.read())


# ---------------------------------------------------------------- tokenizer, chat templates
def trimmed_tokenizer(tok, keep):
    """tokenizer.json with the first `keep` vocabulary ids and the merges among them."""
    t = json.loads(json.dumps(tok))
    vocab = {k: v for k, v in tok["model"]["vocab"].items() if v < keep}
    merges = []
    for m in tok["model"]["merges"]:
        a, b = m if isinstance(m, list) else m.split(" ", 1)
        if a in vocab and b in vocab and a + b in vocab:
            merges.append(m)
    t["model"]["vocab"] = vocab
    t["model"]["merges"] = merges
    t["added_tokens"] = [a for a in tok["added_tokens"] if a["id"] < keep]
    return t


def tokenizers(tok, config_text):
    small = json.dumps(trimmed_tokenizer(tok, 400), ensure_ascii=False).encode()
    config = json.loads(config_text)
    short_config = {k: config[k] for k in ("add_bos_token", "add_eos_token", "bos_token",
                                           "eos_token") if k in config}
    texts = ["Hello world 123", "<|im_start|>user\nHi<|im_end|>", "naïve café ☕ 😀", ""]
    for i, text in enumerate(texts):
        write("tokenizer", f"smollm2_{i}",
              json.dumps(short_config).encode() + b"\0" + small + b"\0" + text.encode())
    write("tokenizer", "bos_object",
          json.dumps({"add_bos_token": True, "bos_token": {"content": "<|endoftext|>"}}).encode()
          + b"\0" + small + b"\0" + b"x")
    return config


def chat_templates(config):
    msgs = b"\0".join([b"\x00You are kind.", b"\x01Hi there", b"\x02Hello!", b"\x01Bye",
                       b"tool:odd role"])
    templates = {
        "chatml": config.get("chat_template", "<|im_start|>"),
        "llama3": "{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>' }}<|eot_id|>",
        "llama2": "[INST] <<SYS>>\n{{ system }}\n<</SYS>> {{ user }} [/INST]",
        "unknown": "{{ messages }}",
    }
    for name, t in templates.items():
        write("chat_template", name, t.encode() + b"\0" + msgs)


# ---------------------------------------------------------------- KV wire
P64 = (0x9E3779B185EBCA87, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0x85EBCA77C2B2AE63,
       0x27D4EB2F165667C5)
M64 = (1 << 64) - 1


def _rotl(x, r):
    return ((x << r) | (x >> (64 - r))) & M64


def _round(acc, lane):
    acc = (acc + lane * P64[1]) & M64
    return (_rotl(acc, 31) * P64[0]) & M64


def xxh64(data, seed=0):
    """XXH64 (common/src/hash.cc's Hash64), for layout fingerprints."""
    n, i = len(data), 0
    if n >= 32:
        v = [(seed + P64[0] + P64[1]) & M64, (seed + P64[1]) & M64, seed, (seed - P64[0]) & M64]
        while i + 32 <= n:
            for j in range(4):
                v[j] = _round(v[j], struct.unpack_from("<Q", data, i + 8 * j)[0])
            i += 32
        h = (_rotl(v[0], 1) + _rotl(v[1], 7) + _rotl(v[2], 12) + _rotl(v[3], 18)) & M64
        for x in v:
            h = ((h ^ _round(0, x)) * P64[0] + P64[3]) & M64
    else:
        h = (seed + P64[4]) & M64
    h = (h + n) & M64
    while i + 8 <= n:
        h ^= _round(0, struct.unpack_from("<Q", data, i)[0])
        h = (_rotl(h, 27) * P64[0] + P64[3]) & M64
        i += 8
    if i + 4 <= n:
        h ^= (struct.unpack_from("<I", data, i)[0] * P64[0]) & M64
        h = (_rotl(h, 23) * P64[1] + P64[2]) & M64
        i += 4
    while i < n:
        h ^= (data[i] * P64[4]) & M64
        h = (_rotl(h, 11) * P64[0]) & M64
        i += 1
    h ^= h >> 33
    h = (h * P64[1]) & M64
    h ^= h >> 29
    h = (h * P64[2]) & M64
    return h ^ (h >> 32)


def kv_wire():
    # fuzz/kv_wire_fuzz.cc's receiver layout: 2 layers, 1 kv head, head_dim 4, page 2, f32.
    layout = struct.pack("<IiiiiiIQ", 0x4C564B54, 1, 2, 1, 4, 2, 0, 0x1234)
    fp = xxh64(layout)
    handshake = layout + struct.pack("<QQI", fp, fp, 3)
    write("kv_wire", "layout", b"\x00" + layout)
    write("kv_wire", "handshake", b"\x01" + handshake)
    write("kv_wire", "abort_status", b"\x02" + struct.pack("<I", 14) + b"peer went away")

    def frame(kind, req, layer, pages, payload):
        # stream_socket.cc EncodeHeader: magic, kind, flags, request, layer, pages, length.
        return struct.pack("<IHHQiIQ", 0x31564B54, kind, 0, req, layer, pages, len(payload)) + payload

    start = frame(1, 7, -1, 3, struct.pack("<Q", 5000000) + handshake)
    layer = frame(3, 7, 0, 3, b"\x11" * 96)
    abort = frame(5, 7, -1, 0, struct.pack("<I", 1) + b"cancelled")
    write("kv_wire", "frames", b"\x03" + start + layer + abort)
    write("kv_wire", "frame_big", b"\x03" + frame(3, 9, 1, 1, b"") + b"\x00" * 8)


def kv_frame(kind, req, layer, pages, payload):
    # stream_socket.cc EncodeHeader: magic, kind, flags, request, layer, pages, length.
    return struct.pack("<IHHQiIQ", 0x31564B54, kind, 0, req, layer, pages, len(payload)) + payload


def kv_receiver():
    # fuzz/kv_receiver_fuzz.cc: the receiver's layout is kv_wire's; requests 1 (3 pages) and 2
    # (1 page) are registered with these tokens.
    token1, token2 = 0x0123456789ABCDEF, 0x1122334455667788
    layout = struct.pack("<IiiiiiIQ", 0x4C564B54, 1, 2, 1, 4, 2, 0, 0x1234)
    fp = xxh64(layout)
    page = b"k" * 64  # 2 tokens x 1 head x 4 dims x 2 (K, V) x 4 bytes (f32)

    def start(token, pages):
        return struct.pack("<QQ", 1000000, token) + layout + struct.pack("<QQI", fp, fp, pages)

    def nccl_init(token, name):
        # nccl_plane.cc EncodeNcclInit: token, then the 128-byte unique id (the fake's: its
        # magic, then the name of the socket rank 0 listens on).
        uid = (b"TFNCCL1\x00" + name).ljust(128, b"\x00")
        return struct.pack("<Q", token) + uid

    def abort(token, code, message):
        return struct.pack("<QI", token, code) + message

    f = kv_frame
    seeds = {
        "nccl_init": f(7, 1, 0, 0, nccl_init(token1, b"fz-none")),
        "nccl_init_wrong_token": f(7, 1, 0, 0, nccl_init(token2, b"fz-none")),
        "nccl_init_unknown_request": f(7, 9, 0, 0, nccl_init(token1, b"fz-none")),
        "nccl_init_short": f(7, 1, 0, 0, struct.pack("<Q", token1) + b"TFNCCL1"),
        # The fake's socket name as long as the id allows: longer than a socket address (the
        # stack overflow fuzz_kv_receiver found in nccl_fake.cc).
        "nccl_init_long_name": f(7, 1, 0, 0, nccl_init(token1, b"n" * 119)),
        "nccl_init_twice": f(7, 2, 0, 0, nccl_init(token2, b"fz-a")) +
                           f(7, 2, 0, 0, nccl_init(token2, b"fz-b")),
        "nccl_init_then_start": f(7, 2, 0, 0, nccl_init(token2, b"fz-c")) +
                                f(1, 2, 0, 1, start(token2, 1)),
        "start_layers": f(1, 2, 0, 1, start(token2, 1)) + f(3, 2, 0, 1, page) +
                        f(3, 2, 1, 1, page),
        "start_wrong_token": f(1, 1, 0, 3, start(token2, 3)),
        "start_abort": f(1, 1, 0, 3, start(token1, 3)) + f(5, 1, 0, 0, abort(token1, 1, b"x")),
        "abort_before_start": f(5, 2, 0, 0, abort(token2, 14, b"gone")),
        "ack_from_sender": f(4, 1, 0, 0, b""),
    }
    for name, data in seeds.items():
        write("kv_receiver", name, data)


def kv_tls():
    # fuzz/kv_tls_fuzz.cc: a byte of flags (bit 0 mTLS, bit 1 raw, bit 2 close_notify), then
    # (not raw) the length of the application data (u16) and the bytes.
    import ssl
    start = kv_frame(1, 1, 0, 3, struct.pack("<QQ", 1000000, 0x0123456789ABCDEF) + b"h" * 60)
    app = start + kv_frame(3, 1, 0, 3, b"k" * 96)
    n = struct.pack("<H", len(app))
    write("kv_tls", "frames", b"\x00" + n + app)
    write("kv_tls", "frames_mtls", b"\x01" + n + app)
    write("kv_tls", "frames_close_notify", b"\x04" + n + app)
    write("kv_tls", "frames_then_junk_record", b"\x00" + struct.pack("<H", len(start)) + start +
          b"\x17\x03\x03\x00\x20" + b"\x00" * 32)
    cut = kv_frame(3, 1, 0, 3, b"k" * 8)[:32] + b"k" * 8
    write("kv_tls", "big_frame_cut", b"\x05" + struct.pack("<H", 40) + cut +
          b"\x15\x03\x03\x00\x02\x02\x28")
    # Raw: a real ClientHello (Python's ssl over memory BIOs), whole and cut.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    try:
        ctx.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1").do_handshake()
    except ssl.SSLWantReadError:
        pass
    hello = outgoing.read()
    write("kv_tls", "raw_client_hello", b"\x02" + hello)
    write("kv_tls", "raw_client_hello_mtls", b"\x03" + hello)
    write("kv_tls", "raw_client_hello_cut", b"\x02" + hello[:60])
    write("kv_tls", "raw_plaintext_frame", b"\x02" + start)
    write("kv_tls", "raw_alert", b"\x02\x15\x03\x01\x00\x02\x02\x28")


# ---------------------------------------------------------------- internal protos
def protos(workdir):
    from grpc_tools import protoc
    proto_dir = os.path.join(ROOT, "proto")
    args = ["protoc", f"-I{proto_dir}", f"--python_out={workdir}",
            os.path.join(proto_dir, "tandem/v1/generate.proto"),
            os.path.join(proto_dir, "tandem/v1/internal.proto")]
    if protoc.main(args) != 0:
        sys.exit("protoc failed")
    sys.path.insert(0, workdir)
    from tandem.v1 import generate_pb2 as g, internal_pb2 as i
    gen = g.GenerateRequest(request_id="req-1", text="Hello", logprobs=True, top_logprobs=2)
    gen.sampling.temperature = 0.7
    gen.sampling.top_p = 0.9
    gen.sampling.seed = 3
    gen.stopping.max_tokens = 8
    gen.stopping.stop.append("\n")
    gen.stopping.stop_token_ids.append(2)
    write("internal_proto", "generate_text", b"\x00" + gen.SerializeToString())
    gen2 = g.GenerateRequest()
    gen2.token_ids.ids.extend([1, 2, 3])
    gen2.stopping.max_tokens = 4
    write("internal_proto", "generate_ids", b"\x00" + gen2.SerializeToString())
    gen3 = g.GenerateRequest()
    m = gen3.chat.messages.add()
    m.role, m.content = "user", "Hi"
    gen3.stopping.max_tokens = 2
    write("internal_proto", "generate_chat", b"\x00" + gen3.SerializeToString())
    layout = struct.pack("<IiiiiiIQ", 0x4C564B54, 1, 2, 1, 4, 2, 0, 0x1234)
    pre = i.PrefillRequest(request_id="req-1", logprobs=True, top_logprobs=1)
    pre.prompt_token_ids.extend([5, 6, 7])
    pre.sampling.temperature = 1.0
    pre.ticket.endpoint = "127.0.0.1:4242"
    pre.ticket.block_ids.extend([0, 1])
    pre.ticket.layout.fingerprint = xxh64(layout)
    write("internal_proto", "prefill", b"\x01" + pre.SerializeToString())
    dec = i.DecodeRequest(request_id="req-1", first_token_id=9, logprobs=True, top_logprobs=1)
    dec.prompt_token_ids.extend([5, 6, 7])
    dec.stopping.max_tokens = 3
    dec.stopping.stop_token_ids.append(2)
    write("internal_proto", "decode", b"\x02" + dec.SerializeToString())
    res = i.ReserveRequest(request_id="req-1", prompt_tokens=3, max_tokens=4, lease_ms=1000)
    write("internal_proto", "reserve", b"\x03" + res.SerializeToString())


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "SmolLM2-135M-Instruct"))
    a = ap.parse_args()
    with open(os.path.join(a.model, "tokenizer.json"), encoding="utf-8") as f:
        tok = json.load(f)
    with open(os.path.join(a.model, "tokenizer_config.json"), encoding="utf-8") as f:
        config_text = f.read()
    openai_requests()
    safetensors()
    config = tokenizers(tok, config_text)
    chat_templates(config)
    kv_wire()
    kv_receiver()
    kv_tls()
    with tempfile.TemporaryDirectory() as work:
        gguf_files(trimmed_tokenizer(tok, 400), config, work)
        protos(work)
    print(f"make_fuzz_corpus: seeds in {os.path.relpath(OUT, ROOT)}")


if __name__ == "__main__":
    main()
