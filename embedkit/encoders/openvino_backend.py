"""Inference through OpenVINO: an encoder's sentence-transformers model converted once, cached, compiled for the CPU.

The torch module stays the model (training, saving, the index fingerprint); OpenVINO only runs
``input ids -> sentence embedding`` for :meth:`~embedkit.encoders.Encoder.encode`. Conversion
(``torch.export``, then ``openvino.convert_model``, offline) takes a minute or so, so the converted model is
written once to the cache folder (:func:`cache_root`) under the fingerprint of the weights and the model's
structure: loading the same model again reads it back, and training the encoder (new weights, new fingerprint)
converts it anew at the next ``encode``. OpenVINO's IR files (XML + weights) are plain data, never pickle.

Precision is OpenVINO's ``INFERENCE_PRECISION_HINT``: bf16 runs on the CPU's AMX or AVX-512 BF16 units, f32
otherwise, as :func:`embedkit.precision.resolve_precision` decides for the torch path.

Batches run in OpenVINO's throughput mode: the model is compiled with ``PERFORMANCE_HINT: THROUGHPUT`` (several
inference streams, each on its own cores) and fed through one asynchronous request per stream, so that the next
batch is tokenized in Python while earlier ones run. sentence-transformers' OpenVINO backend (optimum-intel) runs
one synchronous request in latency mode; ``benchmarks/README.md`` has the two side by side. The embeddings are the
same either way: each text's numbers do not depend on the stream that ran it.

``backend="auto"`` (the default of :func:`~embedkit.encoders.load_encoder` and the commands) takes OpenVINO where
:func:`automatic_backend` says it runs (the CPU, openvino installed): 1.4x torch's bf16 autocast on
all-MiniLM-L6-v2 at the same STS-B (``benchmarks/README.md``), for a conversion of about 7 s once per weights. A
model that does not convert (``torch.export`` or OpenVINO fails on it) is then encoded in torch, with a warning.

int8 (:func:`quantize`) is a separate, opt-in model: post-training static quantization with NNCF, calibrated on
the user's own texts, written into a model folder beside the sentence-transformers files
(``openvino/model-int8.xml``) together with the fingerprint of the weights it came from, and run with
``backend="openvino-int8"``.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import sys
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from sentence_transformers import SentenceTransformer
from torch import Tensor, nn

from embedkit.encoders.fingerprint import model_fingerprint
from embedkit.errors import ConfigError, require
from embedkit.fsutil import atomic_directory

if TYPE_CHECKING:
    import openvino

logger = logging.getLogger(__name__)

EXTRA = "openvino"
MODEL_XML = "model.xml"
INT8_DIR = "openvino"
INT8_XML = "model-int8.xml"
INT8_RECORD = "model-int8.json"
# OpenVINO's names for the compute precisions of embedkit.precision.
_PRECISION_HINTS = {torch.float32: "f32", torch.bfloat16: "bf16"}


def cache_root() -> Path:
    """Where converted models are kept: ``$EMBEDKIT_CACHE``, else ``$XDG_CACHE_HOME/embedkit``, else
    ``~/.cache/embedkit``."""
    if "EMBEDKIT_CACHE" in os.environ:
        return Path(os.environ["EMBEDKIT_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "embedkit"


def require_openvino(purpose: str = "the openvino backend") -> None:
    """A one-line :class:`~embedkit.errors.MissingDependencyError` naming the extra where openvino is missing."""
    require("openvino", EXTRA, purpose)


def automatic_backend(device: str | torch.device | None) -> str:
    """What ``backend="auto"`` runs: ``"openvino"`` on the CPU (``device``, or no CUDA when it is ``None``) where
    openvino is installed, else ``"torch"`` (a GPU, a plain install). Every CPU precision (fp32, bf16, auto) is one
    OpenVINO computes in."""
    on_cpu = torch.device(device).type == "cpu" if device is not None else not torch.cuda.is_available()
    return "openvino" if on_cpu and importlib.util.find_spec("openvino") is not None else "torch"


class SentenceEmbedding(nn.Module):
    """A sentence-transformers model as a function of tensors, the form ``openvino.convert_model`` traces.

    ``forward(*inputs)``: one ``[n, L]`` tensor per name of ``names`` (input ids, attention mask, ...) ->
    ``[n, D]`` sentence embeddings (pooled, and normalised where the model has a Normalize module).
    """

    def __init__(self, model: SentenceTransformer, names: Sequence[str]) -> None:
        super().__init__()
        self.model = model
        self.names = tuple(names)

    def forward(self, *inputs: Tensor) -> Tensor:
        return self.model(dict(zip(self.names, inputs)))["sentence_embedding"]


def input_names(model: SentenceTransformer) -> tuple[str, ...]:
    """The tensors the model's tokenizer gives (``input_ids``, ``attention_mask``, maybe ``token_type_ids``)."""
    features = model.preprocess(["a"])
    return tuple(name for name, value in features.items() if isinstance(value, Tensor))


