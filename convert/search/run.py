"""`jet-nemotron search placement`: validate, build the eval sets, train the supernet, search, write the folder.

Everything that can be wrong with the input (objective names, K + M against the layer count, a window for "swa",
an unsupported source, an empty eval set, too little training text) is checked before the supernet trains.
The output folder is written under a temporary name beside OUT and renamed when complete; the supernet's
checkpoints and the scores of every evaluated placement live in OUT.ckpt/, so a killed run resumes with --resume.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .objectives import LMSet, Normaliser, code_set, mc_set, parse_objectives, retrieval_set, MC_EXAMPLE
from .placement import Scorer, beam_search
from .kl_guided import kl_guided
from .report import layer_map_json, write_outputs
from .supernet import Supernet
from .train import SupernetConfig, train_supernet

METHODS = ("beam", "kl-guided")


@dataclass
class EvalConfig:
    retrieval_n: int = 16
    retrieval_length: int = 2048
    retrieval_kind: str = "passkey"
    lm_rows: int = 8
    lm_length: int = 1024
    code_n: int = 20
    code_max_tokens: int = 768
    mc_file: str = str(MC_EXAMPLE)
    seed: int = 1234


def check_shape(num_layers: int, attn: int, swa: int, window: int | None, method: str, beam: int) -> None:
    """The errors a search can hit from its flags alone (before anything is loaded or trained)."""
    if method not in METHODS:
        raise ValueError(f"--method must be one of {list(METHODS)}, got {method!r}")
    if attn < 0 or swa < 0:
        raise ValueError(f"--attn and --swa must be >= 0, got {attn} and {swa}")
    if attn + swa > num_layers:
        raise ValueError(f"--attn {attn} + --swa {swa} = {attn + swa} layers, but the source has only {num_layers}")
    if attn + swa == 0:
        raise ValueError("--attn and --swa are both 0: there is nothing to place")
    if swa and not window:
        raise ValueError("--swa needs a sliding window size (--window)")
    if beam < 1:
        raise ValueError(f"--beam must be >= 1, got {beam}")


def build_eval_sets(weights: dict, tok, eval_ids: list[int], ev: EvalConfig) -> dict:
    """One set per named objective (weight 0 too: it is reported), from the held-out token stream `eval_ids`."""
    sets = {}
    for name in weights:
        if name == "lm":
            n = min(ev.lm_rows, len(eval_ids) // ev.lm_length)
            if n < 1:
                raise ValueError(f"lm eval: the held-out text has {len(eval_ids)} tokens, fewer than one row of "
                                 f"--lm-length {ev.lm_length}; give more --eval-data or a smaller --lm-length")
            sets[name] = LMSet("lm", torch.tensor(eval_ids[: n * ev.lm_length]).view(n, ev.lm_length))
        elif name == "retrieval":
            sets[name] = retrieval_set(tok, eval_ids, ev.retrieval_n, ev.retrieval_length, ev.seed, ev.retrieval_kind)
        elif name == "code":
            sets[name] = code_set(tok, ev.code_n, ev.code_max_tokens)
        elif name == "mc":
            sets[name] = mc_set(tok, ev.mc_file)
    return sets


def search_supernet(net: Supernet, sets: dict, weights: dict, attn: int, swa: int, beam: int, method: str, device,
                    autocast: bool = False, cache_path: Path | None = None, progress: bool = True,
                    scorer: Scorer | None = None) -> tuple[dict, Scorer]:
    """Score the two ends (source, all-JetBlock), then run the method. Returns (result, scorer). A `scorer` from an
    earlier call on the same supernet and sets reuses its scores (they do not depend on the objective weights)."""
    L = net.num_layers
    scorer = scorer or Scorer(net, sets, device, autocast, cache_path)
    t0 = time.perf_counter()
    teacher, floor = scorer(tuple(["attn"] * L)), scorer(tuple(["jet"] * L))
    norm = Normaliser(weights, {k: v["score"] for k, v in teacher.items()}, {k: v["score"] for k, v in floor.items()})
    dropped = sorted(set(k for k, w in weights.items() if w > 0) - set(norm.usable()))
    if dropped:
        print(f"warning: objective(s) {dropped} score the same for the source and all-JetBlock; left out of the ranking")
    if method == "beam":
        result = beam_search(scorer, norm, L, attn, swa, beam, progress)
    else:
        result = kl_guided(scorer, norm, L, attn, swa, progress)
    result.update(num_layers=L, endpoints={"source": teacher, "all_jet": floor},
                  best_scores=scorer(result["placement"]), search_s=time.perf_counter() - t0,
                  evaluations=scorer.evaluations, dropped_objectives=dropped)
    return result, scorer


def source_config(source: str, gguf_file: str | None = None):
    """The source's config without its weights (a folder, a Hub id, or a .gguf file / folder + gguf_file)."""
    from transformers import AutoConfig

    path = Path(source)
    if gguf_file is None and path.is_file() and path.suffix == ".gguf":
        source, gguf_file = str(path.parent), path.name
    return AutoConfig.from_pretrained(source, **({"gguf_file": gguf_file} if gguf_file else {}))


def _fingerprint(**kw) -> str:
    return hashlib.sha1(json.dumps(kw, sort_keys=True, default=str).encode()).hexdigest()[:10]


