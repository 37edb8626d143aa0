"""`vmrig.Driver`: a test run for a plain Python program."""

import _vmrig

from .debug import _Debug
from .durations import _seconds
from .script import _globals, _terminating


class Driver:
    """A test run for a plain Python program, with the globals of a NixOS
    test script as attributes (and as a dict from `test_symbols()`):

        from vmrig import Driver
        with Driver(start_scripts=["result/bin/run-server-vm"], vlans=[1]) as d:
            d.start_all()
            d.server.succeed("true")

    Leaving the `with` block (or `close()`) stops every machine and removes
    the run directory. Ctrl-C raises KeyboardInterrupt as usual.
    """

    def __init__(
        self,
        start_scripts=(),
        vlans=(),
        *,
        test_script=None,
        out_dir=".",
        keep_machine_state=False,
        global_timeout=3600,
        log_level="info",
        junit_xml=None,
        debug_hook_attach=None,
        tmp_dir=None,
    ):
        import signal
        import threading

        self._junit_xml = junit_xml
        self._native = _vmrig._Driver(
            [str(s) for s in start_scripts],
            [int(v) for v in vlans],
            {
                "out_dir": str(out_dir),
                "keep_machine_state": bool(keep_machine_state),
                "global_timeout": _seconds(global_timeout, "global_timeout"),
                "log_level": log_level,
                "tmp_dir": None if tmp_dir is None else str(tmp_dir),
            },
        )
        script = None if test_script is None else str(test_script)
        debug = _Debug(debug_hook_attach, self._native.global_timeout)
        self._symbols = _globals(self._native, script, None, debug)
        # SIGTERM would kill Python without unwinding: QEMU would outlive it.
        self._old_sigterm = None
        if threading.current_thread() is threading.main_thread():
            if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
                self._old_sigterm = signal.signal(signal.SIGTERM, _terminating)

    def test_symbols(self):
        """The globals a NixOS test script sees, by name."""
        return dict(self._symbols)

    def __getattr__(self, name):
        symbols = self.__dict__.get("_symbols", {})
        if name in symbols:
            return symbols[name]
        raise AttributeError(f"vmrig.Driver has no attribute or test symbol {name!r}")

    def __dir__(self):
        return sorted(set(super().__dir__()) | set(self.__dict__.get("_symbols", {})))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        """Writes the JUnit report (if asked for) and stops every machine. Idempotent."""
        native = self.__dict__.pop("_native", None)
        if native is None:
            return
        try:
            if self._junit_xml is not None:
                native.write_junit(str(self._junit_xml))
        finally:
            native.terminate()
            if self._old_sigterm is not None:
                import signal

                signal.signal(signal.SIGTERM, self._old_sigterm)
