"""`python late_compile.py NAME SECONDS SCRIPT ARGS...` (or `... NAME SECONDS -m MODULE ARGS...`) runs the script
or module as Python would, except that process 1 of its jax.distributed job ends its first compilation of a program
named NAME SECONDS after process 0 has ended its own, as a process on a loaded machine may (tests/test_distributed.py).
"""

import runpy
import sys
import time

import jax
from jax._src.distributed import global_state
from jax._src.interpreters import pxla


def compile_late(name: str, seconds: float) -> list[bool]:
    """Holds process 1's first compilation of a program named `name` (traced lazily by a call, or ahead through
    `.lower().compile()`: both compile through pxla.MeshComputation) until `seconds` after process 0's has ended,
    which the processes learn through the coordination service: the gap holds however long each compilation takes.
    Returns a list that is empty once that compilation has happened."""
    compile_program, pending, key = pxla.MeshComputation.compile, [True], f"late_compile/{name}"

    def compile(self, *args, **kwargs):  # noqa: A001
        compiled = compile_program(self, *args, **kwargs)
        if pending and self._name == name:
            pending.clear()
            if jax.process_index() == 0:
                global_state.client.key_value_set(key, "compiled")
            elif jax.process_index() == 1:
                global_state.client.blocking_key_value_get(key, 3_600_000)
                time.sleep(seconds)
        return compiled

    pxla.MeshComputation.compile = compile
    return pending


if __name__ == "__main__":
    name, seconds, *argv = sys.argv[1:]
    pending = compile_late(name, float(seconds))
    try:
        if argv[0] == "-m":
            sys.argv = argv[1:]
            runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        else:
            sys.argv = argv
            runpy.run_path(argv[0], run_name="__main__")
    except SystemExit as exit_:
        code = exit_.code
    else:
        code = 0
    if pending and not code:  # a renamed program would leave the delay, and so the test, without effect
        sys.exit(f"late_compile.py: no program named {name} was compiled")
    sys.exit(code)
