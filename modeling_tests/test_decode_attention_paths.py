"""`grouped_decode_attention`: its CPU branch (grouped product) equals its CUDA branch's computation (sdpa with
enable_gqa), with bool and additive masks, left padding and an unwritten static-cache tail."""

import torch
import torch.nn.functional as F

from jet_nemotron.modeling_jet_nemotron import grouped_decode_attention


def test_grouped_path_equals_sdpa_gqa_with_bool_and_additive_masks():
    torch.manual_seed(0)
    B, Hq, Hkv, D, L = 3, 12, 2, 32, 50
    q, k, v = torch.randn(B, Hq, 1, D), torch.randn(B, Hkv, L, D), torch.randn(B, Hkv, L, D)
    mask = torch.ones(B, 1, 1, L, dtype=torch.bool)
    mask[1, ..., :7] = False  # left padding
    mask[:, ..., 40:] = False  # static cache: not yet written
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.3, enable_gqa=True).transpose(1, 2)
    additive = torch.zeros(B, 1, 1, L).masked_fill(~mask, torch.finfo(torch.float32).min)
    for m in (mask, additive):
        got, _ = grouped_decode_attention(None, q, k, v, m, 0.3)
        assert got.shape == (B, 1, Hq, D)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # a mask longer than the keys (transformers pads it to the static cache size) is cut to the keys
    longer = torch.cat([mask, torch.zeros(B, 1, 1, 5, dtype=torch.bool)], -1)
    torch.testing.assert_close(grouped_decode_attention(None, q, k, v, longer, 0.3)[0], want, rtol=1e-5, atol=1e-5)
