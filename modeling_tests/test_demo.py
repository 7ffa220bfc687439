"""`jet-nemotron demo`, the README's first command, end to end on the CPU at a few steps: it builds its teacher,
converts, distils on its own corpus folder (held-out modules under heldout/), saves, reloads and generates."""

from convert.demo import run_demo


def test_demo_runs_end_to_end(tmp_path, capsys):
    res = run_demo(tmp_path / "demo", teacher_steps=3, stage1_steps=2, stage2_steps=2)
    out = tmp_path / "demo" / "jet-nemotron-demo"
    for name in ("README.md", "loss_curve.png", "distillation.json", "config.json", "model.safetensors"):
        assert (out / name).is_file(), name
    card = (out / "README.md").read_text()
    assert "license: apache-2.0" in card and str(tmp_path) not in card
    assert res["ppl_student"] > 0 and res["ppl_teacher"] > 0
    assert "--- student ---" in capsys.readouterr().out
