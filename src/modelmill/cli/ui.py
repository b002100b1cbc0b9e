"""``modelmill ui``: the web console on its own (the same app ``modelmill serve`` mounts at ``/ui``)."""

from __future__ import annotations

import typer

from modelmill.cli.output import err_console
from modelmill.errors import InputError

__all__ = ["register", "ui"]


def register(app: typer.Typer) -> None:
    app.command()(ui)


def ui(
    host: str = typer.Option("127.0.0.1", help="Interface to listen on."),
    port: int = typer.Option(8090, min=1, max=65535, help="TCP port."),
    prefix: str = typer.Option("/ui", help="Path the console answers under ('/ui', as under modelmill serve)."),
    log_level: str = typer.Option("warning", help="uvicorn log level."),
) -> None:
    """Serve the web console alone: the project's models, runs, rollouts, experiments, monitoring, ingestion.

    Sign in with an API token (modelmill token create --role read to look, --role admin to promote and roll
    back), or send it as 'Authorization: Bearer <token>'. The console reads this folder's project, as every
    other command does; it opens at http://HOST:PORT/ui/.
    """
    import uvicorn
    from starlette.applications import Starlette
    from starlette.responses import RedirectResponse
    from starlette.routing import Mount, Route

    from modelmill.console.app import create_console
    from modelmill.project import open_project
    from modelmill.security import Authenticator, TokenStore

    if not prefix.startswith("/") or (prefix.endswith("/") and prefix != "/") or "//" in prefix:
        raise InputError("--prefix", "must be a path such as /ui (a leading slash, no trailing one)", prefix)
    with open_project() as project:
        auth = Authenticator(TokenStore(project))
        auth.refresh()
        console = create_console(project, auth, refresh_s=10.0)
        if prefix == "/":
            app = console
        else:
            async def home(request):  # type: ignore[no-untyped-def]
                return RedirectResponse(f"{prefix}/", 307)

            app = Starlette(routes=[Route("/", home), Mount(prefix, app=console)], lifespan=console.router.lifespan_context)
        err_console.print(f"modelmill ui: http://{host}:{port}{prefix.rstrip('/')}/ (sign in with an API token)",
                          highlight=False, markup=False, soft_wrap=True)
        uvicorn.run(app, host=host, port=port, log_level=log_level)
