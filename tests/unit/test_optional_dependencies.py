"""The default install works without the ``eval`` extra (mteb, matplotlib), and what needs it says so in one line.

Each check runs in a fresh interpreter whose ``sitecustomize`` puts ``None`` into ``sys.modules`` for mteb and
matplotlib: ``import mteb`` then raises ImportError there as if the package were not installed, while the rest of
the environment stays as it is.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BLOCKED = ("mteb", "matplotlib")
EXTRA_HINT = "pip install 'embedkit[eval]'"

# Runs in the blocked interpreter: imports, the Python API and every command that needs the extra.
CHECKS = textwrap.dedent(
    """
    import contextlib, io, sys

    import embedkit
    import embedkit.cli
    from embedkit.cli import main
    from embedkit.errors import MissingDependencyError
    from embedkit.eval import EVALUATORS

    def run(argv):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = main(argv)
        return status, err.getvalue()

    for argv in (["eval", "mteb", "--tasks", "STSBenchmark"], ["eval", "all", "--suite", "s.toml", "--out", "o"]):
        status, err = run(argv)
        print("COMMAND", status, repr(err))

    for action in (lambda: EVALUATORS.get("mteb")(["STSBenchmark"]), lambda: __import__("embedkit.eval.plots")):
        try:
            action()
        except MissingDependencyError as error:
            print("API", repr(str(error)))

    print("LOADED", sorted(name for name in ("mteb", "matplotlib") if sys.modules.get(name) is not None))
    """
)


@pytest.fixture(scope="module")
def blocked_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """An environment whose interpreters cannot import mteb or matplotlib."""
    folder = tmp_path_factory.mktemp("blocker")
    (folder / "sitecustomize.py").write_text(
        "import sys\n" + "".join(f"sys.modules[{name!r}] = None\n" for name in BLOCKED)
    )
    path = os.pathsep.join([str(folder), str(REPO), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1"}


def _python(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=600, check=False
    )


@pytest.mark.slow
def test_help_works_without_the_eval_extra(blocked_env, tmp_path) -> None:
    blocker = _python(["-c", "import mteb"], blocked_env, tmp_path)
    assert blocker.returncode != 0 and "ModuleNotFoundError" in blocker.stderr  # the blocker is in effect
    result = _python(["-m", "embedkit", "--help"], blocked_env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "eval" in result.stdout and "index" in result.stdout


@pytest.mark.slow
def test_what_needs_the_eval_extra_says_so_in_one_line(blocked_env, tmp_path) -> None:
    result = _python(["-c", CHECKS], blocked_env, tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    commands = [line for line in lines if line.startswith("COMMAND")]
    assert len(commands) == 2
    for line in commands:
        status, message = line.split(" ", 2)[1:]
        assert status == "2"
        message = ast.literal_eval(message)  # the repr printed above
        assert message.count("\n") == 1 and message.startswith("embedkit: error:") and EXTRA_HINT in message
    errors = [line for line in lines if line.startswith("API")]
    assert len(errors) == 2 and all(EXTRA_HINT in line for line in errors)
    assert lines[-1] == "LOADED []"


@pytest.mark.parametrize("module", ["bm25s", "Stemmer"])
def test_bm25_without_the_lexical_extra_is_a_one_line_error(monkeypatch, module) -> None:
    from embedkit.errors import MissingDependencyError
    from embedkit.index import build_index

    monkeypatch.setitem(sys.modules, module, None)  # import now fails as if the package were not installed
    with pytest.raises(MissingDependencyError, match=r"pip install 'embedkit\[lexical\]'") as error:
        build_index(None, ["boundary layer"], spec="bm25")
    assert "\n" not in str(error.value) and "the bm25 index" in str(error.value)
