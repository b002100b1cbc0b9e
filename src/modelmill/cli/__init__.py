"""The ``modelmill`` command: one subcommand per stage of the loop."""

from __future__ import annotations

import sys

import typer

from modelmill.cli import (
    core,
    demo,
    experiment,
    features,
    ingest,
    labels,
    loop,
    models,
    monitor,
    rollout,
    runs,
    serve,
    token,
    train,
    ui,
    webhooks,
)
from modelmill.cli.output import fail
from modelmill.errors import InputError, ModelmillError

app = typer.Typer(
    name="modelmill",
    help="The whole machine-learning loop: ingest, features, train, register, serve, monitor, test, roll out.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    # Help and usage errors are printed as written: Rich markup would swallow "[training] pipelines" and
    # every other bracketed word of the help (the setting applies to every subcommand).
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        from modelmill import __version__

        typer.echo(f"modelmill {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", is_eager=True, callback=_version,
                                 help="Print the package version and exit."),
) -> None:
    """The whole machine-learning loop: ingest, features, train, register, serve, monitor, test, roll out."""


core.register(app)
ingest.register(app)
models.register(app)
features.register(app)
demo.register(app)
runs.register(app)
train.register(app)
experiment.register(app)
rollout.register(app)
serve.register(app)
monitor.register(app)
labels.register(app)
loop.register(app)
token.register(app)
webhooks.register(app)
ui.register(app)


def main() -> None:
    """Console-script entry point: errors become a message (or a JSON object) and a non-zero exit."""
    try:
        app()
    except ModelmillError as exc:
        fail(exc, as_json="--json" in sys.argv, code=2 if isinstance(exc, InputError) else 1)
    except KeyboardInterrupt:
        raise SystemExit(130) from None
