"""Train the supernet's JetBlocks by distillation from the source, one sampled sub-network per step.

Each step draws a placement (`sample_placement`: exactly K "attn" and M "swa" layers chosen uniformly, or every
layer independently with probabilities K/L and M/L), runs the teacher (every layer "attn": the source itself,
no grad) and the sampled sub-network on the same rows, and minimises
    kl_weight * KL(teacher || sub-network) on the logits (`kl.chunked_kl`, token-chunked)
  + mse_weight * mean over the sub-network's "jet" layers of |jet_out - attn_out|^2 / |attn_out|^2
where attn_out is the teacher's attention output at that layer (the feature distillation of distill.py stage 1).
Only JetBlock weights train; a JetBlock learns in the company of attention at random other layers, which is
what lets one supernet score every placement afterwards.

Resumable: every `save_every` steps (and at the end) `supernet_step_N.pt` holds the JetBlock weights, the Adam
state, the step, the loss history and the RNG states, written to a temporary name then renamed. Rows and
placements are pure functions of (seed, step), so a resumed run trains on exactly what an uninterrupted run
would (tested bit-exact). Multi-GPU: data parallel through accelerate (DDP); every process draws the same
placement, and the JetBlocks of layers the placement does not use get no gradient (find_unused_parameters).
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from ..distill import batch_rows, lr_at
from ..distill_config import TrainSchedule
from ..distill_loss import normalised_mse
from ..kl import chunked_kl
from .supernet import Supernet


@dataclass
class SupernetConfig(TrainSchedule):
    steps: int = 200
    grad_clip: float = 1.0
    kl_weight: float = 1.0
    mse_weight: float = 1.0
    attn: int = 2  # K: full-attention layers per sampled sub-network
    swa: int = 0  # M: sliding-window layers per sampled sub-network
    sampling: str = "exact"  # "exact" (K and M layers) or "bernoulli" (each layer with p = K/L, M/L)
    kl_chunk: int = 1024
    mixed_precision: str = "no"  # "no" or "bf16"
    save_every: int = 50
    keep_checkpoints: int = 2
    seed: int = 0
    stop_after: int | None = None  # end after this step without finishing (tests a kill)

    def check(self, num_layers: int) -> "SupernetConfig":
        if self.sampling not in ("exact", "bernoulli"):
            raise ValueError(f"--sampling must be 'exact' or 'bernoulli', got {self.sampling!r}")
        if self.attn < 0 or self.swa < 0:
            raise ValueError(f"--attn and --swa must be >= 0, got {self.attn}, {self.swa}")
        if self.attn + self.swa > num_layers:
            raise ValueError(f"--attn {self.attn} + --swa {self.swa} = {self.attn + self.swa} layers, but the source "
                             f"has only {num_layers}")
        if self.steps < 0 or self.batch_size < 1 or self.micro_batch < 1:
            raise ValueError(f"steps must be >= 0 and batch sizes >= 1 ({self.steps}, {self.batch_size}, "
                             f"{self.micro_batch})")
        if self.kl_weight <= 0 and self.mse_weight <= 0:
            raise ValueError("kl_weight and mse_weight are both zero: nothing to train on")
        return self


def sample_placement(num_layers: int, attn: int, swa: int, sampling: str, seed: int, step: int) -> list[str]:
    """The sub-network of `step`: a list of "jet" / "attn" / "swa", a pure function of (seed, step).

    At least one layer stays "jet" (a sub-network without JetBlocks has nothing to train): when K + M = L, exact
    sampling leaves out one of the M windows (or, with M = 0, one of the K attention layers) at random."""
    rng = random.Random(seed * 1_000_003 + step)
    if sampling == "bernoulli":
        p_a, p_s = attn / num_layers, swa / num_layers
        out = []
        for _ in range(num_layers):
            u = rng.random()
            out.append("attn" if u < p_a else "swa" if u < p_a + p_s else "jet")
        if "jet" not in out:
            out[rng.randrange(num_layers)] = "jet"
        return out
    if attn + swa >= num_layers:
        attn, swa = (attn, num_layers - 1 - attn) if swa else (num_layers - 1, 0)
    layers = rng.sample(range(num_layers), attn + swa)
    out = ["jet"] * num_layers
    for i in layers[:attn]:
        out[i] = "attn"
    for i in layers[attn:]:
        out[i] = "swa"
    return out


class SupernetLoss(nn.Module):
    """One forward = teacher pass + sampled sub-network pass -> (loss, kl, mse); DDP wraps this module.

    forward(input_ids [B, L], placement list[str]) -> three fp32 scalars.
    """

    def __init__(self, supernet: Supernet, kl_weight: float, mse_weight: float, chunk: int):
        super().__init__()
        self.supernet = supernet
        self.kl_weight, self.mse_weight, self.chunk = kl_weight, mse_weight, chunk

    def forward(self, input_ids, placement):
        net = self.supernet
        with torch.no_grad():
            net.set_placement(["attn"] * net.num_layers)
            h_t, feats_t = net.hidden(input_ids, capture=self.mse_weight > 0)
        net.set_placement(placement)
        h_s, feats_s = net.hidden(input_ids, capture=self.mse_weight > 0)
        zero = h_s.new_zeros((), dtype=torch.float32)
        kl = chunked_kl(h_s, net.head, h_t, net.head, self.chunk) if self.kl_weight > 0 else zero
        mse = zero
        jet = [i for i, t in enumerate(placement) if t == "jet"]
        if self.mse_weight > 0 and jet:
            terms = [normalised_mse(feats_s[i], feats_t[i]) for i in jet]
            mse = torch.stack(terms).mean()
        return self.kl_weight * kl + self.mse_weight * mse, kl.detach(), mse.detach()


def _checkpoints(ckpt_dir: Path) -> list[Path]:
    return sorted(ckpt_dir.glob("supernet_step_*.pt"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))


def latest_checkpoint(ckpt_dir: str | Path | None) -> Path | None:
    found = _checkpoints(Path(ckpt_dir)) if ckpt_dir and Path(ckpt_dir).is_dir() else []
    return found[-1] if found else None


def save_checkpoint(ckpt_dir: Path, supernet: Supernet, opt, step: int, history: list, cfg: SupernetConfig) -> Path:
    """JetBlock weights + Adam state + step + history + RNG states, atomically (tmp file, rename)."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    final = ckpt_dir / f"supernet_step_{step}.pt"
    tmp = ckpt_dir / f".tmp_supernet_step_{step}.pt"
    state = {"step": step, "jet": supernet.jet_state_dict(), "optimizer": opt.state_dict(), "history": history,
             "config": asdict(cfg), "rng": {"torch": torch.get_rng_state(), "python": random.getstate(),
                                            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}}
    torch.save(state, tmp)
    os.replace(tmp, final)
    for old in _checkpoints(ckpt_dir)[:-cfg.keep_checkpoints] if cfg.keep_checkpoints > 0 else []:
        old.unlink(missing_ok=True)
    return final


