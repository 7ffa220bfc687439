"""GGUF block formats dequantised with torch, on whichever device holds the bytes.

transformers loads a GGUF checkpoint one tensor at a time through the `gguf` package's NumPy code. That takes about
90 s for the 1.5B Q4_K_M teacher on the H200 machine, on the critical path of every GPU session. The same arithmetic
as whole-tensor torch ops runs in a few seconds on the CPU and in milliseconds on a GPU. The formats are those of
ggml (`QK_K = 256`-element super-blocks for the k-quants); types without a torch version here go through `gguf`'s own
NumPy dequantiser, which is named in the result rather than hidden.

Every function takes the raw bytes of a tensor, `[rows, bytes_per_row]` uint8 (as `gguf.GGUFReader` exposes them),
and returns `[rows, row_elements]` float32, equal bit for bit to `gguf.quants.dequantize` (tested).
"""

from __future__ import annotations

import torch


def _f16(raw: torch.Tensor) -> torch.Tensor:
    """[..., 2] uint8 (little-endian fp16) -> [..., 1] float32."""
    return raw.contiguous().view(torch.float16).float()


def _blocks(raw: torch.Tensor, block_bytes: int) -> torch.Tensor:
    """[rows, bytes_per_row] -> [n_blocks, block_bytes]; a row holds whole blocks."""
    if raw.dtype != torch.uint8 or raw.shape[-1] % block_bytes:
        raise ValueError(f"expected uint8 rows of whole {block_bytes}-byte blocks, got {raw.dtype} {tuple(raw.shape)}")
    return raw.reshape(-1, block_bytes)


def q8_0(raw: torch.Tensor) -> torch.Tensor:
    """Blocks of 32: fp16 scale d, 32 int8 q; x = d * q."""
    b = _blocks(raw, 34)
    x = _f16(b[:, :2]) * b[:, 2:].contiguous().view(torch.int8).float()
    return x.reshape(raw.shape[0], -1)


def _k_scales(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The 12 packed bytes of a Q4_K / Q5_K super-block -> its 8 sub-block scales and mins, 6 bits each:
    [n, 12] uint8 -> ([n, 8], [n, 8]) float32. Bytes 0-3 hold scales 0-3 and 4-7 mins 0-3 in their low 6 bits;
    bytes 8-11 hold the low 4 bits of scales 4-7 (low nibble) and mins 4-7 (high nibble), whose top 2 bits are
    the top 2 bits of bytes 0-3 and 4-7."""
    s = s.long()
    low, mid, high = s[:, 0:4], s[:, 4:8], s[:, 8:12]
    sc = torch.cat([low & 63, (high & 0xF) | ((low >> 6) << 4)], dim=1)
    m = torch.cat([mid & 63, (high >> 4) | ((mid >> 6) << 4)], dim=1)
    return sc.float(), m.float()


def _nibbles(qs: torch.Tensor) -> torch.Tensor:
    """[n, 128] uint8 -> [n, 8, 32]: each 32-byte chunk c gives sub-block 2c (low nibbles) and 2c + 1 (high)."""
    q = qs.reshape(-1, 4, 1, 32)
    return torch.cat([q & 0xF, q >> 4], dim=2).reshape(-1, 8, 32)


def _k_affine(b: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """A Q4_K / Q5_K super-block's values from its bytes b [n, block] (fp16 d, fp16 dmin, then the 12 scale bytes)
    and its quants q [n, 8, 32]: d * scale_j * q - dmin * min_j for sub-block j."""
    d, dmin = _f16(b[:, 0:2]), _f16(b[:, 2:4])
    sc, m = _k_scales(b[:, 4:16])
    return (d * sc)[:, :, None] * q.float() - (dmin * m)[:, :, None]


def q4_k(raw: torch.Tensor) -> torch.Tensor:
    """Super-blocks of 256 (144 bytes): fp16 d, fp16 dmin, 12 bytes of 6-bit scales and mins, 128 bytes of 4-bit q;
    x = d * scale_j * q - dmin * min_j over 8 sub-blocks j of 32."""
    b = _blocks(raw, 144)
    return _k_affine(b, _nibbles(b[:, 16:])).reshape(raw.shape[0], -1)


def q5_k(raw: torch.Tensor) -> torch.Tensor:
    """Super-blocks of 256 (176 bytes): fp16 d, fp16 dmin, 12 bytes of scales and mins, 32 bytes of fifth bits,
    128 bytes of low 4 bits; sub-block j's fifth bit is bit j of each of the 32 high-bit bytes."""
    b = _blocks(raw, 176)
    shifts = torch.arange(8, device=raw.device, dtype=torch.uint8)
    fifth = ((b[:, None, 16:48] >> shifts[None, :, None]) & 1) << 4  # [n, 8, 32]
    return _k_affine(b, _nibbles(b[:, 48:]) | fifth).reshape(raw.shape[0], -1)


def q6_k(raw: torch.Tensor) -> torch.Tensor:
    """Super-blocks of 256 (210 bytes): 128 bytes of low 4 bits, 64 bytes of high 2 bits, 16 int8 scales, fp16 d;
    x = d * scale * (q - 32) over 16 sub-blocks of 16. Each half of 128 elements takes 64 low bytes and 32 high
    bytes: element 32k + l (k = 0..3) is the low nibble (k < 2) or the high nibble (k >= 2) of low byte
    l + 32 (k % 2), with bits 2k..2k+1 of high byte l above it."""
    b = _blocks(raw, 210)
    ql = b[:, :128].reshape(-1, 2, 2, 32)  # [n, half, k % 2, l]
    qh = b[:, 128:192].reshape(-1, 2, 1, 32)  # [n, half, -, l]
    scales = b[:, 192:208].contiguous().view(torch.int8).float().reshape(-1, 2, 4, 2)  # [n, half, k, l // 16]
    d = _f16(b[:, 208:210])
    low = torch.stack([ql[:, :, 0] & 0xF, ql[:, :, 1] & 0xF, ql[:, :, 0] >> 4, ql[:, :, 1] >> 4], dim=2)
    shifts = torch.tensor([0, 2, 4, 6], device=raw.device, dtype=torch.uint8)[None, None, :, None]
    q = (low | (((qh >> shifts) & 3) << 4)).float() - 32  # [n, half, k, l]: small integers, exact in fp32
    x = (d[:, :, None, None, None] * scales[..., None]) * q.reshape(-1, 2, 4, 2, 16)  # scale of l // 16
    return x.reshape(raw.shape[0], -1)


def dequantize(raw: torch.Tensor, type_name: str) -> torch.Tensor | None:
    """[rows, bytes_per_row] uint8 (F32/F16/BF16: that dtype, [rows, cols]) -> [rows, elements] float32, or None for
    a type without a torch version here (F32 gives back its input itself). `type_name` is
    `gguf.GGMLQuantizationType`'s name."""
    if type_name == "F32":
        return raw.float()
    if type_name in ("F16", "BF16"):
        dtype = torch.float16 if type_name == "F16" else torch.bfloat16
        return (raw if raw.dtype == dtype else raw.contiguous().view(dtype)).float()
    fn = {"Q8_0": q8_0, "Q4_K": q4_k, "Q5_K": q5_k, "Q6_K": q6_k}.get(type_name)
    return fn(raw) if fn else None
