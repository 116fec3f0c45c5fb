"""`python -m testbed generate` end to end on dummy weights with the byte-level tokenizer."""
from testbed.__main__ import main
from testbed.generate import generate
from testbed.model.qwen2 import Qwen2Model
from testbed.weights import load_model

MODEL = "dummy:qwen2-tiny"


def expected_text(prompt: str, max_tokens: int, chat: bool = False) -> str:
    loaded = load_model(MODEL)
    tok = loaded.tokenizer
    if chat:
        prompt = tok.apply_chat_template([{"role": "user", "content": prompt}])
    out = generate(Qwen2Model(loaded.config, loaded.weights), [tok.encode(prompt)],
                   max_tokens=max_tokens, eos_token_ids=loaded.eos_token_ids, tokenizer=tok)
    return out.completions[0].text


def test_streams_the_greedy_continuation_and_reports_speed(capsys):
    assert main(["generate", "--model", MODEL, "--prompt", "Hello", "--max-tokens", "12"]) == 0
    out, err = capsys.readouterr()
    assert out == expected_text("Hello", 12) + "\n"
    assert "prefill: 5 tokens" in err
    assert "decode: 11 tokens in 11 steps" in err and "tokens/s" in err
    assert "BLAS" in err


def test_several_prompts_with_chat_template_and_options(capsys):
    argv = ["generate", "--model", MODEL, "--prompt", "Hi", "--prompt", "Good day", "--chat",
            "--max-tokens", "6", "--kernels", "reference", "--quant-bits", "8"]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert out.count("--- completion") == 2 and "--- completion 1 (length) ---" in out
    assert "reference kernels, 8-bit/64" in err
    assert "(batch 2)" in err


def test_greedy_cli_equals_the_api_with_chat(capsys):
    assert main(["generate", "--model", MODEL, "--prompt", "Hey", "--chat",
                 "--max-tokens", "5"]) == 0
    assert capsys.readouterr().out == expected_text("Hey", 5, chat=True) + "\n"


def test_bad_model_spec_is_a_clear_error(capsys):
    assert main(["generate", "--model", "no/such/thing/here", "--prompt", "x"]) == 2
    assert "error: model spec" in capsys.readouterr().err
