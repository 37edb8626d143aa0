"""NixOS's interactive mode (-I): ptpython or Python's console."""

import contextlib

from .logger import log, report_error
from .script import _exit_status, _terminating


def _console(g, history):
    import code

    try:
        import readline
        import rlcompleter
    except ImportError:
        readline = None  # type: ignore[assignment]
    if readline is not None:
        readline.set_completer(rlcompleter.Completer(g).complete)
        readline.parse_and_bind("tab: complete")
        with contextlib.suppress(OSError):
            readline.read_history_file(history)
    try:
        code.InteractiveConsole(g, filename="<vmrig>").interact(
            banner="vmrig interactive mode (Python). "
            "Ctrl-D or exit() leaves and stops the machines.",
            exitmsg="",
        )
    finally:
        if readline is not None:
            try:
                readline.write_history_file(history)
            except OSError as e:
                log.warning(f"cannot write the history to {history}: {e}")


def _ptpython_embed():
    """ptpython's `embed` when the REPL should be ptpython, else None (the
    plain console). VMRIG_REPL chooses: `auto` (ptpython when importable, as
    NixOS's driver uses it), `plain` or `ptpython`."""
    import os

    choice = os.environ.get("VMRIG_REPL", "auto")
    if choice not in ("auto", "plain", "ptpython"):
        report_error(f"VMRIG_REPL={choice!r}: expected auto, plain or ptpython")
        raise SystemExit(1)
    if choice == "plain":
        return None
    try:
        from ptpython.repl import embed
    except ImportError as e:
        if choice == "ptpython":
            report_error(f"VMRIG_REPL=ptpython, but ptpython cannot be imported: {e}")
            raise SystemExit(1) from None
        return None
    return embed


def _repl(g, history):
    """NixOS's -I: a Python prompt with the test's globals (ptpython when
    installed), history in `history`; returns the exit status."""
    import signal

    # Ctrl-C interrupts the current command; SIGTERM or SIGHUP leave the REPL
    # and stop the machines.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _terminating)
    signal.signal(signal.SIGHUP, _terminating)
    names = [m.name for m in g["machines"]]
    vlan_names = [f"vlan{v.nr}" for v in g["vlans"]]
    general = [k for k in g if k not in names and k not in vlan_names and not k.startswith("__")]
    print(
        "additionally exposed symbols:\n    "
        + ", ".join(names)
        + ",\n    "
        + ", ".join(vlan_names)
        + ",\n    "
        + ", ".join(general),
        flush=True,
    )
    try:
        embed = _ptpython_embed()
        if embed is None:
            _console(g, history)
        else:
            embed(globals=g, history_filename=history)
    except SystemExit as e:
        return _exit_status(e)
    return 0
