"""`lancy configs`: the DeepSpeed and FSDP configs lancy ships, what each is for, and where the file is.

    lancy configs list
    lancy sft --num-processes 4 --deepspeed zero2 ...
    deepspeed --num_gpus 4 -m lancy_trl sft --deepspeed "$(lancy configs path zero3)" ...
    accelerate launch --config_file "$(lancy configs path fsdp)" --num_processes 4 -m lancy_trl sft ...
"""

from __future__ import annotations

import typer

from lancy_trl.cli import app, guarded

configs_app = typer.Typer(help="The DeepSpeed and FSDP configs lancy ships.", no_args_is_help=True)
app.add_typer(configs_app, name="configs")


@configs_app.command("list")
def list_configs() -> None:
    """Each shipped config's name, what it is for, and its file."""
    from lancy_trl.scale.engines import SHIPPED, resolve

    for name, purpose in SHIPPED.items():
        typer.echo(f"{name:14} {purpose}\n{'':14} {resolve(name, 'DeepSpeed or FSDP')}")


@configs_app.command("path")
@guarded
def config_path(name: str = typer.Argument(..., help="A name from `lancy configs list`.")) -> None:
    """The path of one shipped config (for --deepspeed, --fsdp, accelerate launch, or to copy and edit)."""
    from lancy_trl.scale.engines import resolve

    typer.echo(str(resolve(name, "DeepSpeed or FSDP")))
