"""Tandem's C++ tokenizers against the Hugging Face `tokenizers` and `sentencepiece` packages,
and its chat templates against the Jinja templates they stand for.

The C++ side runs through the `tandem-tokenize` tool (JSON lines on stdin/stdout), found in
$TANDEM_BUILD_DIR/bin (default <repo>/build/bin). The SmolLM2 folder is $TANDEM_MODEL_DIR
(default <repo>/models/SmolLM2-135M-Instruct).
"""

import copy
import json
import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest

tokenizers = pytest.importorskip("tokenizers")
spm = pytest.importorskip("sentencepiece")
jinja2 = pytest.importorskip("jinja2")

REPO = Path(__file__).resolve().parents[2]
BUILD_DIR = Path(os.environ.get("TANDEM_BUILD_DIR", REPO / "build"))
TOOL = BUILD_DIR / "bin" / "tandem-tokenize"
LICENSE = Path("/usr/share/common-licenses/GPL-3")

CORPUS = [
    "",
    "Hello world",
    "Hello, World! How are you?",
    "café naïve résumé façade Ångström ÉCOLE",
    "e\u0301 decomposed vs \u00e9 composed, A\u030a",
    "日本語のテキストと中文文本，还有한국어.",
    "emoji 😀👍🏽 👨‍👩‍👧‍👦 🇫🇷 ✨",
    "  leading spaces and trailing   ",
    "runs\n\n\nof newlines\r\n\r\nand\ttabs\t\t here",
    "    \n   \n\t",
    "x = 12345 + 3.14159 * 1e-10; // 2024-01-01 numbers ½ ² ٣",
    "def f(x):\n    return {'a': [1, 2, 3]}  # comment\n\nclass A:\n\tpass\n",
    "I'm sure they'll say we've done it, isn't it? He'd. THEY'LL WE'VE",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "text<|im_end|>more<|endoftext|><repo_name>x",
    "<|im_start|> spaced <|im_end|>",
    "symbols: @#$%^&*()_+-=[]{}|;:'\",.<>/?`~ \\ ",
    "mixed Русский текст и Ελληνικά και العربية עברית हिन्दी",
    "a" * 5000,
    " " * 300 + "x" + "\n" * 200,
    "The quick brown fox jumps over the lazy dog. " * 200,
]


def run_tool(path, requests):
    if not TOOL.exists():
        pytest.skip(f"{TOOL} not built (ninja tandem-tokenize)")
    proc = subprocess.run(
        [str(TOOL), str(path)],
        input="".join(json.dumps(r) + "\n" for r in requests),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    out = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(out) == len(requests)
    for o in out:
        assert "error" not in o, o
    return out


@pytest.fixture(scope="session")
def model_dir():
    d = Path(os.environ.get("TANDEM_MODEL_DIR", REPO / "models" / "SmolLM2-135M-Instruct"))
    if not (d / "tokenizer.json").exists():
        pytest.skip(f"{d} has no tokenizer.json (run tools/setup.sh)")
    return d


@pytest.fixture(scope="session")
def smol_json(model_dir):
    return json.loads((model_dir / "tokenizer.json").read_text())


# Pre-tokenization / normalization of other model families, on SmolLM2's vocab and merges.
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def llama3_variant(base):
    j = copy.deepcopy(base)
    j["normalizer"] = None
    j["pre_tokenizer"] = {
        "type": "Sequence",
        "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": LLAMA3_SPLIT}, "behavior": "Isolated",
             "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
             "use_regex": False},
        ],
    }
    # Llama-3 prepends <|begin_of_text|>; <|im_start|> (id 1) stands in for it here.
    j["post_processor"] = {
        "type": "Sequence",
        "processors": [
            {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False,
             "use_regex": True},
            {"type": "TemplateProcessing",
             "single": [{"SpecialToken": {"id": "<|im_start|>", "type_id": 0}},
                        {"Sequence": {"id": "A", "type_id": 0}}],
             "pair": [{"SpecialToken": {"id": "<|im_start|>", "type_id": 0}},
                      {"Sequence": {"id": "A", "type_id": 0}},
                      {"SpecialToken": {"id": "<|im_start|>", "type_id": 1}},
                      {"Sequence": {"id": "B", "type_id": 1}}],
             "special_tokens": {"<|im_start|>": {"id": "<|im_start|>", "ids": [1],
                                                 "tokens": ["<|im_start|>"]}}},
        ],
    }
    j["model"]["ignore_merges"] = True
    return j


