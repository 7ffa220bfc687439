"""Loading what `jet-nemotron eval` compares: a Jet-Nemotron folder, a plain Qwen (HF folder or .gguf file).

`load` returns an `EvalModel` (model, tokenizer, name, maximum length). `check_same_tokenizer` refuses a baseline
whose tokenizer maps text to other ids, before any long work: perplexities and retrieval answers would not compare.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass
class EvalModel:
    name: str  # the path as given
    tok: object  # a transformers tokenizer (left padding, a pad token)
    config: object
    max_length: int  # the model's max_position_embeddings (positions it was configured for)
    source: tuple[Path | str, dict]  # folder (or Hub id) and from_pretrained kwargs (gguf_file)
    model: torch.nn.Module | None = None  # set by load_weights

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def open_model(path: str) -> EvalModel:
    """Tokenizer and config of a model folder (Jet-Nemotron or Qwen), a .gguf file or a Hub id, without the
    weights: enough to check every input before the long work."""
    from transformers import AutoConfig, AutoTokenizer

    import jet_nemotron  # noqa: F401  (registers the Jet-Nemotron classes with the Auto* factories)

    p = Path(path)
    is_hub = not p.exists() and path.count("/") == 1 and not path.startswith((".", "/"))
    if not p.exists() and not is_hub:
        raise FileNotFoundError(f"model {path} does not exist (a model folder, a .gguf file or a Hub id owner/name)")
    kwargs = {}
    if is_hub:
        p = path
    elif p.is_file():
        if p.suffix != ".gguf":
            raise ValueError(f"model {path} is a file but not a .gguf; give a model folder or a GGUF file")
        kwargs["gguf_file"], p = p.name, p.parent
    elif not (p / "config.json").exists():
        raise FileNotFoundError(f"model folder {path} has no config.json")
    config = AutoConfig.from_pretrained(p, trust_remote_code=True, **kwargs)
    # trust_remote_code: a converted folder's config names our modeling code; without it transformers asks
    tok = AutoTokenizer.from_pretrained(p, trust_remote_code=True, **kwargs)
    if tok.pad_token_id is None:  # batched generation left-pads; any id works, the mask hides it
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    max_length = int(getattr(config, "max_position_embeddings", 0) or 1 << 20)
    return EvalModel(str(path), tok, config, max_length, (p, kwargs))


def load_weights(m: EvalModel, device: torch.device | None = None, dtype: torch.dtype | None = None) -> EvalModel:
    """`m` with its model on `device` (default: CUDA when present) in `dtype` (default: bf16 on CUDA, fp32 on CPU),
    eval mode. A GGUF is dequantised by transformers."""
    from transformers import AutoModelForCausalLM

    device = device or default_device()
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    folder, kwargs = m.source
    m.model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, trust_remote_code=True, **kwargs)
    m.model = m.model.to(device).eval()
    return m


def wrap(model: torch.nn.Module, tok, name: str = "model") -> EvalModel:
    """An EvalModel around a model already in memory (the search scores its candidates with the same suites)."""
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    max_length = int(getattr(model.config, "max_position_embeddings", 0) or 1 << 20)
    return EvalModel(name, tok, model.config, max_length, (name, {}), model)


def load(path: str, device: torch.device | None = None, dtype: torch.dtype | None = None) -> EvalModel:
    """`open_model` + `load_weights`."""
    return load_weights(open_model(path), device, dtype)


def check_same_tokenizer(a: EvalModel, b: EvalModel) -> None:
    """Refuse two models whose tokenizers differ (vocabulary or special tokens): their numbers would not compare."""
    va, vb = a.tok.get_vocab(), b.tok.get_vocab()
    if va != vb:
        only = sorted(set(va.items()) ^ set(vb.items()))[:3]
        raise ValueError(f"baseline {b.name} has another tokenizer than {a.name} ({len(va):,} vs {len(vb):,} "
                         f"tokens; e.g. {only}): perplexity and retrieval would not compare")
    if a.tok.eos_token_id != b.tok.eos_token_id:
        raise ValueError(f"baseline {b.name} ends text with token {b.tok.eos_token_id}, {a.name} with "
                         f"{a.tok.eos_token_id}: generation would stop at different places")


def check_length(m: EvalModel, length: int, what: str) -> None:
    if length > m.max_length:
        raise ValueError(f"{what} of {length:,} tokens is beyond {m.name}'s maximum of {m.max_length:,} "
                         "(max_position_embeddings)")


def free(m: EvalModel | None) -> None:
    """Drop a model's weights between models (from the GPU, or from host memory on the CPU)."""
    if m is not None and m.model is not None:
        m.model = None
    release_memory(collect=True)


def release_memory(collect: bool | None = None) -> None:
    """Give cached GPU memory back before the next suite, batch or model allocates its own (an H200 run ran out
    of memory in the teacher's HumanEval prefill after the student's, 2026-12-02). `collect`: a full garbage
    collection first, so that tensors held only by reference cycles are gone (default: where CUDA is; on the CPU it
    costs ~0.2 s a call and there is no cache to give back, so only `free` asks for it, once a model)."""
    import gc

    cuda = torch.cuda.is_available()
    if cuda if collect is None else collect:
        gc.collect()
    if cuda:
        torch.cuda.empty_cache()
