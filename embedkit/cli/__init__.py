"""The ``embedkit`` command line: train | encode | eval | index | search | mine | select-pairs | split-queries |
losses.

One module per command group (:mod:`~embedkit.cli.train`, :mod:`~embedkit.cli.encode`, :mod:`~embedkit.cli.eval`,
:mod:`~embedkit.cli.index`, :mod:`~embedkit.cli.mine`, :mod:`~embedkit.cli.data`), each adding its commands with
``register``; shared options live in :mod:`~embedkit.cli.options`.

User errors (bad data, unknown names, bad recipes) print one line on stderr and exit with status 2. Results go
to stdout; messages (embedkit's logging) and progress bars to stderr: ``-q`` leaves warnings and errors only,
``-v`` adds debug messages. Parsing arguments and ``--help`` load no model library (torch, transformers).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Iterator, Sequence

from embedkit import progress
from embedkit.cli import data, encode, eval, index, mine, train
from embedkit.errors import EmbedkitError

EXIT_USAGE = 2
EXIT_BROKEN_PIPE = 128 + 13  # as a command stopped by SIGPIPE exits: its reader went away (`embedkit losses | head`)


class _MessageFormatter(logging.Formatter):
    """``embedkit: message`` for information, ``embedkit: warning: message`` (debug, error) for the rest."""

    def format(self, record: logging.LogRecord) -> str:
        level = "" if record.levelno == logging.INFO else f"{record.levelname.lower()}: "
        return f"embedkit: {level}{record.getMessage()}"


@contextlib.contextmanager
def output_settings(quiet: bool, verbose: bool) -> Iterator[None]:
    """Inside the block, embedkit's messages print on stderr at the level ``-q`` / ``-v`` ask for (above any
    running bar) and progress bars show unless quiet; everything is put back after it, so that ``main`` can run
    inside a larger program. transformers' own warnings stay hidden unless ``-v`` (or the user's
    ``TRANSFORMERS_VERBOSITY``) asks for them."""
    from tqdm.contrib.logging import logging_redirect_tqdm

    logger = logging.getLogger("embedkit")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_MessageFormatter())
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO)
    shown = progress.set_progress(not quiet)
    hide_transformers = not verbose and "TRANSFORMERS_VERBOSITY" not in os.environ
    if hide_transformers:
        os.environ["TRANSFORMERS_VERBOSITY"] = "error"  # read when transformers is first imported
    try:
        with logging_redirect_tqdm([logger]):
            yield
    finally:
        if hide_transformers:
            del os.environ["TRANSFORMERS_VERBOSITY"]
        progress.set_progress(shown)
        logger.setLevel(level)
        logger.removeHandler(handler)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="embedkit", description="Contrastive text embeddings: train, encode, evaluate."
    )
    loudness = parser.add_mutually_exclusive_group()
    loudness.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only, no progress bars")
    loudness.add_argument("-v", "--verbose", action="store_true", help="debug messages too")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in (train, encode, eval, index, mine, data):
        group.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with output_settings(args.quiet, args.verbose):
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
