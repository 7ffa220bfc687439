"""examples/generate.py and examples/evaluate_model.py on a tiny saved model with a tokenizer built here (CPU)."""

import importlib.util
import json
import re

import torch

from conftest import REPO, tiny_model

TEXT = ("def add(a, b):\n    return a + b\n\n" * 40) + ("class Point:\n    x: int = 0\n    y: int = 0\n\n" * 40)


def _example(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _saved_model(tmp_path):
    from convert.tiny_teacher import build_tokenizer

    tok = build_tokenizer([TEXT], vocab_size=300)
    model = tiny_model(vocab_size=len(tok), pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder, tok


def test_generate_example_left_pads_a_batch_and_reports_cache(tmp_path, capsys):
    folder, _ = _saved_model(tmp_path)
    texts = _example("generate").generate(str(folder), ["def add(", "class Point:\n    x"], max_new_tokens=6)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
    out = capsys.readouterr().out
    assert "tok/s" in out and "linear_attention" in out and "full_attention" in out


def test_evaluate_example_reports_perplexity_and_passkey(tmp_path):
    folder, tok = _saved_model(tmp_path)
    ev = _example("evaluate_model")
    result = ev.evaluate(str(folder), TEXT, seq_len=64, passkey_contexts=[96], trials=2)
    # the same number as the model's own loss over the packed rows
    from jet_nemotron import JetNemotronForCausalLM

    ids = tok(TEXT, add_special_tokens=False)["input_ids"]
    rows = torch.tensor(ids[: (len(ids) // 64) * 64]).view(-1, 64)[:64]
    model = JetNemotronForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        loss = model(rows, labels=rows, use_cache=False).loss
    assert abs(result["perplexity"] - loss.exp().item()) < 1e-3 * loss.exp().item()
    assert set(result) == {"model", "tokens", "perplexity", "passkey@96"}
    out = tmp_path / "eval.json"
    (tmp_path / "text.txt").write_text(TEXT)
    ev.main(["--model", str(folder), "--text", str(tmp_path / "text.txt"), "--seq-len", "64",
             "--passkey-contexts", "96", "--trials", "1", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved[0]["model"] == str(folder) and saved[0]["tokens"] == rows.numel()
    assert abs(saved[0]["perplexity"] - result["perplexity"]) < 1e-6 * result["perplexity"]


def test_evaluate_example_scores_passkey_answers(tmp_path, monkeypatch):
    """passkey@C is the fraction of trials answered with the planted key: a stand-in generate() that reads the key
    from each prompt answers right on every other call, so 4 trials must score exactly 0.5 (a random tiny model
    scores 0 whatever the scoring does)."""
    from transformers import GenerationMixin

    folder, tok = _saved_model(tmp_path)
    lengths = []

    def half_right(self, input_ids, **_):
        lengths.append(input_ids.shape[1])
        key = re.search(r"PASSKEY = (\d{5})", tok.decode(input_ids[0].tolist())).group(1)
        answer = key if len(lengths) % 2 else str(int(key) // 10)  # wrong: the key without its last digit
        return torch.cat([input_ids, torch.tensor([tok(answer, add_special_tokens=False)["input_ids"]])], dim=1)

    monkeypatch.setattr(GenerationMixin, "generate", half_right)
    result = _example("evaluate_model").evaluate(str(folder), TEXT, seq_len=64, passkey_contexts=[96], trials=4)
    assert lengths == [96] * 4  # one prompt of the asked context per trial
    assert result["passkey@96"] == 0.5
