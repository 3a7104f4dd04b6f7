"""Hugging Face parity of the C++ engine, through `tandem-probe` (teacher-forced scoring).

For each model (the converted SmolLM2-135M-Instruct and small random-weight Llama / Mistral /
Qwen2 checkpoints made here), HF transformers generates 64 greedy tokens per prompt (float32,
eager attention). The probe then scores the same sequences with HF's tokens forced, and:
  * wherever the probe's argmax differs from HF's token, HF's logits for the two tokens must be
    within NEAR_TIE (a genuine tie), else the test fails naming model, prompt, step and tokens;
  * the logits after the prompt and at the last step match HF's within LOGIT_RTOL relative
    (max |a - b| <= LOGIT_RTOL * max |ref|).
Both run with the engine's f32 weights and with bf16 weights (`--weights bf16`), the latter against
HF with every matrix (embedding, projections, head) rounded to bf16 the same way.
A second test checks batch and chunk invariance: `--batch-mode alone` vs `joint` and `--chunk 7`
vs the default must give bit-identical float32 logits and identical argmax.

Probe contract: tandem-probe --model DIR --input IN.json --output OUT.json [--chunk N]
                [--batch-mode joint|alone]
  IN:  {"prompts": [[ids]], "forced": [[ids]]}
  OUT: {"results": [{"argmax": [ids], "first_logits": [floats], "last_logits": [floats]}]}
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import build_dir_path, import_hf, model_dir_path, run_probe

NEW_TOKENS = 64
NEAR_TIE = 1e-4      # HF logit gap below which a differing argmax is accepted as a tie
LOGIT_RTOL = 1e-3    # max |probe - hf| <= LOGIT_RTOL * max |hf|
TOPK = 16           # HF logits kept per step (ids + values) for judging argmax mismatches
REF_VERSION = 1     # bump when the reference computation changes (invalidates the cache)
RANDOM_VOCAB = 1000
N_PROMPTS = 8

SMOL_CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Write a haiku about autumn leaves."}],
    [{"role": "user", "content": "Explain what a hash table is in two sentences."}],
    [{"role": "user", "content": "Translate 'good morning, my friend' into Spanish and German."}],
    [{"role": "user", "content": "What is 17 * 23? Show your work step by step."}],
    [{"role": "system", "content": "You are a pirate. Answer like one."},
     {"role": "user", "content": "Describe the ocean at night."}],
    [{"role": "user", "content": "Hi!"},
     {"role": "assistant", "content": "Hello! How can I help you today?"},
     {"role": "user", "content": "Tell me a fun fact about octopuses."}],
    [{"role": "user", "content": "def fib(n):\n    # complete this Python function\n"}],
]

# name -> (family, config overrides, prompt length range)
RANDOM_MODELS = {
    "llama-gqa-llama3rope": ("llama", dict(
        hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=8,
        num_key_value_heads=2, head_dim=32, max_position_embeddings=1024, rope_theta=10000.0,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
        tie_word_embeddings=False), (5, 60)),
    "llama-mqa-linearrope-tied": ("llama", dict(
        hidden_size=256, intermediate_size=640, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=1, head_dim=64, max_position_embeddings=1024, rope_theta=10000.0,
        rope_scaling={"rope_type": "linear", "factor": 4.0}, tie_word_embeddings=True),
        (5, 60)),
    "mistral-swa16": ("mistral", dict(
        hidden_size=256, intermediate_size=512, num_hidden_layers=3, num_attention_heads=8,
        num_key_value_heads=2, head_dim=32, max_position_embeddings=1024, rope_theta=10000.0,
        sliding_window=16, tie_word_embeddings=False), (24, 60)),
    "qwen2-qkvbias": ("qwen2", dict(
        hidden_size=256, intermediate_size=512, num_hidden_layers=3, num_attention_heads=8,
        num_key_value_heads=2, max_position_embeddings=1024, rope_theta=1000000.0,
        use_sliding_window=False, tie_word_embeddings=False), (5, 60)),
}
MODEL_NAMES = ["smollm2-135m"] + list(RANDOM_MODELS)
WEIGHTS = ["f32", "bf16"]


# ----------------------------------------------------------------------------- helpers

def _write_random_tokenizer(out: Path) -> None:
    """A small byte-level BPE tokenizer with exactly RANDOM_VOCAB ids (bos 1, eos 2), so the
    random checkpoints are complete model folders. The parity test itself works on ids."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    import transformers
    corpus_dir = Path(transformers.__file__).parent / "models" / "llama"
    texts = [p.read_text(errors="ignore") for p in sorted(corpus_dir.glob("*.py"))]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    specials = ["<|endoftext|>", "<s>", "</s>"]
    trainer = trainers.BpeTrainer(vocab_size=RANDOM_VOCAB, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    n = tok.get_vocab_size()
    if n < RANDOM_VOCAB:
        tok.add_tokens([AddedToken(f"<|extra_{i}|>", special=True, normalized=False)
                        for i in range(RANDOM_VOCAB - n)])
    assert tok.get_vocab_size() == RANDOM_VOCAB
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
        "unk_token": "<|endoftext|>", "add_bos_token": False, "model_max_length": 1024}))


