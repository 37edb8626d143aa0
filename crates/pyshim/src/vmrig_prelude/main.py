"""The vmrig binary's entry into the prelude."""

import time
import traceback

from .debug import _Debug
from .logger import log, report_error
from .repl import _repl
from .script import _exec_script, _exit_status, _globals, _sync


def _run(g, script_path, debug, global_timeout):
    """Runs the script; returns the exit status (0 passed, 1 failed)."""
    log.info(f"Test will time out and terminate in {global_timeout:.0f} seconds")
    started = time.monotonic()
    try:
        _exec_script(g, script_path, debug)
    except SystemExit as e:
        return _exit_status(e)
    except Exception:
        return 1  # reported by _exec_script
    except BaseException:
        traceback.print_exc()
        return 1
    try:
        _sync(g["machines"])
    except Exception as e:
        report_error(f"syncing the machines after the test script failed: {e}")
        return 1
    log.info(f"test script finished in {time.monotonic() - started:.2f}s")
    return 0


def _main(native_driver, args):
    """The CLI's entry: runs the script, or the REPL; returns the exit status."""
    debug = _Debug(args["debug_hook_attach"], native_driver.global_timeout)
    g = _globals(native_driver, args["script"], args["nodes"], debug, args["interactive"])
    if args["interactive"]:
        return _repl(g, args["history"])
    return _run(g, args["script"], debug, native_driver.global_timeout)
