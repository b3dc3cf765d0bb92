"""`lancy export RUN`: a finished run's model for other tools, through the exporter registry (lancy_trl/export/).

    lancy export runs/<run>                          # merged safetensors that transformers loads alone
    lancy export runs/<run> --dtype bf16             # in bf16 whatever the base's type, read back and checked
    lancy export runs/<run> --format gguf --quant q8_0
    lancy export runs/<run> --format ollama
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lancy_trl.cli import app, guarded


@app.command("export")
@guarded
def export(
    run: Annotated[Path, typer.Argument(help="A finished run directory.")],
    format: Annotated[str, typer.Option("--format", help="merged (safetensors for transformers), gguf (llama.cpp, "
                                        "LM Studio) or ollama (the GGUF and a Modelfile).")] = "merged",
    quant: Annotated[str, typer.Option("--quant", help="GGUF type: f16, bf16 or q8_0.")] = "q8_0",
    dtype: Annotated[str, typer.Option("--dtype", help="The merged weights' type (the GGUF converts from them): auto "
                                       "(the base model's own), fp32, bf16 or fp16; narrower than fp32 is read back "
                                       "and checked against the fp32 merge.")] = "auto",
    output_dir: Annotated[Path | None, typer.Option("--output-dir", help="Default: RUN/export/<format>.")] = None,
) -> None:
    """Write a run's model for other tools, verified: merged safetensors, or a GGUF file checked against them."""
    from rich.console import Console

    from lancy_trl import logs, runs
    from lancy_trl.errors import LancyError
    from lancy_trl.export import get
    from lancy_trl.export.gguf import QUANTS
    from lancy_trl.export.merged import DTYPES

    exporter = get(format)
    if exporter.quantized and quant not in QUANTS:
        raise LancyError(f"--quant {quant}: GGUF export writes {', '.join(QUANTS)} (K-quants need llama.cpp's compiled "
                         "llama-quantize, run on the f16 file)")
    if dtype != "auto" and dtype not in DTYPES:
        raise LancyError(f"--dtype {dtype}: merged weights are written as auto (the base model's own type), "
                         f"{', '.join(DTYPES)}")
    runs.require(run)
    console = Console(stderr=True, soft_wrap=True)
    out = output_dir or run / "export" / format
    if not exporter.quantized:
        path, lines = exporter.write(run, out, quant, console.print, dtype)
    else:
        (run / "export").mkdir(exist_ok=True)
        with logs.to_file(run / "export" / "export.log"), console.status(
                f"Converting to GGUF {quant} and checking it against the run's model..."):
            path, lines = exporter.write(run, out, quant, console.print, dtype)
    for line in lines:
        console.print(line, highlight=False)
    typer.echo(str(path))