def _make_random_model(name: str, out: Path):
    torch, transformers = import_hf()
    family, overrides, _ = RANDOM_MODELS[name]
    cfg_cls = {"llama": transformers.LlamaConfig, "mistral": transformers.MistralConfig,
               "qwen2": transformers.Qwen2Config}[family]
    # initializer_range 0.2 (10x the usual) makes the random logits decisive: top-2 gaps are
    # usually far above float32 noise, while RMSNorm keeps activations finite.
    cfg = cfg_cls(vocab_size=RANDOM_VOCAB, rms_norm_eps=1e-5, initializer_range=0.2,
                  bos_token_id=1, eos_token_id=2, pad_token_id=0, torch_dtype="float32",
                  attn_implementation="eager", **overrides)
    seed = sum(map(ord, name))
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(cfg, torch_dtype=torch.float32,
                                                          attn_implementation="eager")
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("norm.weight"):       # RMSNorm weights: not all ones
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif n.endswith(".bias"):           # Qwen2 q/k/v biases: non-zero
                p.copy_(0.5 * torch.randn_like(p))
    model = model.to(torch.float32).eval()
    model.config.torch_dtype = torch.float32
    model.save_pretrained(out, safe_serialization=True)
    _write_random_tokenizer(out)
    return model


def _rounded_to_bf16(model):
    """`model` with every matrix (embedding, projections, LM head) rounded to bf16 and kept in
    float32: what the engine's `--weights bf16` computes with (norms and biases stay f32)."""
    torch, _ = import_hf()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.dim() == 2:
                p.copy_(p.to(torch.bfloat16).to(torch.float32))
    return model


def _greedy_reference(model, prompts, pad_id: int) -> dict:
    """HF greedy generation (batch 1 per prompt, no EOS stop). Returns a compact reference:
    tokens [P,64], the top-TOPK raw logits per step (ids + values), and the full float32 logits
    after the prompt (first) and at the last step (last)."""
    torch, transformers = import_hf()
    # generate() fills unset special tokens from the model's config, and would then suppress
    # EOS (min_new_tokens) or stop on it: clear it on the in-memory model so that all 64 tokens
    # are the raw-logit argmax.
    model.config.eos_token_id = None
    model.generation_config.eos_token_id = None
    gc = transformers.GenerationConfig(
        do_sample=False, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
        eos_token_id=None, pad_token_id=pad_id, bos_token_id=None,
        return_dict_in_generate=True, output_logits=True)
    tokens, top_ids, top_vals, first, last = [], [], [], [], []
    with torch.no_grad():
        for p in prompts:
            ids = torch.tensor([p], dtype=torch.long)
            out = model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=gc)
            gen = out.sequences[0, len(p):].tolist()
            lg = torch.stack([x[0] for x in out.logits]).to(torch.float32).numpy()
            assert len(gen) == NEW_TOKENS and lg.shape[0] == NEW_TOKENS
            assert np.isfinite(lg).all(), "HF reference logits are not finite"
            # generate()'s greedy choice is the argmax of the raw logits (no processors active)
            assert gen == lg.argmax(-1).tolist()
            order = np.argsort(-lg, axis=-1, kind="stable")[:, :TOPK]
            tokens.append(gen)
            top_ids.append(order)
            top_vals.append(np.take_along_axis(lg, order, axis=-1))
            first.append(lg[0])
            last.append(lg[-1])
    return {"tokens": np.asarray(tokens, dtype=np.int64), "top_ids": np.stack(top_ids),
            "top_vals": np.stack(top_vals), "first": np.stack(first), "last": np.stack(last)}


