"""`tandem generate` as a user runs it: a real process on the default model."""
import json
import shutil
import subprocess

import pytest

from conftest import tandem_binary


def generate(model_dir, *args, check=True):
    cmd = [str(tandem_binary("tandem")), "generate", "--model", str(model_dir), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_chat_answers_the_capital_of_france(model_dir):
    out = generate(model_dir, "--chat", "--max-tokens", "24", "What is the capital of France?")
    assert "Paris" in out.stdout
    # Only generated text on stdout: no log lines, no prompt echo.
    assert "capital of France?" not in out.stdout
    assert "loaded" not in out.stdout


def test_seeded_sampling_is_reproducible(model_dir):
    args = ["--chat", "--max-tokens", "24", "--temperature", "0.9", "--top-p", "0.95",
            "--seed", "7", "Tell me a story about a fox."]
    a = generate(model_dir, *args).stdout
    b = generate(model_dir, *args).stdout
    assert a == b and a.strip()
    c = generate(model_dir, *args[:-3], "--seed", "8", args[-1]).stdout
    assert c != a, "a different seed should give a different story"


def test_stop_string_ends_output_before_it(model_dir):
    full = generate(model_dir, "--chat", "--max-tokens", "24",
                    "What is the capital of France?").stdout
    assert "Paris" in full
    cut = generate(model_dir, "--chat", "--max-tokens", "24", "--stop", "Paris",
                   "What is the capital of France?").stdout
    assert cut.rstrip("\n") == full[: full.index("Paris")]


def test_bad_inputs_give_clear_errors(model_dir, tmp_path):
    missing = generate(tmp_path / "nope", "hi", check=False)
    assert missing.returncode != 0
    assert "nope" in missing.stderr and "config.json" in missing.stderr

    # A model whose chat template is not a known format is refused with a clear message.
    odd = tmp_path / "odd-template"
    shutil.copytree(model_dir, odd)
    cfg = json.loads((odd / "tokenizer_config.json").read_text())
    cfg["chat_template"] = "{% for m in messages %}<<{{ m.content }}>>{% endfor %}"
    (odd / "tokenizer_config.json").write_text(json.dumps(cfg))
    r = generate(odd, "--chat", "hi", check=False)
    assert r.returncode != 0
    assert "FAILED_PRECONDITION" in r.stderr and "tokenizer_config.json" in r.stderr
    assert r.stdout == ""

    r = generate(model_dir, "--top-p", "1.5", "--temperature", "1", "hi", check=False)
    assert r.returncode != 0 and "top_p" in r.stderr


@pytest.mark.timeout(900)
def test_server_flag_streams_the_same_text_from_a_router(model_dir, tmp_path):
    from serve_util import Serve, free_port

    s = Serve(model_dir, tmp_path / "serve")
    try:
        router = s.wait_for_router()
        for args in (["--chat", "--max-tokens", "24", "What is the capital of France?"],
                     ["--chat", "--max-tokens", "24", "--temperature", "0.9", "--top-p", "0.95",
                      "--seed", "7", "--stop", "fox", "Tell me a story about a fox."]):
            local = generate(model_dir, "--threads", "1", *args).stdout
            remote = generate(model_dir, "--server", router, *args).stdout
            assert remote == local and local.strip(), (args, local, remote)
        bad = generate(model_dir, "--server", router, "--temperature", "-1", "hi", check=False)
        assert bad.returncode != 0 and "INVALID_ARGUMENT" in bad.stderr
        assert "sampling.temperature" in bad.stderr
    finally:
        s.stop()
    gone = generate(model_dir, "--server", f"127.0.0.1:{free_port()}", "hi", check=False)
    assert gone.returncode != 0 and "UNAVAILABLE" in gone.stderr
