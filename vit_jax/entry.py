"""What the commands (`vit_jax.main`, `vit_jax.sweep`) share: the process start (XLA flags, malloc's arenas,
`jax.distributed`), flags whose errors are one line, and exit statuses.

A bad flag, path or config value is one line naming it and what was expected, with exit status 2, before anything
compiles; a non-finite loss exits 3; preemption 143 (128 + SIGTERM, what a scheduler expects from a process it
asked to stop).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NoReturn

from absl import flags
from ml_collections import ConfigDict

from vit_jax.checkpoint.adapt import CheckpointMismatchError
from vit_jax.checkpoint.manager import CheckpointReadError
from vit_jax.checkpoint.npz import NpzError
from vit_jax.config import SavedConfigError
from vit_jax.config_validation import ConfigError, check_xla_flags
from vit_jax.distributed import COORDINATOR_HELP, MODES, MODES_HELP, initialize
from vit_jax.host_memory import share_main_arena
from vit_jax.train import NonFiniteLossError, Preempted
from vit_jax.xla_flags import apply_xla_flags, xla_flags_error

EXIT_BAD_INPUT = 2
EXIT_NON_FINITE = 3
EXIT_PREEMPTED = 143


class InputError(ValueError):
    """A command-line value that cannot work (a flag, a path)."""


BAD_INPUT = (ConfigError, CheckpointMismatchError, CheckpointReadError, NpzError, InputError, SavedConfigError)


def define_process_flags() -> None:
    """`--distributed` and the coordinator's flags, defined by each command."""
    flags.DEFINE_enum("distributed", "auto", list(MODES), MODES_HELP)
    flags.DEFINE_string("coordinator_address", None, COORDINATOR_HELP)
    flags.DEFINE_integer("num_processes", None, "Number of processes of a multi-process run.")
    flags.DEFINE_integer("process_id", None, "This process's index in a multi-process run.")


def start_process(config: ConfigDict) -> None:
    """Before the backend starts: `config.xla_flags` checked (XLA aborts the process on a malformed flag) and
    applied, malloc's threads on one arena where `config.keep_host_memory` (`vit_jax.host_memory`), then
    `jax.distributed` when the run is multi-process. A process applies one config's flags: a sweep applies its
    base config's."""
    check_xla_flags(config)
    if config.get("keep_host_memory", True):
        share_main_arena()
    applied = apply_xla_flags(config.xla_flags, config.model.get("dtype"))
    if config.xla_flags not in ("auto", "") and (problem := xla_flags_error(applied)):
        raise ConfigError(f"config.xla_flags = {config.xla_flags!r}: XLA refuses XLA_FLAGS={applied!r}: {problem}")
    try:
        initialize(flags.FLAGS.distributed, flags.FLAGS.coordinator_address, flags.FLAGS.num_processes,
                   flags.FLAGS.process_id)
    except ValueError as error:  # the process flags, checked before jax.distributed sees them
        raise InputError(str(error)) from None


def fail(message: str, status: int = EXIT_BAD_INPUT) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(status)