def _cached_reference(name, mdir: Path, prompts, compute, weights: str) -> dict:
    """The SmolLM2 reference is slow on a small CPU (~1 min idle, several under load) and fully
    determined by the weights, prompts and library versions: keep it in the build folder."""
    torch, transformers = import_hf()
    h = hashlib.sha256()
    h.update(json.dumps([REF_VERSION, NEW_TOKENS, TOPK, transformers.__version__,
                         torch.__version__, prompts, weights]).encode())
    for f in ("config.json", "model.safetensors"):
        with open(mdir / f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 24), b""):
                h.update(block)
    cache = build_dir_path() / "test-cache" / \
        f"hf_parity_{name}_{weights}_{h.hexdigest()[:16]}.npz"
    if cache.exists():
        try:
            with np.load(cache) as z:
                print(f"[{name}] HF reference from cache {cache}")
                return {k: z[k] for k in z.files}
        except Exception:
            pass
    ref = compute()
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".tmp{os.getpid()}.npz")
        np.savez(tmp, **ref)
        os.replace(tmp, cache)
    except OSError as e:
        print(f"[{name}] could not cache the HF reference: {e}")
    return ref


class Case:
    def __init__(self, name, model_dir, prompts, ref, workdir, weights):
        self.name, self.model_dir, self.prompts = name, model_dir, prompts
        self.weights = weights
        self.ref, self.workdir = ref, workdir
        self.tokens = ref["tokens"].tolist()
        self._probe_runs = {}

    def probe(self, chunk=None, batch_mode=None, prompts=None, forced=None, tag=None):
        key = (chunk, batch_mode, tag)
        if key not in self._probe_runs:
            t0 = time.time()
            self._probe_runs[key] = run_probe(
                self.model_dir, prompts if prompts is not None else self.prompts,
                forced if forced is not None else self.tokens, chunk=chunk,
                batch_mode=batch_mode, workdir=self.workdir, weights=self.weights,
                tag=f"{tag or 'run'}-{self.weights}-chunk{chunk}-{batch_mode}")
            print(f"[{self.name}/{self.weights}] probe chunk={chunk} batch_mode={batch_mode} "
                  f"tag={tag}: {time.time() - t0:.1f}s")
        return self._probe_runs[key]


_CASES: dict = {}


