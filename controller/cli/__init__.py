"""The `tzero` command line: one module per command, the parsing and output they share.

Each command module exposes `register(subparsers)`, which adds its parser and sets
`func(args) -> int`; main.py dispatches and is the one place errors become exit codes.
"""