def qwen2_variant(base):
    j = copy.deepcopy(base)
    j["normalizer"] = {"type": "NFC"}
    j["pre_tokenizer"] = {
        "type": "Sequence",
        "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": QWEN2_SPLIT}, "behavior": "Isolated",
             "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
             "use_regex": False},
        ],
    }
    j["post_processor"] = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
                           "use_regex": False}
    # Qwen2 marks its added tokens normalized=false; one normalized non-special token here too.
    j["added_tokens"].append({"id": 49152, "content": "<tool_x>", "single_word": False,
                              "lstrip": True, "rstrip": True, "normalized": True,
                              "special": False})
    return j


def gpt2_prefix_space_variant(base):
    j = copy.deepcopy(base)
    j["pre_tokenizer"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                          "use_regex": True}
    j["model"]["merges"] = [" ".join(m) if isinstance(m, list) else m
                            for m in j["model"]["merges"] if " " not in "".join(m)]
    return j


VARIANTS = {
    "smollm2": lambda j: j,
    "llama3": llama3_variant,
    "qwen2": qwen2_variant,
    "gpt2_prefix_space": gpt2_prefix_space_variant,
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_byte_level_bpe_matches_hf(variant, smol_json, tmp_path):
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(VARIANTS[variant](smol_json)), encoding="utf-8")
    ref = tokenizers.Tokenizer.from_file(str(path))
    corpus = CORPUS + ["word <tool_x> next", "x<tool_x>y", "\u212b \u2126 \ufb01"]
    reqs = [{"text": t, "add_special": s} for t in corpus for s in (False, True)]
    out = run_tool(path, reqs)
    for req, got in zip(reqs, out):
        want = ref.encode(req["text"], add_special_tokens=req["add_special"]).ids
        assert got["ids"] == want, (variant, req)

    # Decode: round trip for plain text, equal to HF with and without special tokens.
    ids_list = [o["ids"] for o in out]
    dreqs = [{"ids": ids, "skip_special": skip} for ids in ids_list for skip in (False, True)]
    dout = run_tool(path, dreqs)
    for req, got in zip(dreqs, dout):
        want = ref.decode(req["ids"], skip_special_tokens=req["skip_special"])
        assert got["text"] == want, (variant, req)
        assert got["incremental"] == want
    if variant in ("smollm2", "llama3"):  # no normalizer: exact round trip
        for t, o in zip(corpus, out[::2]):
            assert ref.decode(o["ids"], skip_special_tokens=False) == t


def test_random_ids_decode_like_hf(model_dir):
    ref = tokenizers.Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    rng = random.Random(7)
    vocab = ref.get_vocab_size()
    seqs = []
    for n in range(300):
        seqs.append([rng.randrange(vocab) if rng.random() < 0.6 else rng.randrange(300)
                     for _ in range(1 + n % 50)])
    reqs = [{"ids": s, "skip_special": skip} for s in seqs for skip in (False, True)]
    for req, got in zip(reqs, run_tool(model_dir, reqs)):
        want = ref.decode(req["ids"], skip_special_tokens=req["skip_special"])
        assert got["text"] == want
        assert got["incremental"] == want
        assert "".join(got["chunks"]) == want


def test_model_folder_info(model_dir):
    (info,) = run_tool(model_dir, [{"info": True}])
    cfg = json.loads((model_dir / "tokenizer_config.json").read_text())
    ref = tokenizers.Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    assert info["vocab_size"] == ref.get_vocab_size()
    assert info["eos_id"] == ref.token_to_id(cfg["eos_token"])


# ---------------------------------------------------------------- SentencePiece

SP_CORPUS = [
    "",
    "the program",
    "This License applies to any program or other work.",
    "  multiple   spaces and\ttabs\nnewline",
    "café naïve 日本語 😀 Ωmega",
    "Numbers 12345 and 3.14, GPL-3.0-or-later!",
    "unknownwordxyzzy qqq ZZZ",
]


