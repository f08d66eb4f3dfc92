"""``embedkit encode``: embed the texts of a file into a ``.npy`` array; ``embedkit quantize``: an int8 model for
the ``openvino-int8`` backend."""

from __future__ import annotations

import argparse
from pathlib import Path

from embedkit.cli.options import add_model_options, add_prompt_options, add_truncate_dim, load_model, print_json
from embedkit.encoders import DEFAULT_MODEL


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


def _read_texts(path: Path, column: str, format: str | None) -> list[str]:
    """The non-blank texts of column ``column`` (a txt file: its lines)."""
    from embedkit.data import read_rows

    texts = [row.get(column) for _, row in read_rows(path, format=format)]
    return [text for text in texts if isinstance(text, str) and text.strip()]


def cmd_quantize(args: argparse.Namespace) -> int:
    from embedkit.encoders import load_encoder
    from embedkit.encoders.openvino_backend import quantize, require_openvino
    from embedkit.errors import ConfigError, DataError, require

    if args.samples < 1:
        raise ConfigError(f"--samples must be at least 1, got {args.samples}")
    require_openvino("embedkit quantize")
    require("nncf", "openvino", "embedkit quantize")
    calibration = _read_texts(args.calibration, args.column, args.format)[: args.samples]
    if not calibration:
        raise DataError(f"no calibration text: column {args.column!r} is missing or blank in every row",
                        str(args.calibration))
    encoder = load_encoder(args.model, device="cpu", precision="fp32")
    encoder.save(args.out)
    quantize(encoder.model, calibration, args.out, batch_size=args.batch_size)
    result: dict[str, object] = {"out": str(args.out), "calibration_texts": len(calibration)}
    if args.sts is not None:
        from embedkit.eval import STSEvaluator

        evaluator = STSEvaluator(args.sts)
        scores = {backend: evaluator(load_encoder(args.out, precision=args.precision, backend=backend))["spearman"]
                  for backend in ("openvino", "openvino-int8")}
        result |= {"sts_spearman": scores, "sts_drop": scores["openvino"] - scores["openvino-int8"]}
    if args.json:
        print_json(result)
        return 0
    print(f"wrote the int8 model of {args.model} into {args.out} ({len(calibration)} calibration texts); "
          f"use it with --model {args.out} --backend openvino-int8")
    if args.sts is not None:
        scores = result["sts_spearman"]
        print(f"STS Spearman x100 on {args.sts}: {scores['openvino']:.2f} openvino ({args.precision}), "
              f"{scores['openvino-int8']:.2f} openvino-int8, drop {result['sts_drop']:.2f}")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``encode`` and ``quantize``."""
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

    quantize = commands.add_parser(
        "quantize", help="write a model with an int8 OpenVINO copy beside it, calibrated on your texts"
    )
    quantize.add_argument("--model", default=DEFAULT_MODEL, help=f"model name or folder (default: {DEFAULT_MODEL})")
    quantize.add_argument("--calibration", required=True, type=Path,
                          help="texts like those the model will embed: txt (one per line), jsonl, csv, tsv or parquet")
    quantize.add_argument("--out", required=True, type=Path, help="the model folder to write")
    quantize.add_argument("--column", default="text", help="the text column of a table (default: text)")
    quantize.add_argument("--format", default=None, help="calibration file format, if the suffix does not say")
    quantize.add_argument("--samples", type=int, default=300, help="calibration texts to use (default: 300)")
    quantize.add_argument("--batch-size", type=int, default=32, help="calibration batch size")
    quantize.add_argument("--sts", type=Path, default=None,
                          help="scored pairs (STS jsonl) to report the Spearman of the model before and after")
    quantize.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                          help="precision of the non-int8 parts and of the comparison (default: auto)")
    quantize.add_argument("--json", action="store_true", help="print the result as JSON")
    quantize.set_defaults(func=cmd_quantize)
