"""``modelport demo``: write a tiny model and a LoRA adapter to upload, so a first try needs no downloads."""

from __future__ import annotations

import shlex
from pathlib import Path

import click

from modelport.cli.base import AppContext, pass_app
from modelport.cli.errors import CliFailure
from modelport.cli.output import Output, human_bytes


@click.command()
@click.argument("folder", default="modelport-demo", type=click.Path(file_okay=False, path_type=Path))
@click.option("--json", "json_", is_flag=True, help="Print the two folders as JSON.")
@pass_app
def demo(app: AppContext, folder: Path, json_: bool) -> None:
    """Write a tiny chat model and a LoRA adapter for it into FOLDER (default ./modelport-demo).

    FOLDER/tiny-chat is a small Llama in Hugging Face layout (safetensors weights, a tokenizer, a chat
    template) and FOLDER/tiny-lora a PEFT LoRA adapter shaped for it. Both are generated here, with
    random but seeded weights, in well under a second and without a network; running it again rewrites
    the same bytes. Prints the two folders (stdout) and the commands that upload them (stderr).
    """
    from modelport.demo import MODEL_FOLDER, write_demo  # numpy, safetensors, tokenizers: only here

    out = Output(json_mode=app.json or json_)
    existed = (folder / MODEL_FOLDER).exists()
    try:
        written = write_demo(folder)
    except OSError as e:
        raise CliFailure(
            f"cannot write the demo into {folder}: {e.strerror or e}", hint="pass another folder: `modelport demo PATH`"
        ) from e
    model, adapter = _shown(written.model), _shown(written.adapter)
    if out.json_mode:
        return out.json({"model": model, "adapter": adapter})
    out.line(model)
    out.line(adapter)
    verb = "rewrote" if existed else "wrote"
    out.message(f"{verb} {model}: a tiny Llama with random weights ({_summary(written.model)})")
    out.message(f"{verb} {adapter}: a LoRA adapter for it ({_summary(written.adapter)})")
    out.message("Next, with `modelport serve` running and MODELPORT_API_KEY set:")
    for command in _next_commands(model, adapter):
        out.message(f"  {command}")


def _summary(folder: Path) -> str:
    files = sorted(p for p in folder.iterdir() if p.is_file())
    return f"{human_bytes(sum(p.stat().st_size for p in files))}: {', '.join(p.name for p in files)}"


def _shown(path: Path) -> str:
    """The folder as the user would type it; ``./`` keeps a relative one from reading as a hub repo."""
    text = str(path)
    return text if path.is_absolute() or text.startswith(".") else f"./{text}"


def _next_commands(model: str, adapter: str) -> list[str]:
    return [
        f"modelport models upload --model-name my-model --model-source {shlex.quote(model)} --wait",
        "modelport models upload --model-name my-lora --model-type adapter --base-model my-model "
        f"--model-source {shlex.quote(adapter)} --wait",
        'modelport chat my-lora --message "Say hello" --max-tokens 16',
    ]
