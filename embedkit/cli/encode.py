"""``embedkit encode``: embed the texts of a file into a ``.npy`` array."""

from __future__ import annotations

import argparse
from pathlib import Path

from embedkit.cli.options import add_model_options, add_prompt_options, add_truncate_dim, load_model, print_json


def cmd_encode(args: argparse.Namespace) -> int:
    import numpy as np

    from embedkit import distributed
    from embedkit.data import read_rows
    from embedkit.encoders.prompts import named_prompt
    from embedkit.errors import DataError
    from embedkit.index.sharded import encode_sharded

    texts = []
    # row i of the array embeds row i of the file, so a blank line of a text file is an error, not skipped
    for line, row in read_rows(args.input, format=args.format, keep_blank_lines=True):
        text = row.get(args.column)
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"no text to embed: column {args.column!r} is missing or blank", str(args.input), line)
        texts.append(text)
    if not texts:
        raise DataError("no text to embed: the file holds no rows", str(args.input))
    distributed.init_from_environment()  # under torchrun: each process embeds a shard, rank 0 writes them all
    encoder = load_model(args)
    prompt = args.prompt if args.prompt_name is None else named_prompt(encoder.prompts, args.prompt_name)
    embeddings = encode_sharded(encoder, texts, batch_size=args.batch_size, normalize=args.normalize,
                                show_progress=not args.json, prompt=prompt)
    if embeddings is None:
        return 0
    np.save(args.output, embeddings)
    if args.json:
        print_json({"output": str(args.output), "shape": list(embeddings.shape)})
    else:
        print(f"wrote {embeddings.shape[0]} x {embeddings.shape[1]} float32 embeddings to {args.output}")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``encode``."""
    encode = commands.add_parser("encode", help="embed the texts of a file into a .npy array")
    add_model_options(encode)
    add_truncate_dim(encode)
    encode.add_argument("--input", required=True, help="txt (one text per line), jsonl, csv, tsv or parquet")
    encode.add_argument("--output", required=True, type=Path, help="the .npy file to write")
    encode.add_argument("--column", default="text", help="the text column of a table (default: text)")
    encode.add_argument("--format", default=None, help="input format, if the suffix does not say")
    encode.add_argument("--normalize", action="store_true", help="L2-normalise the embeddings")
    add_prompt_options(encode, "every text", "the model's default prompt, if it has one")
    encode.add_argument("--json", action="store_true", help="print the result as JSON")
    encode.set_defaults(func=cmd_encode)
