"""``modelmill token create|list|revoke``: API tokens for the HTTP API (roles read, predict, admin)."""

from __future__ import annotations

import datetime as dt

import typer

from modelmill.cli.output import JsonOption, console, emit_json, err_console, table
from modelmill.project import open_project
from modelmill.security import ROLES, TokenStore

app = typer.Typer(help="API tokens: create (the secret is shown once), list, revoke.", no_args_is_help=True)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="token")


def _when(ts: float | None) -> str:
    return "" if ts is None else dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@app.command()
def create(
    role: str = typer.Option(..., "--role", "-r", help=f"One of {', '.join(ROLES)}: read looks, predict also predicts, "
                              "label also posts labels, admin does all."),
    name: str | None = typer.Option(None, "--name", "-n", help="A name to recognise it by (default: ROLE-ID)."),
    as_json: bool = JsonOption,
) -> None:
    """Create a token; its secret is printed once and only its sha256 is stored."""
    with open_project() as project:
        token, secret = TokenStore(project).create(role, name=name, actor="cli")
    if as_json:
        emit_json({**token.as_dict(), "token": secret})
        return
    console.print(f"token [bold]{token.name}[/] (id {token.id}, role {token.role}):", highlight=False)
    console.print(secret, highlight=False, soft_wrap=True)
    err_console.print("Store it now: it is not shown again. Send it as 'Authorization: Bearer <token>'.")


@app.command("list")
def list_(
    all_: bool = typer.Option(True, "--all/--active", help="Include revoked tokens (default) or only active ones."),
    as_json: bool = JsonOption,
) -> None:
    """List tokens (never their secrets)."""
    with open_project() as project:
        tokens = TokenStore(project).list(include_revoked=all_)
    if as_json:
        emit_json({"tokens": [t.as_dict() for t in tokens]})
        return
    table("API tokens", ["id", "name", "role", "created", "by", "revoked"],
          [[t.id, t.name, t.role, _when(t.created_at), t.created_by, _when(t.revoked_at)] for t in tokens])


@app.command()
def revoke(
    ref: str = typer.Argument(..., help="The token's id or name."),
    as_json: bool = JsonOption,
) -> None:
    """Revoke a token; running servers refuse it after their next reload (about a second)."""
    with open_project() as project:
        token = TokenStore(project).revoke(ref, actor="cli")
    if as_json:
        emit_json(token.as_dict())
    else:
        console.print(f"revoked token {token.name} (id {token.id}) at {_when(token.revoked_at)}", highlight=False)
