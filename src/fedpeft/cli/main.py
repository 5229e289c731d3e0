"""The ``fedpeft`` console script.

Every fedpeft error becomes one line on stderr and exit code 2, and so does an operating
system error about a named file (missing, unreadable: the operator's to fix, and the line
names the file); any other exception (a bug) one line and exit code 1; ``--debug`` shows
the traceback instead.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from typing import NoReturn

import typer

from fedpeft.errors import FedPeftError

app = typer.Typer(
    name="fedpeft",
    help="Federated parameter-efficient fine-tuning of language models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

_DEBUG = {"on": False}


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="show tracebacks and debug logs"),
) -> None:
    _DEBUG["on"] = debug
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _register() -> None:
    from fedpeft.cli import dp, export, offsite, simulate, train
    from fedpeft.cli import init as init_cmd

    train.register(app)
    export.register(app)
    simulate.register(app)
    init_cmd.register(app)
    offsite.register(app)
    from fedpeft.cli import client, coordinator  # the gRPC deployment

    coordinator.register(app)
    client.register(app)
    dp.register(app)
    from fedpeft.cli import generate  # try a causal-LM run's adapter

    generate.register(app)
    from fedpeft.cli import audit  # attacks on what the coordinator holds

    audit.register(app)


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Library deprecation chatter (transformers v6 renames) is not for our users.
    warnings.filterwarnings("ignore", category=FutureWarning)
    _register()
    try:
        app(args=argv, standalone_mode=True)
    except FedPeftError as exc:
        if _DEBUG["on"]:
            raise
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except OSError as exc:
        if _DEBUG["on"]:
            raise
        if exc.filename is None:  # no file to name: treat as unexpected
            _unexpected(exc)
        print(f"error: {exc.filename}: {exc.strerror or exc}", file=sys.stderr)
        sys.exit(2)
    except Exception as exc:  # a bug, not a user error: still one line unless --debug
        if _DEBUG["on"]:
            raise
        _unexpected(exc)


def _unexpected(exc: BaseException) -> NoReturn:
    """A bug, not a user error: still one line, exit code 1."""
    lines = str(exc).strip().splitlines()
    print(
        f"error: {type(exc).__name__}: {lines[0] if lines else ''} "
        "(unexpected: `fedpeft --debug ...` shows the traceback)",
        file=sys.stderr,
    )
    sys.exit(1)


if __name__ == "__main__":
    main()
