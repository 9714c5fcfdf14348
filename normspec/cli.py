"""The `normspec` command line: one module per subcommand under `normspec.commands`."""
from __future__ import annotations

import argparse
import importlib
import sys

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own errors exit 2 with usage, as ours do
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"normspec: error: {message}\n")


def split_names(values):
    """Names given as repeated and/or comma-separated options."""
    return [v for item in values or [] for v in item.split(",") if v]


# Subcommands: each module defines `register(subparsers)`; listed here in the order of --help.
COMMANDS = (
    "normspec.commands.check",
    "normspec.commands.validate",
    "normspec.commands.bench",
    "normspec.commands.list",
)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="normspec", description="Executable specification and property-based "
                    "verification of normalization layers.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for module in COMMANDS:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            continue
        mod.register(sub)
    return parser


def main(argv=None) -> int:
    """Parse, then run the subcommand; SIGINT/SIGTERM end it with a one-line message and 130/143
    (the subcommands keep and write their partial results first)."""
    from normspec.guard import exit_status, install_signal_handlers, interrupted_message

    args = build_parser().parse_args(argv)
    if argv is None:  # the console script, not a call from Python code (tests, embedding)
        install_signal_handlers()
    try:
        return args.func(args)
    except KeyboardInterrupt as exc:
        print(interrupted_message(args.command, exc), file=sys.stderr)
        return exit_status(exc)
    except BrokenPipeError:  # `normspec list | head`: the reader left; say nothing, as other Unix tools do
        if argv is None:
            import os
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 141  # 128 + SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