def load_checkpoint(path: Path, supernet: Supernet, opt) -> tuple[int, list]:
    state = torch.load(path, map_location="cpu", weights_only=False)
    supernet.load_jet_state_dict(state["jet"])
    opt.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"]["torch"])
    random.setstate(state["rng"]["python"])
    if state["rng"].get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return state["step"], state["history"]


def train_supernet(supernet: Supernet, rows: torch.Tensor, cfg: SupernetConfig, ckpt_dir: str | Path | None = None,
                   resume: bool = False, accelerator=None, log=print) -> dict:
    """Train `supernet`'s JetBlocks in place on packed rows [N, L]; returns {history, wall_s, steps, tokens}."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs
    from tqdm.auto import tqdm

    cfg.check(supernet.num_layers)
    acc = accelerator or Accelerator(mixed_precision=cfg.mixed_precision,
                                     kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    world = acc.num_processes
    if cfg.batch_size % (cfg.micro_batch * world):
        raise ValueError(f"batch_size {cfg.batch_size} is not a multiple of micro_batch {cfg.micro_batch} x {world} "
                         "processes")
    if rows.shape[0] < 1:
        raise ValueError("no training rows for the supernet")
    accum = cfg.batch_size // (cfg.micro_batch * world)
    supernet.to(acc.device)
    wrapper = SupernetLoss(supernet, cfg.kl_weight, cfg.mse_weight, cfg.kl_chunk)
    params = supernet.jet_parameters()
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.95), weight_decay=0.0)
    start, history = 0, []
    ckpt_dir = Path(ckpt_dir) if ckpt_dir else None
    last = latest_checkpoint(ckpt_dir) if resume else None
    if last is not None:
        start, history = load_checkpoint(last, supernet, opt)
        log(f"supernet: resumed from {last} at step {start}")
    wrapper, opt = acc.prepare(wrapper, opt)
    L = rows.shape[1]
    bar = tqdm(total=cfg.steps, initial=start, desc="supernet", unit="step", disable=not acc.is_main_process,
               dynamic_ncols=True)
    t_run = time.perf_counter()
    for step in range(start, cfg.steps):
        t0 = time.perf_counter()
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        placement = sample_placement(supernet.num_layers, cfg.attn, cfg.swa, cfg.sampling, cfg.seed, step)
        idx = batch_rows(step, rows.shape[0], cfg.batch_size, cfg.seed)
        sums = torch.zeros(3, device=acc.device)
        for m in range(accum):
            lo = (m * world + acc.process_index) * cfg.micro_batch
            x = rows[idx[lo: lo + cfg.micro_batch]].to(acc.device)
            with acc.autocast():
                loss, kl, mse = wrapper(x, placement)
            acc.backward(loss / accum)
            sums += torch.stack([loss.detach().float(), kl.float(), mse.float()]) / accum
        if cfg.grad_clip > 0:
            acc.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss_v, kl_v, mse_v = acc.reduce(sums, reduction="mean").tolist()
        dt = time.perf_counter() - t0
        rec = {"step": step + 1, "loss": loss_v, "kl": kl_v, "mse": mse_v, "lr": lr_at(step, cfg),
               "attn": [i for i, t in enumerate(placement) if t == "attn"],
               "swa": [i for i, t in enumerate(placement) if t == "swa"], "ms": dt * 1000,
               "tok_per_s": cfg.batch_size * L / dt}
        history.append(rec)
        bar.update(1)
        bar.set_postfix(loss=f"{loss_v:.4f}", kl=f"{kl_v:.4f}", mse=f"{mse_v:.4f}", tok_s=f"{rec['tok_per_s']:.0f}")
        done = step + 1 == cfg.steps
        if ckpt_dir is not None and acc.is_main_process and (done or (cfg.save_every and (step + 1) % cfg.save_every == 0)):
            save_checkpoint(ckpt_dir, supernet, opt, step + 1, history, cfg)
        acc.wait_for_everyone()
        if cfg.stop_after is not None and step + 1 >= cfg.stop_after and not done:
            bar.close()
            return {"stopped_at": step + 1, "history": history}
    bar.close()
    supernet.set_placement(["attn"] * supernet.num_layers)
    wall = time.perf_counter() - t_run
    ran = cfg.steps - start
    if ran:
        log(f"supernet: {ran} steps in {wall:.1f} s ({wall / ran * 1000:.0f} ms/step, "
            f"{ran * cfg.batch_size * L / wall:.0f} tok/s); last loss {history[-1]['loss']:.4f}")
    return {"history": history, "wall_s": wall, "steps": cfg.steps, "tokens": cfg.steps * cfg.batch_size * L,
            "world_size": world}
