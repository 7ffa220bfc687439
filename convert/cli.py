"""`jet-nemotron` console script: typed commands (typer, already a dependency of transformers 5.x).

    jet-nemotron convert SOURCE OUT --layer-map jet-nemotron-2b
    jet-nemotron distill --teacher SOURCE --student CONVERTED OUT --data corpus/ ...
    jet-nemotron export OUT OUT-official --layout official
    jet-nemotron push OUT user/repo [--private] [--revision main] [--dry-run]
    jet-nemotron demo
Errors are printed as one line naming the file / tensor / layer and exit with status 1; nothing is written.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Convert Qwen2 / Qwen2.5 / Qwen3 checkpoints to Jet-Nemotron, distil, and upload.")


@app.command()
def convert(
    source: Annotated[str, typer.Argument(help="local folder, Hub id, or a .gguf file")],
    out: Annotated[Path, typer.Argument(help="output folder (written atomically)")],
    layer_map: Annotated[str, typer.Option(help="preset (jet-nemotron-2b, jet-nemotron-4b), a layer-map .json, "
                                                "or a spec like 'jet*14,attn,jet*4,attn,swa*2,jet*6' or "
                                                "'attn:14,19 swa:20,21'")] = "jet-nemotron-2b",
    gguf_file: Annotated[Optional[str], typer.Option(help="GGUF file name inside SOURCE")] = None,
    jet_heads: Annotated[Optional[int], typer.Option(help="JetBlock heads (default: map, else source heads)")] = None,
    jet_head_dim: Annotated[Optional[int], typer.Option(help="JetBlock key head size dk")] = None,
    expand_v: Annotated[Optional[float], typer.Option(help="value head size dv = dk * expand_v")] = None,
    conv_size: Annotated[Optional[int], typer.Option(help="dynamic convolution width K")] = None,
    generator_reduction: Annotated[Optional[int], typer.Option(help="kernel generator width H*dv / r")] = None,
    window: Annotated[Optional[int], typer.Option(help="sliding window of 'swa' layers (tokens)")] = None,
    init: Annotated[str, typer.Option(help="JetBlock init: 'attention' (from the replaced attention) or "
                                           "'random'")] = "attention",
    dtype: Annotated[str, typer.Option(help="saved dtype: float32, bfloat16, float16")] = "bfloat16",
    seed: int = 0,
    overwrite: bool = False,
    layout: Annotated[str, typer.Option(help="folder layout: 'transformers' (ours) or 'official' (NVIDIA's "
                                             "release: loads in its HF code and in SGLang)")] = "transformers",
):
    """Convert a Qwen checkpoint into a Jet-Nemotron folder (undistilled)."""
    from .pipeline import convert_checkpoint

    jet = {"num_heads": jet_heads, "head_dim": jet_head_dim, "expand_v": expand_v, "conv_size": conv_size,
           "dconv_generator_reduction": generator_reduction}
    convert_checkpoint(source, out, layer_map, jet, window, gguf_file, init, seed, dtype, overwrite, layout=layout)


@app.command()
def distill(
    out: Annotated[Path, typer.Argument(help="output folder of the distilled model")],
    teacher: Annotated[str, typer.Option(help="the source Qwen checkpoint (folder, Hub id or .gguf)")],
    student: Annotated[str, typer.Option(help="a folder written by `jet-nemotron convert`")],
    data: Annotated[list[str], typer.Option(help="text/jsonl/parquet files, folders, or a saved datasets folder; "
                                                 "repeat for several")],
    seq_len: int = 2048,
    text_field: str = "text",
    max_tokens: Annotated[Optional[int], typer.Option(help="stop tokenising after this many tokens")] = None,
    stage1_steps: int = 1000,
    stage2_steps: int = 0,
    batch_size: Annotated[int, typer.Option(help="sequences per optimizer step, all processes together")] = 32,
    micro_batch: Annotated[int, typer.Option(help="sequences per forward per process")] = 4,
    lr1: float = 1e-3,
    lr2: float = 1e-4,
    warmup: int = 50,
    mse_weight: Annotated[float, typer.Option(help="stage-1 attention-output MSE weight")] = 1.0,
    kl_weight: float = 1.0,
    train1: Annotated[str, typer.Option(help="stage-1 trainable set: jet, non-mlp, all")] = "jet",
    train2: Annotated[str, typer.Option(help="stage-2 trainable set: jet, non-mlp, all")] = "all",
    bf16: Annotated[bool, typer.Option(help="bf16 autocast (GPU)")] = False,
    gradient_checkpointing: bool = False,
    kl_chunk: Annotated[int, typer.Option(help="tokens per chunk of the vocabulary-wide KL")] = 1024,
    save_every: int = 200,
    ckpt_dir: Annotated[Optional[Path], typer.Option(help="checkpoint folder (default OUT.ckpt)")] = None,
    resume: bool = False,
    overwrite: bool = False,
    seed: int = 0,
    layout: Annotated[str, typer.Option(help="folder layout: 'transformers' (ours) or 'official' (NVIDIA's "
                                             "release: loads in its HF code and in SGLang)")] = "transformers",
):
    """Distil a converted model from its teacher (stage 1, then stage 2 if --stage2-steps > 0)."""
    from .distill import DistillConfig
    from .pipeline import distill_checkpoint

    common = dict(batch_size=batch_size, micro_batch=micro_batch, warmup_steps=warmup, kl_weight=kl_weight,
                  mixed_precision="bf16" if bf16 else "no", gradient_checkpointing=gradient_checkpointing,
                  kl_chunk=kl_chunk, save_every=save_every, seed=seed)
    s1 = DistillConfig(stage=1, steps=stage1_steps, lr=lr1, mse_weight=mse_weight, train=train1, **common)
    s2 = DistillConfig(stage=2, steps=stage2_steps, lr=lr2, mse_weight=0.0, train=train2, **common)
    distill_checkpoint(teacher, student, out, data, seq_len, s1, s2, text_field, max_tokens,
                       ckpt_dir=ckpt_dir or out.with_name(out.name + ".ckpt"), resume=resume, overwrite=overwrite,
                       layout=layout)


@app.command()
def export(
    folder: Annotated[Path, typer.Argument(help="a Jet-Nemotron folder: ours (convert / distill) or an official one")],
    out: Annotated[Path, typer.Argument(help="output folder (written atomically)")],
    layout: Annotated[str, typer.Option(help="'official' (config and tensors as NVIDIA's release: its HF code and "
                                             "SGLang load it) or 'transformers' (ours)")] = "official",
    dtype: Annotated[str, typer.Option(help="dtype of every tensor: bfloat16 (the release's), float32, float16")
                     ] = "bfloat16",
    overwrite: bool = False,
):
    """Re-write a model folder in another layout; tokenizer, card and reports are copied, modeling files added."""
    from .official_layout import export_folder

    export_folder(folder, out, layout, dtype, overwrite)


@app.command()
def push(
    folder: Annotated[Path, typer.Argument(help="a converted or distilled folder")],
    repo_id: Annotated[str, typer.Argument(help="owner/name on the Hub")],
    private: bool = True,
    revision: Annotated[Optional[str], typer.Option(help="branch to upload to (created if missing)")] = None,
    dry_run: Annotated[bool, typer.Option(help="list the files that would be uploaded and stop")] = False,
):
    """Upload a folder to the Hugging Face Hub."""
    from .push import push as do_push

    files = do_push(folder, repo_id, private, revision, dry_run)
    total = sum(n for _, n in files)
    for name, n in files:
        typer.echo(f"{n / 1e6:12.3f} MB  {name}")
    verb = "would upload" if dry_run else "uploaded"
    typer.echo(f"{verb} {len(files)} files, {total / 1e6:.1f} MB to {repo_id}"
               f"{'@' + revision if revision else ''} ({'private' if private else 'public'})")


@app.command()
def demo(
    workdir: Annotated[Path, typer.Option(help="where the teacher, the conversion and the result go")] = Path(
        "jet_nemotron_demo"),
    teacher_steps: int = 150,
    stage1_steps: int = 40,
    stage2_steps: int = 40,
):
    """Build a tiny Qwen2 teacher offline, convert, distil, save, reload, generate (a few CPU minutes)."""
    from .demo import run_demo

    run_demo(workdir, teacher_steps, stage1_steps, stage2_steps)


@app.command()
def card(
    folder: Annotated[Path, typer.Argument(help="a converted folder")],
    base: Annotated[str, typer.Option(help="the source checkpoint (for its config)")],
):
    """Print the model card a folder would get (no distillation section)."""
    from transformers import AutoConfig

    import jet_nemotron  # noqa: F401

    from .model_card import render_card

    cfg = AutoConfig.from_pretrained(folder)
    typer.echo(render_card(cfg, AutoConfig.from_pretrained(base), base, folder.name))


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point; user errors become a one-line message and exit status 1."""
    try:
        app(args=argv, standalone_mode=False)
    except (ValueError, KeyError, OSError, RuntimeError) as err:  # OSError: missing files, Hub offline
        typer.echo(f"error: {err}", err=True)
        return 1
    except Exception as err:  # click's usage errors
        import click

        if isinstance(err, click.exceptions.ClickException):
            err.show()
            return err.exit_code
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
