"""Shared helpers: tiny configs and models built in the tests, and the repo's own fixtures (modeling_tests/fixtures)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
# official-parity data travels with the repo (outputs of NVIDIA's code; see fixtures/official_tiny/README.md)
FIXTURES = Path(os.environ.get("JET_NEMOTRON_FIXTURES", Path(__file__).resolve().parent / "fixtures"))

# first lines of a child script that must not see our package (remote-code loading as a user without it has)
BLOCK_JET_NEMOTRON = """
import sys, importlib.abc
class _BlockJetNemotron(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "jet_nemotron" or name.startswith("jet_nemotron."):
            raise ImportError("jet_nemotron is blocked in this process")
sys.meta_path.insert(0, _BlockJetNemotron())
"""

torch.set_num_threads(min(2, os.cpu_count() or 1))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests own their data: nothing may reach for the Hub


def pytest_collection_modifyitems(config, items):
    """JET_NEMOTRON_TEST_SHARD="i/n" keeps every n-th test from the i-th (0-based) in collection order, so n
    processes run a file between them: the kernel file's fresh-process run (`test_kernels.test_in_fresh_process`)
    uses both of CI's cores this way, where one process left one idle for about 4 minutes."""
    shard = os.environ.get("JET_NEMOTRON_TEST_SHARD")
    if not shard:
        return
    try:
        i, n = (int(x) for x in shard.split("/"))
        if not 0 <= i < n:
            raise ValueError
    except ValueError:
        raise pytest.UsageError(f"JET_NEMOTRON_TEST_SHARD={shard!r}: 'i/n' with 0 <= i < n, e.g. 0/2") from None
    config.hook.pytest_deselected(items=[t for k, t in enumerate(items) if k % n != i])
    items[:] = items[i::n]


@pytest.fixture(autouse=True)
def _corpus_cache_in_tmp(tmp_path_factory, monkeypatch):
    """Tokenised corpora (convert/corpus.py) go to a temporary folder, never the user's ~/.cache."""
    monkeypatch.setenv("JET_NEMOTRON_CACHE", str(tmp_path_factory.mktemp("jet_nemotron_cache")))


def tiny_config(layer_types=("jet", "attn", "swa", "jet"), **overrides):
    """A few-layer Jet-Nemotron config small enough for CPU tests (window 8, chunk 64 applies)."""
    from jet_nemotron import JetNemotronConfig

    kw = dict(
        vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=len(layer_types),
        num_attention_heads=4, num_key_value_heads=2, layer_types=list(layer_types), max_position_embeddings=8192,
        efficient_attention_config={
            "jet": {"num_heads": 2, "head_dim": 16, "expand_v": 2, "conv_size": 4,
                    "dconv_generator_reduction": 8, "norm_eps": "1e-5"},
            "swa": {"window_size": 8},
        },
        tie_word_embeddings=True, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        initializer_range=0.2,  # large enough that greedy decoding does not collapse to one token
    )
    kw.update(overrides)
    return JetNemotronConfig(**kw)


def tiny_model(seed: int = 0, **config_kwargs):
    """A random tiny model in fp32, eval mode, with weights big enough that every path matters."""
    from jet_nemotron import JetNemotronForCausalLM

    torch.manual_seed(seed)
    model = JetNemotronForCausalLM(tiny_config(**config_kwargs)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("kernel_generator.w2.weight") or name.endswith("kernel_generator.w1.weight"):
                p.normal_(0, 0.2)  # a strongly input-dependent convolution
    return model


@pytest.fixture
def official_tiny() -> Path:
    path = FIXTURES / "official_tiny"
    if not path.exists():
        pytest.fail(f"fixture folder {path} is missing: it ships in modeling_tests/fixtures (or set JET_NEMOTRON_FIXTURES)")
    return path