def export_key(model: SentenceTransformer) -> str:
    """The cache name of ``model``'s conversion: its weights, its modules' configuration and the openvino version.

    The inference length (``max_seq_length``) is left out: the converted model takes any length.
    """
    import openvino

    modules = [type(module).__name__ for module in model]
    configs = [module.get_config_dict() if hasattr(module, "get_config_dict") else {} for module in model][1:]
    architecture = model[0].auto_model.config.to_dict() if hasattr(model[0], "auto_model") else {}
    identity = json.dumps(
        [model_fingerprint(model), modules, configs, architecture, openvino.get_version()], sort_keys=True, default=str
    )
    return hashlib.sha256(identity.encode()).hexdigest()[:32]


def convert(model: SentenceTransformer) -> openvino.Model:
    """Export ``model`` (on the CPU, in eval mode, without gradients) with ``torch.export`` into an OpenVINO model
    with dynamic batch size and length."""
    import openvino

    names = input_names(model)
    features = model.preprocess(["a short example", "a somewhat longer example sentence to trace"])
    example = tuple(features[name] for name in names)
    # torch.export, not torch.jit.trace: tracing fails inside transformers' attention-mask code from 5.5 on.
    dynamic = ({0: torch.export.Dim.AUTO, 1: torch.export.Dim.AUTO},) * len(names)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            exported = torch.export.export(SentenceEmbedding(model, names), example, dynamic_shapes=(dynamic,))
    finally:
        model.train(was_training)
    converted = openvino.convert_model(exported)
    for port, name in zip(converted.inputs, names):
        port.get_tensor().set_names({name})  # exported positionally; the runner feeds the tokenizer's names
    return converted


def exported_model(model: SentenceTransformer, cache: Path | None = None) -> Path:
    """The converted model's XML file in the cache, converting and writing it (atomically) when it is not there."""
    import openvino

    folder = (cache or cache_root()) / "openvino" / export_key(model)
    xml = folder / MODEL_XML
    if not xml.is_file():
        with atomic_directory(folder) as tmp:
            # compress_to_fp16=False: fp32 weights, so that the f32 path gives the torch model's embeddings.
            openvino.save_model(convert(model), str(tmp / MODEL_XML), compress_to_fp16=False)
    return xml


