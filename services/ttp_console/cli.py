"""`ttp-console`: run the web console, or manage its local users file.

``ttp-console`` alone runs the console configured by the ``TTP_`` environment; a plain start
skips the command-line framework (typer and rich cost a cold start about a tenth of a
second of imports). ``ttp-console users add|list|remove`` manage the users file of users
mode (``TTP_CONSOLE_USERS_FILE``, or ``--file``).

Exit codes: 0 done, 1 the users file or the request cannot be used, 2 usage error.
"""

# No `from __future__ import annotations`: typer reads the commands' annotations at run
# time, and those name objects local to make_app.
import getpass
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Final

if TYPE_CHECKING:
    import typer

    from ttp_console.auth.users_file import LocalUser

HELP: Final = (
    "Run the ttp-rulebus web console (ATT&CK matrix, rules, fleet, live tags), configured by"
    " TTP_* environment variables (TTP_NATS_URL, TTP_CONSOLE_PORT, TTP_CONSOLE_AUTH, ...)."
    " `users` manages its local users file."
)
DEFAULT_USERS_FILE: Final = "console-users.txt"
MIN_PASSWORD_CHARS: Final = 8


def run_console() -> None:
    """Run the console configured by the environment; exits with its exit code."""
    import pydantic

    from ttp_console.bootstrap import run
    from ttp_console.settings import ConsoleSettings

    try:
        settings = ConsoleSettings()
    except pydantic.ValidationError as exc:
        # One line per wrong variable instead of a traceback: the fix is in the environment.
        for error in exc.errors():
            where = "TTP_" + "_".join(str(part) for part in error["loc"][:1]).upper()
            message = str(error["msg"]).removeprefix("Value error, ")
            print(
                f"ttp-console: {where if error['loc'] else 'settings'}: {message}", file=sys.stderr
            )
        sys.exit(2)
    sys.exit(run(settings))


def _read_password(from_stdin: bool) -> str:
    """The new password: one line of standard input, or typed twice at a prompt."""
    if from_stdin:
        line = sys.stdin.readline()
        return line.removesuffix("\n").removesuffix("\r")
    first = getpass.getpass("Password: ")
    second = getpass.getpass("Password again: ")
    if first != second:
        raise ValueError("the two passwords differ")
    return first


class UsersCommandError(Exception):
    """A `users` command cannot be done; the message says why (exit code 1)."""


def add_user(file: Path, name: str, role: str, *, password_stdin: bool, replace: bool) -> str:
    """Add (or replace) ``name`` in ``file``; returns what was done."""
    from argon2 import PasswordHasher

    from ttp_console.auth.local_users import MAX_PASSWORD_CHARS
    from ttp_console.auth.users_file import LocalUser, check_name
    from ttp_console.context import CONSOLE_ROLES

    try:
        check_name(name)
    except ValueError as exc:
        raise UsersCommandError(str(exc)) from None
    if role not in CONSOLE_ROLES:
        raise UsersCommandError("--role must be viewer or operator")
    users = _read(file, missing_ok=True)
    if name in users and not replace:
        raise UsersCommandError(f"user {name} exists already in {file} (--replace changes it)")
    try:
        password = _read_password(password_stdin)
    except (ValueError, EOFError) as exc:
        raise UsersCommandError(str(exc) or "no password given") from None
    if not MIN_PASSWORD_CHARS <= len(password) <= MAX_PASSWORD_CHARS:
        raise UsersCommandError(
            f"a password has {MIN_PASSWORD_CHARS} to {MAX_PASSWORD_CHARS} characters"
        )
    existed = name in users
    users[name] = LocalUser(
        name, "operator" if role == "operator" else "viewer", PasswordHasher().hash(password)
    )
    _write(file, users)
    return f"{'replaced' if existed else 'added'} {name} ({role}) in {file}"


def list_users(file: Path) -> list[str]:
    """One ``NAME  ROLE`` line per user of ``file``, sorted by name."""
    users = _read(file, missing_ok=True)
    width = max((len(name) for name in users), default=0)
    return [f"{name:<{width}}  {users[name].role}" for name in sorted(users)]


def remove_user(file: Path, name: str) -> str:
    """Remove ``name`` from ``file``; returns what was done."""
    users = _read(file, missing_ok=False)
    if users.pop(name, None) is None:
        raise UsersCommandError(f"no user {name} in {file}")
    _write(file, users)
    return f"removed {name} from {file}"


def _read(file: Path, *, missing_ok: bool) -> "dict[str, LocalUser]":
    from ttp_console.auth.users_file import UsersFileError, read_users

    try:
        return read_users(file, missing_ok=missing_ok)
    except UsersFileError as exc:
        raise UsersCommandError(str(exc)) from None


def _write(file: Path, users: "dict[str, LocalUser]") -> None:
    from ttp_console.auth.users_file import write_users

    try:
        write_users(file, users)
    except OSError as exc:
        raise UsersCommandError(f"{file}: cannot be written ({exc.strerror or exc})") from None


def make_app() -> "typer.Typer":
    """The typer app of `ttp-console`."""
    import typer

    app = typer.Typer(
        name="ttp-console", help=HELP, add_completion=False, pretty_exceptions_enable=False
    )
    users_app = typer.Typer(
        help="Manage the console's local users file (users mode).", no_args_is_help=True
    )
    app.add_typer(users_app, name="users")
    file_option = typer.Option(
        "--file",
        envvar="TTP_CONSOLE_USERS_FILE",
        help="The users file (default: TTP_CONSOLE_USERS_FILE, else ./console-users.txt).",
    )

    def report(work: Callable[[], str | list[str]]) -> None:
        try:
            done = work()
        except UsersCommandError as exc:
            typer.echo(f"ttp-console: {exc}", err=True)
            raise typer.Exit(1) from None
        for line in [done] if isinstance(done, str) else done:
            typer.echo(line)

    @app.callback(invoke_without_command=True)
    def root(context: typer.Context) -> None:
        if context.invoked_subcommand is None:
            run_console()

    @users_app.command("add")
    def add(
        name: Annotated[str, typer.Argument(help="The user's login name.")],
        role: Annotated[
            str, typer.Option("--role", help="viewer (looks) or operator (also changes state).")
        ],
        password_stdin: Annotated[
            bool, typer.Option("--password-stdin", help="Read the password from standard input.")
        ] = False,
        replace: Annotated[
            bool, typer.Option("--replace", help="Replace the user if it exists already.")
        ] = False,
        file: Annotated[Path, file_option] = Path(DEFAULT_USERS_FILE),
    ) -> None:
        """Add a user (with --replace: set an existing user's password and role)."""
        report(lambda: add_user(file, name, role, password_stdin=password_stdin, replace=replace))

    @users_app.command("list")
    def list_command(file: Annotated[Path, file_option] = Path(DEFAULT_USERS_FILE)) -> None:
        """List the users and their roles."""
        report(lambda: list_users(file))

    @users_app.command("remove")
    def remove(
        name: Annotated[str, typer.Argument(help="The user to remove.")],
        file: Annotated[Path, file_option] = Path(DEFAULT_USERS_FILE),
    ) -> None:
        """Remove a user (their sessions end at their next request)."""
        report(lambda: remove_user(file, name))

    return app


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if not args:
        run_console()
    make_app()(args=args, prog_name="ttp-console")


if __name__ == "__main__":
    main()
