"""A GPU lease's `results.tgz` (from `real_model_session.sh poll`) into a record folder under
benchmarks/results/real_model/: the files a record keeps, the step log without its progress bars, the card's samples
by stage (and the card job's over each profile's steps), and the student's HumanEval against earlier records'
students. NOTES.md is left to a person.

    python benchmarks/record_run.py RESULTS.tgz acceptance_v9_15min_h100 [--against acceptance_v8_15min_h100 ...]

The folder is written under a temporary name and renamed when complete; an existing one is refused.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from humaneval_answers import student_files  # noqa: E402
from stamp import STAMP_LINE_START, stamp_line  # noqa: E402

RESULTS = HERE / "results" / "real_model"
# (path in the archive, name in the record); a missing one is left out (a lease without a card job has no card tests)
KEEP = [("out/card_tests.log", "card_tests.log"), ("out/card_tests_after.log", "card_tests_after_run.log"),
        ("out/switch_tests.log", "switch_tests.log"),
        ("optins.log", "optins.log"),
        ("save_teacher.log", "save_teacher.log"), ("tokenise.log", "tokenise.log"),
        ("out/optins/optins.json", "optins.json"), ("out/kernels/kernels.json", "kernels.json"),
        ("out/gpu_samples.csv", "gpu_samples.csv"), ("out/gpu_samples_card.csv", "gpu_samples_card.csv"),
        ("out/teacher_fp8/teacher_fp8_speed.json", "teacher_fp8_speed.json"),
        ("out/variants/variants.json", "variants.json"), ("out/variants/variants.md", "variants.md"),
        ("out/variants/variants_kl.png", "variants_kl.png")]
BAR = re.compile(r"%\|")  # a tqdm progress line
AFTER_BAR = re.compile(r"\](stage \d: \d+ ms a step.*)$")  # the budget's line, printed onto a bar's frame


def step_log(text: str) -> str:
    """variants.log without its progress bars: carriage-return frames split into lines, the budget's lines taken off
    the bar frames they were printed onto, bar lines and blanks out."""
    out = []
    for ln in text.replace("\r", "\n").split("\n"):
        m = AFTER_BAR.search(ln)
        if m:
            out.append(m.group(1))
        elif ln.strip() and not BAR.search(ln):
            out.append(ln)
    return "\n".join(out) + "\n"


def stamp_traces(folder: Path, stamps: list[dict]) -> None:
    """The run's stamp into each trace record under `folder` (`convert/step_trace.py` writes them inside a run,
    which knows no commit) and onto each trace table's first line, as every result file carries one."""
    for f in sorted(folder.rglob("*.json")):
        rec = json.loads(f.read_text())
        f.write_text(json.dumps({"stamp": stamps, **{k: v for k, v in rec.items() if k != "stamp"}}, indent=1))
    for f in sorted(folder.rglob("*.txt")):
        text = f.read_text()
        if not text.startswith(STAMP_LINE_START):
            f.write_text(f"{stamp_line(stamps[0])}\n\n{text}")


def main(argv: list[str] | None = None) -> Path:
    """Write the record folder; print what it holds and each comparison; return its path."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", type=Path, help="results.tgz from the lease's last poll")
    ap.add_argument("name", help="the record's folder name, e.g. acceptance_v9_15min_h100")
    ap.add_argument("--against", nargs="*", default=[], help="earlier records whose students to compare with")
    ap.add_argument("--root", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    dest = args.root / args.name
    if dest.exists():
        raise SystemExit(f"{dest} exists: pick another name or remove it first")
    against = [args.root / a for a in args.against]
    for a in against:
        if not student_files(a):
            raise SystemExit(f"{a}: no student answer files (humaneval_*.jsonl.gz) to compare with")
    with tempfile.TemporaryDirectory() as unpacked:
        try:
            with tarfile.open(args.results) as t:
                t.extractall(unpacked, filter="data")
        except (tarfile.TarError, OSError) as err:
            raise SystemExit(f"{args.results}: not a readable results archive ({err})") from err
        src = Path(unpacked)
        if not (src / "out/variants/variants.json").is_file():
            raise SystemExit(f"{args.results} holds no out/variants/variants.json: the pipeline had not finished "
                             "when it was packed (poll again)")
        tmp = dest.with_name(f".{dest.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for rel, name in KEEP:
            if (src / rel).is_file():
                shutil.copy2(src / rel, tmp / name)
        for p in (src / "out/variants").glob("humaneval_*.jsonl.gz"):
            shutil.copy2(p, tmp / p.name)
        for p in (src / "out/profile").glob("*") if (src / "out/profile").is_dir() else []:
            shutil.copy2(p, tmp / p.name)
        if (src / "out/variants/trace").is_dir():  # a run's own traced steps (TRACE_STEPS), by variant
            shutil.copytree(src / "out/variants/trace", tmp / "trace")
        for log, name in (("variants.log", "variants.log"), ("speed.log", "card_job.log")):
            if (src / log).is_file():
                (tmp / name).write_text(step_log((src / log).read_text(errors="replace")))
        runs = tmp / "variants.json"
        res = json.loads(runs.read_text())
        if (tmp / "trace").is_dir():  # traced in the run's process: the run's stamp is theirs
            stamp_traces(tmp / "trace", res["stamp"])
        # a variant that raised left no row; what it measured before is in partial.json (the last variant's row
        # as far as it got), kept, and its step history lines up the card's samples
        failed = {f["name"] for f in res.get("failed", [])}
        partial = src / "out/variants/partial.json"
        row = json.loads(partial.read_text()) if failed and partial.is_file() else {}
        if row.get("name") in failed:
            shutil.copy2(partial, tmp / "partial.json")
            runs = Path(unpacked) / "runs_with_partial.json"
            runs.write_text(json.dumps({"variants": res["variants"] + [row]}))
        if (tmp / "gpu_samples.csv").is_file():
            import gpu_by_stage

            try:
                gpu_by_stage.main(["--samples", str(tmp / "gpu_samples.csv"), "--runs", str(runs),
                                   "--out", str(tmp)])
            except ValueError as err:  # a run logged before its steps carried times, or no readable samples
                print(f"card samples not lined up with the steps: {err}")
        # the card job's clocks over each profile's steps (the profiles keep their step records since 6f8f688),
        # to set beside the run's stages above: clocks_<profile>/gpu_by_stage.json
        if (tmp / "gpu_samples_card.csv").is_file():
            import gpu_by_stage

            for prof in sorted(tmp.glob("profile_distill_*.json")):
                if "history" not in json.loads(prof.read_text()):
                    continue
                try:
                    gpu_by_stage.main(["--samples", str(tmp / "gpu_samples_card.csv"), "--runs", str(prof),
                                       "--out", str(tmp / f"clocks_{prof.stem.removeprefix('profile_distill_')}")])
                except ValueError as err:
                    print(f"{prof.name}: card samples not lined up with its steps: {err}")
        tmp.rename(dest)
    print(f"{dest}: {', '.join(sorted(p.name for p in dest.iterdir()))}")
    from convert.eval import paired

    for new in student_files(dest):
        for a in against:
            for old in student_files(a):
                paired.main([str(old), str(new)])
    return dest


if __name__ == "__main__":
    main()
