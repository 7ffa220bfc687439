"""The two ceilings every benchmark here reports against, measured on the card in the same run."""

from __future__ import annotations

import torch


def ceilings() -> tuple[float, float]:
    """(copy bandwidth in bytes/s counting bytes read + written, bf16 matmul rate in FLOP/s) of the current GPU:
    a 1 GiB device-to-device copy and an 8192^3 bf16 product on random data, `do_bench` medians."""
    from triton.testing import do_bench

    x = torch.empty(2**28, device="cuda", dtype=torch.float32)  # 1 GiB
    y = torch.empty_like(x)
    ms = do_bench(lambda: y.copy_(x), return_mode="median")
    bw = 2 * x.numel() * 4 / (ms * 1e-3)
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    ms = do_bench(lambda: a @ b, return_mode="median")
    flops = 2 * 8192**3 / (ms * 1e-3)
    del x, y, a, b
    return bw, flops
