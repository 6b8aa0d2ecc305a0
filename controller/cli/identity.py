"""`virtplane login | logout | auth can-i | auth whoami | token create|list|revoke | audit`.

``login`` asks the server for a session (the password is prompted for without echo, or read from stdin
when it is not a terminal) and stores the session token in the CLI config (mode 0600) in place of the
previous token; ``logout`` revokes it on the server and removes it from the config.
"""

from __future__ import annotations

import getpass
import os
import sys
from typing import Annotated

import typer

from controller.cli.common import EXIT_FORBIDDEN, EXIT_INVALID, Globals, client, fail, reporting
from controller.cli.output import age, err, out, print_table
from controller.client.config import ClientConfig, config_path, load_client_config, write_client_config

auth_app = typer.Typer(no_args_is_help=True, help="What the caller may do.")
token_app = typer.Typer(no_args_is_help=True, help="API tokens of service accounts (admins).")


def _read_password(username: str) -> str:
    if sys.stdin.isatty():
        return getpass.getpass(f"Password for {username}: ")
    line = sys.stdin.readline()
    return line[:-1] if line.endswith("\n") else line


def login(
    username: Annotated[str | None, typer.Option("--username", "-u", help="Directory login name.")] = None,
) -> None:
    """Log in with a directory account; the session token goes into the CLI config (mode 0600)."""
    from controller.client.sdk import Client

    config = load_client_config(Globals.server, None, Globals.ca)
    name = username or os.environ.get("USER") or getpass.getuser()
    password = _read_password(name)
    if not password:
        fail("empty password; nothing sent", EXIT_INVALID)
    with reporting(), Client(config.server, None, ca=config.ca) as anonymous:
        session = anonymous.login(name, password)
    del password
    path = write_client_config(
        ClientConfig(server=config.server, token=session["token"], ca=config.ca, user=session["user"])
    )
    groups = ", ".join(session["groups"]) or "no groups"
    out.print(f"logged in as {session['user']} ({groups}); session {session['id']} until {session['expires']}")
    err.print(f"session token stored in {path} (mode 0600)")


def logout() -> None:
    """Revoke this session on the server and remove its token from the CLI config."""
    from controller.client.sdk import Client

    config = load_client_config(Globals.server, Globals.token, Globals.ca)
    with reporting(), Client(config.server, config.token, ca=config.ca) as vp:
        done = vp.logout()
    if config_path().exists():
        write_client_config(ClientConfig(server=config.server, token=None, ca=config.ca))
    out.print(f"logged out (session {done.get('loggedOut') or '-'} revoked)")


@auth_app.command("can-i")
def can_i(
    verb: Annotated[str, typer.Argument(help="get, list, watch, create, update or delete.")],
    kind: Annotated[str, typer.Argument(help="A kind (vm, disks, ...), Event, AuditRecord or ApiToken.")],
    cluster: Annotated[str | None, typer.Option("--cluster", "-n", help="In this cluster.")] = None,
) -> None:
    """Answer yes or no for the caller (exit 0 yes, 5 no)."""
    with reporting(), client() as vp:
        answer = vp.can_i(verb, kind, cluster)
    out.print("yes" if answer["allowed"] else "no")
    if not answer["allowed"]:
        raise typer.Exit(EXIT_FORBIDDEN)


@auth_app.command()
def whoami() -> None:
    """Who the server thinks the caller is."""
    with reporting(), client() as vp:
        me = vp.whoami()
    out.print(f"{me['user']}  groups: {', '.join(me['groups']) or '-'}  credential: {me['credential']}")


@token_app.command("create")
def token_create(
    account: Annotated[str, typer.Argument(help="Service account name (bind it with a RoleBinding subject).")],
    description: Annotated[str, typer.Option("--description", help="For people.")] = "",
    ttl: Annotated[int | None, typer.Option("--ttl", help="Seconds until it expires; default never.")] = None,
) -> None:
    """Create an API token; it is printed once, on stdout."""
    with reporting(), client() as vp:
        made = vp.create_token(account, description, ttl)
    err.print(f"token {made['id']} for serviceaccount:{made['account']} (expires {made['expires'] or 'never'})")
    out.print(made["token"])


@token_app.command("list")
def token_list() -> None:
    """API tokens (ids, never the secrets)."""
    with reporting(), client() as vp:
        items = vp.list_tokens()
    rows = [[t["id"], t["account"], age(t["created"]), t["expires"] or "never", t["description"] or "-"]
            for t in items]
    print_table(["ID", "ACCOUNT", "AGE", "EXPIRES", "DESCRIPTION"], rows)


@token_app.command("revoke")
def token_revoke(token_id: Annotated[str, typer.Argument(help="Token id (from `token list`).")]) -> None:
    """Revoke an API token at once."""
    with reporting(), client() as vp:
        done = vp.revoke_token(token_id)
    out.print(f"token {done['id']} of serviceaccount:{done['account']} revoked")


def audit(
    user: Annotated[str | None, typer.Option("--user", help="Only this user (or serviceaccount:NAME).")] = None,
    since: Annotated[str | None, typer.Option("--since", help="ISO-8601 time, e.g. 2026-12-02T01:00:00+00:00.")] = None,
    limit: Annotated[int, typer.Option("--limit", help="At most this many (newest).")] = 500,
) -> None:
    """Who wrote what, when, from where, allowed or denied (admins)."""
    with reporting(), client() as vp:
        items = vp.audit(user=user, since=since, limit=limit)
    rows = []
    for r in items:
        objects = ",".join(r["objects"]) or "-"
        if r["object_count"] > len(r["objects"]):
            objects += f" (+{r['object_count'] - len(r['objects'])})"
        rows.append([r["time"][:19] + "Z", r["user"], r["verb"], "allowed" if r["allowed"] else "DENIED",
                     str(r["code"]), r["address"] or "-", r["correlation_id"] or "-", objects, r["reason"] or ""])
    print_table(["TIME", "USER", "VERB", "RESULT", "CODE", "FROM", "CORRELATION", "OBJECTS", "REASON"], rows)