class OpenVINORunner:
    """Runs a model's forward on OpenVINO: ``embed(model, features, dtype) -> [n, D]`` float32.

    The compiled model is kept while ``model``'s weights (their fingerprint) and the precision stay the same, and
    is compiled again from the cache (or converted again) when they change. A copy of a runner
    (``copy.deepcopy`` of an encoder) starts empty and compiles its own on first use.

    Args:
        int8_folder: run the int8 model that :func:`quantize` wrote into this model folder (backend
            ``openvino-int8``); ``None``: the model converted as it is (backend ``openvino``).
        fall_back: chosen by ``backend="auto"``: :meth:`runs` answers ``False`` for a model that does not convert
            or compile, where it would raise, so that the encoder runs it in torch.
    """

    def __init__(self, int8_folder: Path | None = None, *, fall_back: bool = False) -> None:
        require_openvino()
        self.int8_folder = int8_folder
        self.fall_back = fall_back
        self.backend = "openvino" if int8_folder is None else "openvino-int8"
        self._compiled: openvino.CompiledModel | None = None
        self._key: tuple[str, torch.dtype] | None = None

    def __deepcopy__(self, memo: dict[int, object]) -> OpenVINORunner:
        return type(self)(self.int8_folder, fall_back=self.fall_back)

    def runs(self, model: SentenceTransformer, dtype: torch.dtype) -> bool:
        """Compile ``model`` for ``dtype`` (converting it first when its weights are new to the cache): ``True``
        when it is ready; ``False``, with a warning, when that failed and this runner falls back to torch.

        Raises:
            Exception: whatever the conversion or compilation raised, when the runner does not fall back.
        """
        try:
            self._compile(model, dtype)
        # Any error of torch.export or OpenVINO: the torch module still runs the model the user asked for.
        except Exception as error:
            if not self.fall_back:
                raise
            first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
            logger.warning("OpenVINO cannot run this model (%s); encoding it in torch", first_line)
            return False
        return True

    def _model_file(self, model: SentenceTransformer) -> Path:
        if self.int8_folder is None:
            return exported_model(model)
        check_int8_matches(self.int8_folder, model)
        return self.int8_folder / INT8_DIR / INT8_XML

    def _compile(self, model: SentenceTransformer, dtype: torch.dtype) -> openvino.CompiledModel:
        import openvino

        if dtype not in _PRECISION_HINTS:
            raise ConfigError(
                f"the {self.backend} backend runs in fp32 or bf16, not {str(dtype).removeprefix('torch.')}"
            )
        key = (model_fingerprint(model), dtype)
        if self._compiled is None or key != self._key:
            core = openvino.Core()
            # OpenVINO keeps the compiled form of each model here, which makes a second load several times faster.
            core.set_property({"CACHE_DIR": str(cache_root() / "openvino" / "compiled")})
            config = {"INFERENCE_PRECISION_HINT": _PRECISION_HINTS[dtype], "PERFORMANCE_HINT": "THROUGHPUT"}
            self._compiled = core.compile_model(str(self._model_file(model)), "CPU", config)
            self._key = key
        return self._compiled

    def embed_into(
        self,
        model: SentenceTransformer,
        batches: Iterable[tuple[list[int], Mapping[str, Tensor]]],
        dtype: torch.dtype,
        out: np.ndarray,
    ) -> Iterator[int]:
        """Run every batch and write its sentence embeddings into ``out``, computed in ``dtype``.

        Args:
            batches: ``(positions, features)``: the rows of ``out`` a batch fills and its ``model.preprocess``
                features; consumed (tokenized) while earlier batches run.
            dtype: ``torch.float32`` or ``torch.bfloat16``.
            out: float32 ``[n, D]``; each batch's ``[len(positions), D]`` embeddings go to ``out[positions]``.

        Yields:
            The number of texts of each batch as it is written (for a progress bar); all rows are written when the
            iterator is exhausted.
        """
        compiled = self._compile(model, dtype)
        names = [port.any_name for port in compiled.inputs]
        # One request per stream, waited on from this thread: no Python callback runs on OpenVINO's threads, which
        # would need the GIL while a compiled model is being released (a deadlock).
        idle = [
            compiled.create_infer_request() for _ in range(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        ]
        running: deque[tuple[openvino.InferRequest, list[int]]] = deque()  # oldest first

        def collect() -> int:
            request, positions = running.popleft()
            request.wait()
            out[positions] = request.get_output_tensor(0).data
            idle.append(request)
            return len(positions)

        try:
            for positions, features in batches:
                if not idle:
                    yield collect()
                request = idle.pop()
                request.start_async({name: features[name].numpy() for name in names})
                running.append((request, positions))
            while running:
                yield collect()
        finally:
            for request, _ in running:  # on an error, no request may still be running once it is raised
                request.wait()


# -- int8 -------------------------------------------------------------------------------------------------------


def check_int8_matches(folder: Path, model: SentenceTransformer) -> None:
    """Refuse an int8 model that is missing from ``folder`` or was quantized from other weights than ``model``'s.

    Raises:
        ConfigError: one line saying which, and how to quantize.
    """
    record = folder / INT8_DIR / INT8_RECORD
    if not record.is_file():
        raise ConfigError(
            f"{folder} holds no int8 model; write one with: embedkit quantize --model {folder} --calibration TEXTS "
            "--out DIR"
        )
    if json.loads(record.read_text())["fingerprint"] != model_fingerprint(model):
        raise ConfigError(
            f"the int8 model in {folder} was quantized from other weights than the model's; quantize it again"
        )


def quantize(model: SentenceTransformer, calibration: Sequence[str], folder: Path, *, batch_size: int = 32) -> Path:
    """Write an int8 OpenVINO model of ``model`` into its saved model folder ``folder`` (``openvino/model-int8.*``).

    Post-training static quantization with NNCF (``preset=MIXED``: symmetric int8 weights, asymmetric int8
    activations; ``ModelType.TRANSFORMER`` keeps softmax and layer norms in higher precision), calibrated on
    ``calibration``: texts of the kind the model will embed, a few hundred are enough.

    Returns:
        The int8 model's XML file.
    """
    require("nncf", EXTRA, "int8 quantization")
    import nncf
    import openvino

    texts = [text for text in calibration if text.strip()]
    if not texts:
        raise ConfigError("int8 quantization needs calibration texts; none given")
    names = input_names(model)
    batches = [model.preprocess(texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)]
    dataset = nncf.Dataset(batches, lambda features: {name: features[name].numpy() for name in names})
    fp32 = openvino.Core().read_model(str(exported_model(model)))
    with _output_to_stderr(logging.getLogger("nncf")):
        quantized = nncf.quantize(
            fp32,
            dataset,
            preset=nncf.QuantizationPreset.MIXED,
            model_type=nncf.ModelType.TRANSFORMER,
            subset_size=len(batches),
        )
    record = {"fingerprint": model_fingerprint(model), "calibration_texts": len(texts), "nncf": nncf.__version__}
    with atomic_directory(Path(folder) / INT8_DIR) as tmp:
        openvino.save_model(quantized, str(tmp / INT8_XML), compress_to_fp16=False)
        (tmp / INT8_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    return Path(folder) / INT8_DIR / INT8_XML


@contextlib.contextmanager
def _output_to_stderr(logger: logging.Logger) -> Iterator[None]:
    """Progress bars and ``logger``'s records on stderr inside the block: NNCF writes both to stdout, where a
    command prints its result."""
    handlers = [h for h in logger.handlers if isinstance(h, logging.StreamHandler) and h.stream is sys.stdout]
    for handler in handlers:
        handler.setStream(sys.stderr)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        for handler in handlers:
            handler.setStream(sys.stdout)
