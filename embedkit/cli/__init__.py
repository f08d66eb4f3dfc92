"""The ``embedkit`` command line: train | encode | eval | index | search | mine | select-pairs | split-queries |
losses.

One module per command group (:mod:`~embedkit.cli.train`, :mod:`~embedkit.cli.encode`, :mod:`~embedkit.cli.eval`,
:mod:`~embedkit.cli.index`, :mod:`~embedkit.cli.mine`, :mod:`~embedkit.cli.data`), each adding its commands with
``register``; shared options live in :mod:`~embedkit.cli.options`.

User errors (bad data, unknown names, bad recipes) print one line on stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from embedkit.cli import data, encode, eval, index, mine, train
from embedkit.errors import EmbedkitError

EXIT_USAGE = 2
EXIT_BROKEN_PIPE = 128 + 13  # as a command stopped by SIGPIPE exits: its reader went away (`embedkit losses | head`)


def _quiet_libraries() -> None:
    """Hide the per-file progress bars of model loading; embedkit shows its own for long work."""
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="embedkit", description="Contrastive text embeddings: train, encode, evaluate."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in (train, encode, eval, index, mine, data):
        group.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _quiet_libraries()
        code = args.func(args)
        sys.stdout.flush()  # here, so that a reader gone away is noticed below and not at interpreter exit
        return code
    except EmbedkitError as error:
        print(f"embedkit: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("embedkit: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        _discard_stdout()
        return EXIT_BROKEN_PIPE


def _discard_stdout() -> None:
    """Point standard output at the null device: what is still buffered for the closed pipe is dropped, where
    flushing it at exit would fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


if __name__ == "__main__":
    sys.exit(main())