@pytest.fixture(scope="module", params=["bpe", "unigram"])
def sp_model(request, tmp_path_factory):
    if shutil.which("spm_train") is None or not LICENSE.exists():
        pytest.skip("spm_train (apt sentencepiece) or the GPL-3 text is missing")
    d = tmp_path_factory.mktemp(f"spm_{request.param}")
    subprocess.run(
        ["spm_train", f"--input={LICENSE}", f"--model_prefix={d / 'tokenizer'}",
         "--vocab_size=1000", "--byte_fallback=true", f"--model_type={request.param}",
         "--minloglevel=2"],
        check=True, capture_output=True)
    return d / "tokenizer.model"


def test_sentencepiece_matches_python(sp_model):
    sp = spm.SentencePieceProcessor(model_file=str(sp_model))
    corpus = SP_CORPUS + [LICENSE.read_text()[:3000]]
    reqs = [{"text": t, "add_special": False} for t in corpus]
    reqs += [{"text": t, "add_special": True} for t in corpus]
    out = run_tool(sp_model, reqs)
    n = len(corpus)
    for t, got in zip(corpus, out[:n]):
        assert got["ids"] == sp.encode(t), t
    for t, got in zip(corpus, out[n:]):
        assert got["ids"] == [sp.bos_id()] + sp.encode(t), t

    seqs = [o["ids"] for o in out[:n]]
    rng = random.Random(3)
    seqs += [[rng.randrange(3, sp.get_piece_size()) for _ in range(1 + k % 30)]
             for k in range(200)]
    dreqs = [{"ids": s, "skip_special": True} for s in seqs]
    for req, got in zip(dreqs, run_tool(sp_model, dreqs)):
        want = sp.decode(req["ids"])
        assert got["text"] == want, req
        assert got["incremental"] == want, req


# ---------------------------------------------------------------- chat templates

LLAMA2_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}"
    "{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}"
    "{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}"
    "{% endif %}{% endfor %}"
)
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}"
)

CONVERSATIONS = [
    [{"role": "user", "content": "Hi!"}],
    [{"role": "system", "content": "Be terse."}, {"role": "user", "content": " What is 2+2? "}],
    [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi, how can I help?\n"},
     {"role": "user", "content": "Tell me a joke 😀\n\nplease"}],
    [{"role": "system", "content": "S\n"}, {"role": "user", "content": "a"},
     {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}],
    [],
]


def render(template, messages, add_generation_prompt, bos="", eos=""):
    def raise_exception(msg):
        raise ValueError(msg)
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)  # as transformers does
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template).render(messages=messages, bos_token=bos, eos_token=eos,
                                            add_generation_prompt=add_generation_prompt)


def test_chat_templates_match_jinja(model_dir):
    smol_template = json.loads((model_dir / "tokenizer_config.json").read_text())["chat_template"]
    cases = []
    for conv in CONVERSATIONS:
        for gen in (True, False):
            cases.append(("auto", conv, gen, render(smol_template, conv, gen)))
            if conv:
                cases.append(("llama3", conv, gen,
                              render(LLAMA3_TEMPLATE, conv, gen, bos="<|begin_of_text|>",
                                     eos="<|eot_id|>").removeprefix("<|begin_of_text|>")))
                cases.append(("llama2", conv, gen,
                              render(LLAMA2_TEMPLATE, conv, gen, bos="<s>",
                                     eos="</s>").removeprefix("<s>")))
    reqs = [{"chat": c, "format": f, "add_generation_prompt": g} for f, c, g, _ in cases]
    for (fmt, conv, gen, want), got in zip(cases, run_tool(model_dir, reqs)):
        assert got["prompt"] == want, (fmt, conv, gen)


def test_chat_template_matches_transformers(model_dir):
    transformers = pytest.importorskip("transformers")
    tok = transformers.AutoTokenizer.from_pretrained(str(model_dir))
    reqs, wants = [], []
    for conv in CONVERSATIONS[:-1]:
        reqs.append({"chat": conv, "format": "auto", "add_generation_prompt": True})
        wants.append(tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=True))
    for got, want in zip(run_tool(model_dir, reqs), wants):
        assert got["prompt"] == want
