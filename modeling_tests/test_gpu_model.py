"""GPU-only model checks (skipped without CUDA): the Triton path against the PyTorch reference path inside the
whole model, and the static-cache compiled (CUDA-graph) decode path against eager generation.

Bounds are on ||a - b|| / ||b|| of the logits: fp32 < 1e-2 (the kernels' fp32 dots run as TF32 on Hopper, which the
kernel tests bound at 5e-3 per op; four layers of a deliberately large-weight model chain them); bf16 < 2e-2 (bf16
rounding of activations between two differently ordered computations). A wrong kernel gives O(1).
"""

import pytest
import torch

from conftest import tiny_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def _model(backend, dtype, **kw):
    model = tiny_model(kernel_backend=backend, **kw).to("cuda", dtype)
    return model


@pytest.mark.parametrize("T", [1, 63, 64, 65, 300, 1000])
@torch.no_grad()
def test_triton_path_matches_reference_path_fp32(T):
    ids = torch.randint(3, 128, (2, T), device="cuda")
    ref = _model("reference", torch.float32)(ids).logits
    tri = _model("triton", torch.float32)(ids).logits
    assert _rel(tri, ref) < 1e-2


# the tiny test head (dk 16), and the official 2B and 4B JetBlock heads
JET_HEADS = [(16, 2), (96, 2.6666666667), (128, 2)]


def _jet(head_dim, expand_v):
    return {"jet": {"num_heads": 2, "head_dim": head_dim, "expand_v": expand_v, "conv_size": 4,
                    "dconv_generator_reduction": 8, "norm_eps": "1e-5"}, "swa": {"window_size": 8}}


@pytest.mark.parametrize("head_dim,expand_v", JET_HEADS)
@torch.no_grad()
def test_triton_path_matches_reference_path_bf16_with_cache(head_dim, expand_v):
    ids = torch.randint(3, 128, (3, 200), device="cuda")
    eac = _jet(head_dim, expand_v)
    ref_model = _model("reference", torch.bfloat16, efficient_attention_config=eac)
    tri_model = _model("triton", torch.bfloat16, efficient_attention_config=eac)
    ref = ref_model(ids[:, :150], use_cache=True)
    tri = tri_model(ids[:, :150], use_cache=True)
    assert _rel(tri.logits, ref.logits) < 2e-2
    for t in range(150, 160):
        r = ref_model(ids[:, t : t + 1], past_key_values=ref.past_key_values).logits
        s = tri_model(ids[:, t : t + 1], past_key_values=tri.past_key_values).logits
        assert _rel(s, r) < 2e-2, t


def test_triton_training_gradients_match_reference():
    ids = torch.randint(3, 128, (2, 130), device="cuda")
    grads = {}
    for backend in ("reference", "triton"):
        model = _model(backend, torch.float32).train()
        model(ids, labels=ids).loss.backward()
        grads[backend] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert grads["reference"].keys() == grads["triton"].keys()
    for n, g in grads["reference"].items():
        assert _rel(grads["triton"][n], g) < 1e-2, n


@torch.no_grad()
def test_compiled_static_decode_equals_eager_generation():
    from transformers import CompileConfig

    model = _model("auto", torch.bfloat16)
    prompt = torch.randint(3, 128, (2, 40), device="cuda")
    kw = dict(max_new_tokens=24, do_sample=False, eos_token_id=None, pad_token_id=0)
    eager = model.generate(prompt, **kw)
    compiled = model.generate(prompt, cache_implementation="static",
                              compile_config=CompileConfig(fullgraph=True, mode="reduce-overhead"), **kw)
    assert hasattr(model, "_compiled_call"), "generate did not compile the decode step"
    assert torch.equal(compiled, eager)
