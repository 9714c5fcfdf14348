"""Subcommands of the `normspec` command line, one module each with a `register(subparsers)`."""
