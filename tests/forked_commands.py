"""Runs `python -m vit_jax.MODULE ARGS...` command lines, each in a fork of this one process, which imported
vit_jax's libraries once: the ~2 s of imports a fresh interpreter pays per command line is paid once for all.

Each child is what `python -m` gives, less the imports: the module runs as `__main__` (its flags are defined in the
child), `sys.exit` and uncaught exceptions end it as they end an interpreter, and its stderr is the command's.
Only commands that fail before JAX starts its backend belong here (nothing in this process has started one: a
fork of a running XLA client is unsafe). Used by tests/test_entry.py; `python -m tests.forked_commands` reads a
JSON list of `[module, [args...]]` on stdin and prints a JSON list of `{"returncode", "stderr"}`.
"""

from __future__ import annotations

import atexit
import json
import os
import runpy
import sys
import tempfile
import traceback
import warnings


def run_in_fork(module: str, args: list[str]) -> dict[str, object]:
    with tempfile.TemporaryFile() as err, open(os.devnull, "wb") as out:
        pid = os.fork()
        if pid == 0:  # the child: never returns
            os.dup2(out.fileno(), 1)
            os.dup2(err.fileno(), 2)
            os._exit(_run_as_main(module, args))
        _, status = os.waitpid(pid, 0)
        err.seek(0)
        return {"returncode": os.waitstatus_to_exitcode(status), "stderr": err.read().decode(errors="replace")}


def _run_as_main(module: str, args: list[str]) -> int:
    """The exit status `python -m module args...` would end with."""
    # this harness's artifact: the module was imported here already, a fresh interpreter imports it once
    warnings.filterwarnings("ignore", message=".*found in sys.modules after import of package", category=RuntimeWarning)
    sys.argv = [module, *args]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exit_:
        if exit_.code is None or isinstance(exit_.code, int):
            code = exit_.code or 0
        else:  # sys.exit("message"): printed to stderr, status 1
            print(exit_.code, file=sys.stderr)
            code = 1
    except BaseException:  # noqa: BLE001 (what the interpreter does with an uncaught exception)
        traceback.print_exc()
        code = 1
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    return code


def main() -> None:
    commands = json.loads(sys.stdin.read())
    # the libraries the command-line modules import; not the modules themselves, whose flags each child defines
    from jax._src import xla_bridge

    import vit_jax.checkpoint.npz  # noqa: F401
    import vit_jax.entry  # noqa: F401
    import vit_jax.sweep  # noqa: F401
    import vit_jax.train  # noqa: F401
    import vit_jax.visualize  # noqa: F401

    assert not xla_bridge._backends, "a backend started before forking"
    print(json.dumps([run_in_fork(module, args) for module, args in commands]))


if __name__ == "__main__":
    main()
