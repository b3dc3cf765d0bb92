"""`lancy chat` and `lancy export`: talk to a run with its own prompt, and hand it over as plain transformers files.

    lancy chat runs/<run>                                   # interactive: /reset, /system TEXT, /exit
    lancy chat runs/<run> --prompt "Revenue fell 12% on weak demand."   # one answer on stdout
    lancy chat runs/<run> --prompt "..." --labels           # classification runs: each label's probability
    lancy export runs/<run>                                 # LoRA merged into the base: safetensors + tokenizer
    lancy export runs/<run> --format gguf --quant q8_0      # one verified .gguf file for llama.cpp / Ollama
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from lancy_trl.cli import app, guarded


@app.command("chat")
@guarded
def chat(
    model: Annotated[str, typer.Argument(help="A finished run, a merged export, a .gguf file, hub id or catalog name.")],
    prompt: Annotated[str | None, typer.Option("--prompt", help="Answer this one message on stdout and exit.")] = None,
    labels: Annotated[bool, typer.Option("--labels", help="Classification runs: print each label's probability.")] = False,
    raw: Annotated[bool, typer.Option("--raw", help="Send your text as it is, without the run's instruction around it.")]
    = False,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", help="Longest answer in tokens.")] = 256,
    temperature: Annotated[float, typer.Option("--temperature", help="0: greedy.")] = 0.0,
    top_p: Annotated[float, typer.Option("--top-p", help="Nucleus sampling, with --temperature.")] = 1.0,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or mps.")] = "auto",
) -> None:
    """Talk to a model with the run's own system prompt, instruction and end of turn; greedy by default."""
    from rich.console import Console

    from lancy_trl.chat import Session
    from lancy_trl.errors import LancyError

    if max_new_tokens < 1 or temperature < 0:
        raise LancyError("--max-new-tokens must be positive and --temperature 0 or more")
    console = Console(stderr=True, soft_wrap=True)
    with console.status(f"Loading {model}..."):
        session = Session.load(model, raw=raw, device=device)
    if labels and not session.labels:
        raise LancyError("--labels needs a classification run (its label words are in run.json)")
    options: dict[str, Any] = {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p}
    if prompt is not None:
        typer.echo(session.answer(prompt, **options))
        if labels:
            for label, p in session.label_probabilities(prompt).items():
                typer.echo(f"{label}\t{p:.4f}")
        return
    _interactive(session, console, options, labels)


def _interactive(session, console, options, labels: bool) -> None:
    from transformers import TextStreamer

    console.print("Type a message; /reset forgets the conversation, /system TEXT sets the system prompt, /exit ends.")
    streamer = TextStreamer(session.tokenizer, skip_prompt=True, skip_special_tokens=True)
    while True:
        try:
            text = input("> ").strip()
        except (EOFError, KeyboardInterrupt):
            return
        if text in ("/exit", "/quit"):
            return
        if text == "/reset" or text.startswith("/system "):
            session.history = []
            session.system = text[8:].strip() or None if text.startswith("/system ") else session.system
            continue
        if text:
            session.answer(text, streamer=streamer, remember=True, **options)
            if labels:
                console.print("  ".join(f"{k} {v:.3f}" for k, v in session.label_probabilities(text).items()))