def search_placement(source: str, out: str | Path, attn: int, swa: int, objective: str, data: list[str],
                     eval_data: list[str] | None = None, beam: int = 4, method: str = "beam",
                     window: int | None = None, jet: dict | None = None, seq_len: int = 1024,
                     train: SupernetConfig | None = None, ev: EvalConfig | None = None, text_field: str = "text",
                     max_tokens: int | None = None, resume: bool = False, overwrite: bool = False,
                     ckpt_dir: str | Path | None = None, gguf_file: str | None = None) -> dict:
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    from ..data import check_tokenizer_fits, iter_documents, load_packed, pack_documents
    from ..export import load_source
    from ..qwen_to_jet import SourceDims

    out = Path(out)
    train = train or SupernetConfig()
    ev = ev or EvalConfig()
    weights = parse_objectives(objective)
    if out.exists() and not overwrite:
        raise FileExistsError(f"output folder {out} exists; pass --overwrite to replace it")
    if not data:
        raise ValueError("--data: the supernet needs training text (files or folders)")
    if Path(source).exists() or "/" in source:
        src_cfg = source_config(source, gguf_file)
        SourceDims.from_config(src_cfg)  # unsupported source: error before the weights load
        check_shape(src_cfg.num_hidden_layers, attn, swa, window, method, beam)
    train.attn, train.swa = attn, swa
    t_start = time.perf_counter()
    src_model, tok = load_source(source, gguf_file)
    L = src_model.config.num_hidden_layers
    check_shape(L, attn, swa, window, method, beam)
    train.check(L)
    if tok is None:
        raise ValueError(f"source {source} has no tokenizer; the eval sets need one")
    check_tokenizer_fits(tok, src_model.config.vocab_size, f"source model {source}")
    packed = load_packed(data, tok, seq_len, text_field, eval_fraction=0.05 if not eval_data else 0.0,
                         min_train_rows=train.batch_size, max_tokens=max_tokens)
    if eval_data:
        eval_ids = pack_documents(iter_documents(eval_data, text_field), tok, 2, 0.0).train.flatten().tolist()
    else:
        eval_ids = packed.eval.flatten().tolist()
    sets = build_eval_sets(weights, tok, eval_ids, ev)  # empty or too-short sets fail here, before training
    print("eval sets: " + ", ".join(f"{k} {getattr(s, 'num_tokens', 0):,} tokens" for k, s in sets.items())
          + f"; supernet data {packed.train.numel():,} tokens in {packed.train.shape[0]} rows of {seq_len}")

    acc = Accelerator(mixed_precision=train.mixed_precision,
                      kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    bf16 = train.mixed_precision == "bf16"
    net = Supernet.from_source(src_model, jet, window, train.seed, torch.bfloat16 if bf16 else None)
    jet_sizes = dict(net.jet_config.efficient_attention_config["jet"])
    del src_model
    ckpt_dir = Path(ckpt_dir) if ckpt_dir else out.with_name(out.name + ".ckpt")
    if not resume and ckpt_dir.is_dir() and acc.is_main_process:
        # a fresh supernet: the old checkpoints and the scores measured on the old one must not be picked up
        for old in [*ckpt_dir.glob("supernet_step_*.pt"), *ckpt_dir.glob("scores_*.jsonl")]:
            old.unlink()
    acc.wait_for_everyone()
    t0 = time.perf_counter()
    summary_train = train_supernet(net, packed.train, train, ckpt_dir, resume, acc)
    train_s = time.perf_counter() - t0
    if not acc.is_main_process:  # the search runs on one process; the others are done
        return {}
    key = _fingerprint(weights=weights, ev=asdict(ev), steps=train.steps, seed=train.seed, data=data,
                       eval_data=eval_data, window=window)
    result, scorer = search_supernet(net, sets, weights, attn, swa, beam, method, acc.device, bf16,
                                     ckpt_dir / f"scores_{key}.jsonl")
    lmap = layer_map_json(result, jet_sizes, window, source, method, weights)
    summary = {"source": source, "method": method, "objective": weights, "attn": attn, "swa": swa, "beam": beam,
               "window": window, "placement": list(result["placement"]),
               "layer_map": lmap["layer_types"], "best_scores": result["best_scores"],
               "endpoints": result["endpoints"], "rounds": result["rounds"], "evaluations": result["evaluations"],
               "timings_s": {"total": time.perf_counter() - t_start, "supernet_train": train_s,
                             "search": result["search_s"], "scoring": scorer.seconds,
                             "per_evaluation": scorer.seconds / max(1, len(scorer.log))},
               "supernet": {"config": asdict(train), **summary_train}, "eval": asdict(ev),
               "eval_tokens": {k: s.num_tokens for k, s in sets.items()}, "device": str(acc.device)}
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    title = f"{Path(source).name}: {method}, objective {','.join(weights)}, K={attn} M={swa}"
    write_outputs(tmp, result, lmap, scorer.log, summary, list(weights), title)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    t = summary["timings_s"]
    print(f"wrote {out}: {' '.join(f'{k}:{i}' for k in ('attn', 'swa') for i in [','.join(str(j) for j, x in enumerate(result['placement']) if x == k)] if i)}"
          f" | {result['evaluations']} placements scored in {t['scoring']:.1f} s, supernet {t['supernet_train']:.1f} s,"
          f" total {t['total']:.1f} s")
    return summary