def _build_case(name: str, weights: str, tmp_root: Path) -> Case:
    torch, transformers = import_hf()
    # The probe already runs its GEMMs on every core; more torch threads only contend with it.
    torch.set_num_threads(1)
    t0 = time.time()
    if name == "smollm2-135m":
        mdir = model_dir_path()
        if not (mdir / "config.json").exists():
            pytest.fail(f"model folder {mdir} is missing; run tools/setup.sh")
        tok = transformers.AutoTokenizer.from_pretrained(mdir)
        prompts = [tok.apply_chat_template(c, add_generation_prompt=True, tokenize=True)
                   for c in SMOL_CHATS]
        # The same ids from the `tokenizers` package directly (what the C++ side mirrors).
        from tokenizers import Tokenizer
        raw = Tokenizer.from_file(str(mdir / "tokenizer.json"))
        for c, p in zip(SMOL_CHATS, prompts):
            text = tok.apply_chat_template(c, add_generation_prompt=True, tokenize=False)
            assert raw.encode(text, add_special_tokens=False).ids == p

        def compute():
            model = transformers.AutoModelForCausalLM.from_pretrained(
                mdir, torch_dtype=torch.float32, attn_implementation="eager").eval()
            if weights == "bf16":
                model = _rounded_to_bf16(model)
            pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0
            return _greedy_reference(model, prompts, pad)
        ref = _cached_reference(name, mdir, prompts, compute, weights)
    else:
        mdir = tmp_root / name
        if not (mdir / "config.json").exists():  # one checkpoint for both weight storages
            mdir.mkdir(parents=True, exist_ok=True)
            _make_random_model(name, mdir)
        model = transformers.AutoModelForCausalLM.from_pretrained(
            mdir, torch_dtype=torch.float32, attn_implementation="eager").eval()
        if weights == "bf16":
            model = _rounded_to_bf16(model)
        lo, hi = RANDOM_MODELS[name][2]
        rng = np.random.default_rng(sum(map(ord, name)) + 1)
        lengths = rng.integers(lo, hi + 1, size=N_PROMPTS)
        lengths[0], lengths[1] = lo, hi                   # cover both ends of the range
        prompts = [rng.integers(3, RANDOM_VOCAB, size=int(n)).tolist() for n in lengths]
        ref = _greedy_reference(model, prompts, 0)
    print(f"[{name}/{weights}] HF reference: {len(prompts)} prompts (lengths {min(map(len, prompts))}.."
          f"{max(map(len, prompts))}) x {NEW_TOKENS} tokens in {time.time() - t0:.1f}s")
    return Case(name, mdir, prompts, ref, tmp_root / f"probe-{name}", weights)


@pytest.fixture(scope="module")
def case_factory(tmp_path_factory, probe_bin):
    tmp_root = tmp_path_factory.mktemp("hf_parity")

    def get(name: str, weights: str = "f32") -> Case:
        if (name, weights) not in _CASES:
            _CASES[(name, weights)] = _build_case(name, weights, tmp_root)
        return _CASES[(name, weights)]

    yield get
    _CASES.clear()


def _f32(values) -> np.ndarray:
    return np.asarray(values, dtype=np.float64).astype(np.float32)


def _check_logits(name, i, what, got, ref):
    got = _f32(got)
    assert got.shape == ref.shape, \
        f"{name} prompt {i}: {what} has {got.shape[0]} values, HF has {ref.shape[0]}"
    assert np.isfinite(got).all(), f"{name} prompt {i}: {what} has non-finite values"
    err = float(np.max(np.abs(got.astype(np.float64) - ref.astype(np.float64))))
    scale = float(np.max(np.abs(ref)))
    assert err <= LOGIT_RTOL * scale, (
        f"{name} prompt {i}: {what} differ from HF: max |diff| {err:.3g} > "
        f"{LOGIT_RTOL} * max |ref| ({scale:.3g}); worst index {int(np.argmax(np.abs(got - ref)))}")
    return err / scale if scale else 0.0


# ----------------------------------------------------------------------------- tests

