"""A Ctrl-C during an optional dependency's first import is an interrupt, never "not
installed": compiled extensions (onnxruntime, OpenVINO) swallow it into an ImportError,
so edgemed holds the signal until the import is over and then delivers it."""

from __future__ import annotations

import sys

import pytest

from edgemed._lazy import available, interrupts_held

# A module that, like onnxruntime's initialiser, turns an interrupt during its import
# into ImportError('import numpy failed').
SWALLOWING = """
import os, signal, time
try:
    os.kill(os.getpid(), signal.SIGINT)
    for _ in range(100):
        time.sleep(0.001)
except KeyboardInterrupt:
    raise ImportError("import numpy failed") from None
LOADED = True
"""


@pytest.fixture
def swallowing_module(tmp_path, monkeypatch):
    name = f"swallows_interrupt_{tmp_path.name}"
    (tmp_path / f"{name}.py").write_text(SWALLOWING)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def test_the_module_really_swallows_an_interrupt(swallowing_module):
    import importlib

    with pytest.raises(ImportError, match="numpy"):
        importlib.import_module(swallowing_module)


def test_available_delivers_the_interrupt_after_the_import(swallowing_module):
    with pytest.raises(KeyboardInterrupt):
        available(swallowing_module)
    assert sys.modules[swallowing_module].LOADED  # the import itself ran to its end


def test_nothing_held_nothing_raised():
    with interrupts_held():
        pass
    assert available("json") and not available("no_such_module_edgemed")
