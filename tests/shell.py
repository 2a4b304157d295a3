"""The shell lines of the documentation, run in tests as a user types them: ``export``
sets the environment, ``python FILE`` runs the script, ``reconciler …`` goes through
``main(argv)`` (the ``cli`` fixture, whose folder is the user's). Used by the tests
that run the examples' README and the catalogue guide as written."""

from __future__ import annotations

import contextlib
import io
import runpy
import shlex
from pathlib import Path

import pytest

from .conftest import Result


def run_line(line: str, cli, monkeypatch, root: Path) -> Result:
    """Run one line typed at the repository root ``root``; its exit code and output."""
    words = shlex.split(line)
    if words[0] == "export":
        for word in words[1:]:
            var, value = word.split("=", 1)
            monkeypatch.setenv(var, value)
        return Result(0, "", "")
    if words[0] == "python":
        out = io.StringIO()
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as done:
            runpy.run_path(str(root / words[1]), run_name="__main__")
        return Result(done.value.code, out.getvalue(), "")
    assert words[0] == "reconciler", f"not a line the documentation's tests know how to run: {line}"
    return cli(*words[1:])
