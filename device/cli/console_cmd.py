"""``facegate console``: the operators' web console (runs off the units).

``serve`` runs it; ``user add|passwd|remove|list`` manage its accounts. A reviewer
account gets its own Ed25519 signing key; copy its ``.pub`` file into the units'
review trusted-keys directory so they accept its verdicts.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from device.cli.common import handle_errors
from device.errors import ConfigError

_CONFIG = click.option("-c", "--config", "config_path", required=True,
                       type=click.Path(dir_okay=False, path_type=Path),
                       help="console.toml")


@click.group("console")
def console_group() -> None:
    """The operators' web console: fleet, events, review queue, accuracy."""


@console_group.command("serve")
@_CONFIG
@click.option("--behind-proxy", is_flag=True,
              help="Serve plain HTTP off loopback: a TLS-terminating proxy is in front.")
@handle_errors
def serve_command(config_path: Path, behind_proxy: bool) -> None:
    """Serve the console (listen address, broker and store from the config)."""
    from device.console.config import load_config
    from device.console.serve import serve

    serve(load_config(config_path), behind_proxy=behind_proxy)


@console_group.group("user")
def user_group() -> None:
    """Console accounts (roles: viewer, reviewer, admin)."""


def _password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\n")
    return str(click.prompt("password", hide_input=True, confirmation_prompt=True))


def _store(config_path: Path):  # type: ignore[no-untyped-def]
    from device.console.config import load_config
    from device.console.store import open_store

    config = load_config(config_path)
    return config, open_store(config.store.url)


@user_group.command("add")
@_CONFIG
@click.argument("username")
@click.option("--role", type=click.Choice(["viewer", "reviewer", "admin"]), required=True)
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@handle_errors
def user_add(config_path: Path, username: str, role: str, password_stdin: bool) -> None:
    """Create an account; reviewers and admins get their own signing key."""
    from device.console.auth import add_user

    config, store = _store(config_path)
    try:
        keys = add_user(store, username, role, _password(password_stdin), config.keys.dir)
    finally:
        store.close()
    click.echo(f"user {username} ({role}) created")
    if keys is not None:
        click.echo(f"signing key id  {keys.keyid}")
        click.echo(f"public key      {keys.public}  (copy into each unit's review trusted keys)")


@user_group.command("passwd")
@_CONFIG
@click.argument("username")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@handle_errors
def user_passwd(config_path: Path, username: str, password_stdin: bool) -> None:
    """Set a new password (and unlock the account)."""
    from device.console.auth import hash_password

    _config, store = _store(config_path)
    try:
        hashed = hash_password(_password(password_stdin))
        if not store.update_user(username, password_hash=hashed, failed_logins=0,
                                 locked_until=None):
            raise ConfigError(f"no user {username!r}")
    finally:
        store.close()
    click.echo(f"password of {username} changed")


@user_group.command("remove")
@_CONFIG
@click.argument("username")
@handle_errors
def user_remove(config_path: Path, username: str) -> None:
    """Remove an account (its signing key files stay; untrust them on the units)."""
    _config, store = _store(config_path)
    try:
        user = store.user(username)
        if user is None or not store.remove_user(username):
            raise ConfigError(f"no user {username!r}")
    finally:
        store.close()
    click.echo(f"user {username} removed")
    if user.key_id:
        click.echo(f"remove key {user.key_id} from the units' review trusted keys")


@user_group.command("list")
@_CONFIG
@handle_errors
def user_list(config_path: Path) -> None:
    """Accounts, roles and signing key ids."""
    _config, store = _store(config_path)
    try:
        for row in store.list_users():
            click.echo(f"{row['username']:<20} {row['role']:<9} {row['key_id'] or ''}")
    finally:
        store.close()
