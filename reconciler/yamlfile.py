"""Reading a YAML file a person wrote (the config file, a catalogue spec): size-capped,
UTF-8, every way it can be unreadable an error line that names the file and what to do."""

from __future__ import annotations

import os
from typing import Any

from .errors import ConfigError

MAX_BYTES = 1024 * 1024


def read_yaml(path: str, what: str, check: str, error: type[ConfigError] = ConfigError) -> Any:
    """The data of ``path``; ``what`` names the file in messages (``config file``),
    ``check`` says where it was named (``check --config / RECONCILER_CONFIG``)."""
    import yaml

    if os.path.exists(path) and not os.path.isdir(path) and not os.path.isfile(path):
        raise error(f"{what} {path} is not a regular file; {check}")
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise error(f"{what} {path} does not exist; {check}") from None
    except IsADirectoryError:
        raise error(f"{what} {path} is a folder; {check}") from None
    except OSError as e:
        raise error(f"cannot read {what} {path}: {e.strerror}") from None
    if len(raw) > MAX_BYTES:
        raise error(f"{what} {path} is larger than 1 MiB; it is not a reconciler {what.split()[0]}")
    try:
        return yaml.safe_load(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise error(f"{what} {path} is not UTF-8 text") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise error(f"{what} {path} is not valid YAML{where}; fix the syntax") from None
    except RecursionError:
        raise error(f"{what} {path} is nested too deeply") from None
    except Exception:  # PyYAML's constructors raise plain errors too: "2001-13-01", "!!int abc"
        raise error(f"{what} {path} is not valid YAML: a value cannot be read; fix it") from None
