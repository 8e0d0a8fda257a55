"""TensorFlow's start-up lines are hidden from a successful command; its errors are not."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from captioner.quiet import import_quietly, is_harmless

ROOT = Path(__file__).parents[1]
CAT = ROOT / "tests" / "data" / "chelsea.jpg"
BANNER = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
ONEDNN = (
    "I0000 00:00:1795939447.856749    4747 port.cc:153] oneDNN custom operations are on. You may "
    "see slightly different numerical results due to floating-point round-off errors."
)
CUDNN_ERROR = (
    "E0000 00:00:1795939447.901234    4747 cuda_dnn.cc:8310] Unable to register cuDNN factory"
)


@pytest.fixture
def noisy_module(tmp_path, monkeypatch):
    """Writes a module that logs to file descriptor 2 at import, as TensorFlow's C++ does."""
    names = []

    def write(name: str, lines: list[str], fails: bool = False) -> str:
        text = "".join(line + "\n" for line in lines)
        raise_line = "raise ImportError('libcudart.so.12: cannot open')\n" if fails else ""
        (tmp_path / f"{name}.py").write_text(
            f"import os\nos.write(2, {text.encode()!r})\n{raise_line}"
        )
        names.append(name)
        return name

    monkeypatch.syspath_prepend(str(tmp_path))
    yield write
    for name in names:
        sys.modules.pop(name, None)


def test_known_startup_lines_are_hidden_and_errors_are_not(noisy_module, capfd):
    import_quietly(noisy_module("quiet_ok", [BANNER, ONEDNN, ONEDNN]))
    assert capfd.readouterr().err == ""
    other = "A module that was compiled using NumPy 1.x cannot be run in NumPy 2.2.6"
    import_quietly(noisy_module("quiet_error", [BANNER, ONEDNN, CUDNN_ERROR, ONEDNN, other]))
    assert capfd.readouterr().err == f"{CUDNN_ERROR}\n{other}\n"


def test_a_failed_import_shows_everything_it_printed(noisy_module, capfd):
    with pytest.raises(ImportError, match="libcudart"):
        import_quietly(noisy_module("quiet_fails", [BANNER, ONEDNN], fails=True))
    assert capfd.readouterr().err == f"{BANNER}\n{ONEDNN}\n"
    os.write(2, b"descriptor 2 is back\n")
    assert capfd.readouterr().err == "descriptor 2 is back\n"


def test_harmless_means_tensorflow_info_lines_and_absl_banner_only():
    assert is_harmless(BANNER) and is_harmless(ONEDNN)
    assert is_harmless("2024-01-01 12:00:00.000001: I tensorflow/core/util/port.cc:113] oneDNN")
    assert not is_harmless(CUDNN_ERROR)
    assert not is_harmless("W0000 00:00:1795939447.856749    4747 gpu_device.cc:2] Cannot dlopen")
    assert not is_harmless("Traceback (most recent call last):")


def captioner(*args: str, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    environment.update(PYTHONPATH=path, **env)
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, env=environment, timeout=120
    )


@pytest.mark.slow
def test_a_successful_command_writes_nothing_to_stderr_unless_asked(tmp_path):
    """The real CLI in a fresh process: TensorFlow's import-time lines are hidden by default and
    shown with --verbose or CAPTIONER_DEBUG (which would fail if they were hidden there too)."""
    cache = str(tmp_path / "cache")
    quiet = captioner("-m", "captioner", "caption", str(CAT), CAPTIONER_CACHE=cache)
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stdout.startswith(f"{CAT}\t") and quiet.stderr == ""

    verbose = captioner("-m", "captioner", "--verbose", "caption", str(CAT), CAPTIONER_CACHE=cache)
    assert verbose.returncode == 0 and verbose.stdout == quiet.stdout
    assert any(is_harmless(line) for line in verbose.stderr.splitlines()), verbose.stderr

    code = "from captioner.quiet import import_tensorflow; import_tensorflow()"
    debug = captioner("-c", code, CAPTIONER_DEBUG="1")
    assert debug.returncode == 0 and any(map(is_harmless, debug.stderr.splitlines()))