# A hang guard only (the test takes minutes on 2 busy cores: the real model's HF reference and
# probe runs); wider than the suite-wide default.
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("weights", WEIGHTS)
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_hf_parity(name, weights, case_factory):
    case = case_factory(name, weights)
    results = case.probe()
    mismatches, near_ties, worst_rel = [], 0, 0.0
    failures = []
    ref = case.ref
    vocab = ref["first"].shape[1]
    for i, res in enumerate(results):
        for s, (got, want) in enumerate(zip(res["argmax"], case.tokens[i])):
            ids, vals = ref["top_ids"][i, s], ref["top_vals"][i, s]
            top2_gap = float(vals[0]) - float(vals[1])
            if top2_gap <= NEAR_TIE:
                near_ties += 1
            got = int(got)
            if got == int(want):
                continue
            if not 0 <= got < vocab:
                failures.append(f"prompt {i} step {s}: probe argmax {got} is out of range")
                continue
            hit = np.nonzero(ids == got)[0]
            if hit.size:
                gap, gap_txt = float(vals[0]) - float(vals[hit[0]]), ""
            else:   # not in HF's top-K: the gap is at least top1 - topK
                gap, gap_txt = float(vals[0]) - float(vals[-1]), ">= "
            mismatches.append((i, s, got, int(want), gap))
            if gap > NEAR_TIE:
                failures.append(
                    f"prompt {i} step {s}: probe argmax {got} != HF token {want}; HF logit gap "
                    f"{gap_txt}{gap:.3g} > {NEAR_TIE} (HF top-2 gap {top2_gap:.3g}, HF logit of "
                    f"{want} = {float(vals[0]):.6f})")
        worst_rel = max(worst_rel, _check_logits(name, i, "first_logits", res["first_logits"],
                                                 ref["first"][i]))
        worst_rel = max(worst_rel, _check_logits(name, i, "last_logits", res["last_logits"],
                                                 ref["last"][i]))
    steps = sum(len(t) for t in case.tokens)
    print(f"[{name}/{weights}] parity: {steps} scored steps, {len(mismatches)} argmax mismatches "
          f"(all must be near-ties), {near_ties} HF near-tie positions (top-2 gap <= {NEAR_TIE}), "
          f"worst relative logit error {worst_rel:.3g}")
    assert not failures, f"{name}: argmax differs from HF beyond near-ties:\n" + \
        "\n".join(failures[:20]) + (f"\n... {len(failures) - 20} more" if len(failures) > 20 else "")


def _same_bits(a, b) -> bool:
    fa, fb = _f32(a), _f32(b)
    return fa.shape == fb.shape and np.array_equal(fa.view(np.uint32), fb.view(np.uint32))


# A hang guard only (the test takes minutes on 2 busy cores: the real model's HF reference and
# probe runs); wider than the suite-wide default.
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("weights", WEIGHTS)
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_batch_and_chunk_invariance(name, weights, case_factory):
    case = case_factory(name, weights)
    prompts, forced, tag = None, None, None
    if name == "smollm2-135m":
        # keep the real model's extra runs short: 4 prompts, 16 forced tokens
        prompts = case.prompts[:4]
        forced = [t[:16] for t in case.tokens[:4]]
        tag = "short"
    variants = {
        "joint": case.probe(batch_mode="joint", prompts=prompts, forced=forced, tag=tag),
        "alone": case.probe(batch_mode="alone", prompts=prompts, forced=forced, tag=tag),
        "chunk7-joint": case.probe(chunk=7, batch_mode="joint", prompts=prompts, forced=forced,
                                   tag=tag),
        "chunk7-alone": case.probe(chunk=7, batch_mode="alone", prompts=prompts, forced=forced,
                                   tag=tag),
    }
    base_name, base = "joint", variants["joint"]
    problems = []
    for vname, res in variants.items():
        if vname == base_name:
            continue
        for i, (a, b) in enumerate(zip(base, res)):
            if list(a["argmax"]) != list(b["argmax"]):
                problems.append(f"prompt {i}: argmax differs between {base_name} and {vname}")
            for key in ("first_logits", "last_logits"):
                if not _same_bits(a[key], b[key]):
                    d = np.abs(_f32(a[key]) - _f32(b[key]))
                    problems.append(f"prompt {i}: {key} not bit-identical between {base_name} "
                                    f"and {vname} ({int((d > 0).sum())} values differ, max "
                                    f"{float(d.max()):.3g})")
    n = len(base)
    print(f"[{name}/{weights}] invariance: {n} prompts x {len(variants)} variants "
          f"(batch joint/alone x chunk default/7): {'bit-identical' if not problems else 'DIFFER'}")
    assert not problems, f"{name}: batch/chunk invariance broken:\n" + "\n".join(problems[:20])