def parse_flags(argv: Sequence[str]) -> list[str]:
    """`app.run`'s flags parser: a missing or unloadable config file, an unknown `--config.` field or a value that
    does not parse is one line and exit status 2, like a bad config value (absl prints a traceback or a usage
    message with status 1)."""
    argv = dashes_as_underscores(argv, set(flags.FLAGS))
    config_file = _flag_value(argv, "config")
    if config_file is not None and not Path(config_file.partition(":")[0]).is_file():
        fail(f"--config={config_file}: no such file; expected a config file, e.g. configs/digits.py[:key=value,...]")
    try:
        rest = flags.FLAGS(list(argv))
        config = flags.FLAGS["config"].value if "config" in flags.FLAGS else None
        if config is not None and not isinstance(config, ConfigDict):  # ml-collections reports load errors lazily
            config.keys()
    except flags.Error as error:  # ml-collections puts the config file's own traceback in the message: its last line
        _fail_if_none(config_file, error)
        lines = [line for line in str(error).removeprefix("flag ").splitlines() if line.strip()]
        fail(lines[0] + (f" {lines[-1].strip()}" if len(lines) > 1 and "Traceback" in str(error) else ""))
    except (AttributeError, KeyError) as error:  # ml-collections looking up a `--config.` field that does not exist
        _fail_if_none(config_file, error)
        name = str(error).strip("'\"")
        named = [arg for arg in argv if arg.startswith("--config.") and name in arg.partition("=")[0].split(".")]
        fail(f"{named[0] if named else name}: unknown config field {name!r}; expected a field of the config "
             f"(vit_jax/config.py lists them)")
    except Exception as error:  # noqa: BLE001  (the config file's own code failed: a user's file, any error)
        first = (str(error).splitlines() or [""])[0]
        fail(f"--config={config_file}: {type(error).__name__}: {first}")
    config = flags.FLAGS["config"].value if "config" in flags.FLAGS else None
    if config_file is not None and not isinstance(config, ConfigDict):
        fail(f"--config={config_file}: get_config returned {type(config).__name__}; expected an ml_collections "
             f"ConfigDict")
    return rest


def _fail_if_none(config_file: str | None, error: Exception) -> None:
    """ml-collections' words for a `get_config` that returned None (a missing `return`), as vit_jax's."""
    if config_file is not None and ("other than None" in str(error) or "<class 'NoneType'>" in str(error)):
        fail(f"--config={config_file}: get_config returned None (a missing return?); expected an ml_collections "
             f"ConfigDict")


def dashes_as_underscores(argv: Sequence[str], names: set[str]) -> list[str]:
    """Every vit_jax command spells multi-word flags with dashes (`--coordinator-address`, as the argparse
    commands do); absl names them with underscores, and that spelling keeps working. `--config.` paths are config
    fields and stay as written."""
    spelled = []
    for arg in argv:
        name, sep, value = arg[2:].partition("=") if arg.startswith("--") else ("", "", "")
        if name and not name.startswith("config") and name.replace("-", "_") in names:
            arg = f"--{name.replace('-', '_')}{sep}{value}"
        spelled.append(arg)
    return spelled


def _flag_value(argv: Sequence[str], name: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg.startswith(f"--{name}="):
            return arg.partition("=")[2]
        if arg == f"--{name}" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def check_workdir(workdir: str | Path) -> Path:
    """A run's directory: new (under a directory it can be made in), or one to resume; never an existing file or
    the empty path (which would be the current directory)."""
    if not str(workdir).strip():
        raise InputError("--workdir is empty; expected a directory (a new one, or a run's to resume)")
    if Path(workdir).expanduser().is_file():
        raise InputError(f"--workdir={workdir}: an existing file; expected a directory (a new one, or a run's to "
                         f"resume)")
    return check_output(workdir, "--workdir", directory=True)


def check_output(path: str | Path, flag: str, directory: bool = False) -> Path:
    """Where a command will write (a file, or a directory with `directory`), checked before it computes anything:
    an existing path of the other kind, or a parent that is a file or not writable, is one line."""
    path = Path(path).expanduser()
    if path.exists() and path.is_dir() != directory:
        raise InputError(f"{flag}={path}: an existing {'file' if directory else 'directory'}; expected "
                         f"{'a directory' if directory else 'a file path'}")
    # a file is replaced by renaming a new one over it (`whole_files`): its folder must be writable
    existing = next(p for p in (*([path] if directory else []), *path.absolute().parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"{flag}={path}: cannot be written ({existing} is "
                         f"{'not a directory' if not existing.is_dir() else 'not writable'})")
    return path


@contextlib.contextmanager
def exit_statuses() -> Iterator[None]:
    """Turns the errors a user can cause into one line and the command's exit status."""
    try:
        yield
    except BAD_INPUT as error:
        fail(str(error))
    except NonFiniteLossError as error:
        fail(str(error), EXIT_NON_FINITE)
    except Preempted as error:
        print(str(error), file=sys.stderr)
        sys.exit(EXIT_PREEMPTED)
