"""What every benchmark script shares: a description of the machine, progress logging, and the result file.

The scripts import it as ``import _common`` (Python puts a script's own folder first on ``sys.path``, also in
the processes they spawn). It imports nothing heavy, not even embedkit (whose package imports torch):
``bench_scale.py``'s launcher must stay small, because Linux carries a parent's peak memory into the ``ru_maxrss``
of the children it measures. Versions are therefore read from the installed packages' metadata, or from the
module itself when the script has already imported it.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import json
import logging
import math
import os
import platform
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
DEFAULT_PACKAGES = ("embedkit", "torch", "numpy")


# -- the machine -----------------------------------------------------------------------------------------------
def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (``platform.processor()`` where that file does not exist)."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    names = (line.partition(":")[2].strip() for line in lines if line.startswith("model name"))
    return next(names, "") or platform.processor()


def cpu_cores() -> int:
    """The cores this process may run on (its affinity, which a container or ``taskset`` can narrow)."""
    return len(os.sched_getaffinity(0))


def memory_mib() -> float:
    """The machine's memory (``MemTotal``) in MiB; NaN where ``/proc/meminfo`` does not exist."""
    meminfo = Path("/proc/meminfo")
    for line in meminfo.read_text().splitlines() if meminfo.exists() else []:
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / 1024
    return math.nan


def load_average() -> list[float]:
    """The 1-, 5- and 15-minute load averages: above the core count, other work was competing for the CPU."""
    return [round(value, 2) for value in os.getloadavg()]


def version(package: str) -> str | None:
    """The version of ``package``: its module's ``__version__`` when the script imported it, else the installed
    distribution's; ``None`` when it is not installed."""
    module = sys.modules.get(package)
    found = getattr(module, "__version__", None)
    if isinstance(found, str):
        return found
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def versions(packages: Sequence[str]) -> dict[str, str | None]:
    """``{package: version}``, keyed by the names as given (a module or a distribution name)."""
    return {package: version(package) for package in packages}


def machine_info(packages: Sequence[str] = DEFAULT_PACKAGES, **extra: object) -> dict[str, object]:
    """Where and with what the numbers were taken: CPU, cores, memory, load, Python, platform, package versions.

    Args:
        packages: the packages whose versions to record (``versions`` keys, spelled as given).
        extra: more entries (threads, GPUs, precision, ...), added after the common ones.
    """
    return {
        "cpu_model": cpu_model(),
        "cpu_cores": cpu_cores(),
        "memory_gib": round(memory_mib() / 1024, 1),
        "load_average": load_average(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions(packages),
        **extra,
    }


def missing_package(module: str | None, install: str | None) -> str | None:
    """Why a peer that needs ``module`` (installed by ``pip install install``) cannot run here; ``None``: it can."""
    if module is None:
        return None
    try:
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # the parent package (optimum of optimum.intel) is missing
        found = False
    return None if found else f"not installed: pip install '{install}'"


# -- progress --------------------------------------------------------------------------------------------------
def setup_logging(name: str) -> Callable[[str], None]:
    """A ``log(message)`` for progress: ``[name HH:MM:SS] message`` on stderr, flushed at once.

    It has a logger of its own (``benchmarks.<name>``) that does not pass records on to the root logger, so the
    libraries' loggers keep the levels the scripts set for them.
    """
    logger = logging.getLogger(f"benchmarks.{name}")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(f"[{name} %(asctime)s] %(message)s", datefmt="%H:%M:%S"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger.info


# -- results ---------------------------------------------------------------------------------------------------
def result_path(name: str) -> Path:
    """``benchmarks/results/<name>.json``, the default result file of benchmark ``name``."""
    return RESULTS_DIR / f"{name}.json"


def relative_paths(value: object) -> object:
    """``value`` with every path made relative to the repository: ``Path`` objects, and strings that are the
    absolute path of something that exists. Results are compared across machines and checkouts, where the
    absolute paths differ (the data then reads ``../shared/data/...``)."""
    if isinstance(value, Mapping):
        return {key: relative_paths(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [relative_paths(item) for item in value]
    if isinstance(value, Path) or (isinstance(value, str) and os.path.isabs(value) and Path(value).exists()):
        return os.path.relpath(value, REPO_ROOT)
    return value


def write_results(document: Mapping[str, object], path: str | os.PathLike[str]) -> Path:
    """Write ``document`` as indented JSON to ``path``, atomically, with relative paths (see
    :func:`relative_paths`); returns the path.

    The file is written beside its target and renamed over it, so a run cut off while writing, or a reader at
    any moment, sees the previous complete file or the new one. (``embedkit.fsutil`` does the same, but
    importing embedkit imports torch, which ``bench_scale.py``'s launcher must not.)
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(relative_paths(document), indent=2) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.tmp-", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return target
