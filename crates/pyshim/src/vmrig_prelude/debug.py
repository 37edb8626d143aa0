"""`--debug-hook-attach` and `debug.breakpoint()`: pdb over TCP."""

import contextlib
import sys

import _vmrig

from .errors import MachineError
from .logger import log, report_error


class _RemotePdb:
    """pdb over one TCP connection; ends the breakpoint's marker when done."""

    def __init__(self, conn, marker):
        import pdb

        self._conn = conn
        self._marker = marker
        # Two files: a text file open for both drops its read-ahead on every
        # write, which loses commands a client sends in one go.
        self._in = conn.makefile("r", encoding="utf-8", errors="replace")
        self._out = conn.makefile("w", encoding="utf-8", errors="replace")
        owner = self

        class Pdb(pdb.Pdb):
            def _finish(self):
                owner.close()

            def do_continue(self, arg):
                result = super().do_continue(arg)
                self._finish()
                return result

            do_c = do_cont = do_continue

            def do_quit(self, arg):
                result = super().do_quit(arg)
                self._finish()
                return result

            do_q = do_exit = do_quit

            def do_EOF(self, arg):
                result = super().do_EOF(arg)
                self._finish()
                return result

        self.pdb = Pdb(stdin=self._in, stdout=self._out)

    def close(self):
        self._marker.stop()
        for handle in (self._in, self._out, self._conn):
            with contextlib.suppress(OSError):
                handle.close()


class _Debug:
    """NixOS's `debug`: with --debug-hook-attach, a breakpoint (or a failure)
    says how to attach and waits for a debugger on a TCP port; without it,
    breakpoints do nothing (NixOS's DebugNop)."""

    def __init__(self, attach=None, timeout=3600.0):
        self.attach = attach
        self.timeout = timeout

    def breakpoint(self, host="127.0.0.1", port=4444):
        """Stops here until a debugger connected to host:port continues."""
        if self.attach is None:
            return
        remote = self._wait_for_debugger(host, port)
        if remote is not None:
            remote.pdb.set_trace(sys._getframe(1))

    def _post_mortem(self, tb, script_path, host="127.0.0.1", port=4444):
        """At a failure: the debugger starts in the script's failing frame."""
        if self.attach is None:
            return
        last = None
        t = tb
        while t is not None:
            if t.tb_frame.f_code.co_filename == script_path:
                last = t
            t = t.tb_next
        if last is not None:
            last.tb_next = None
        remote = self._wait_for_debugger(host, port)
        if remote is not None:
            try:
                remote.pdb.reset()
                remote.pdb.interaction(None, tb)
            finally:
                remote.close()

    def _wait_for_debugger(self, host, port):
        import random
        import socket

        pattern = str(random.randrange(999999, 9999999))
        _vmrig.log_test_error(f"Breakpoint reached, run 'sudo {self.attach} {pattern}'")
        marker = _vmrig.debug_marker(pattern)
        try:
            server = socket.create_server((host, port))
        except OSError as e:
            marker.stop()
            raise MachineError(f"debug breakpoint: cannot listen on {host}:{port}: {e}") from None
        with server:
            server.settimeout(self.timeout)
            log.warning(
                f"waiting up to {self.timeout:.0f} s for a debugger on {host}:{port} "
                f"(outside a sandbox: socat READLINE TCP:{host}:{port})"
            )
            try:
                conn, _ = server.accept()
            except (socket.timeout, TimeoutError):
                marker.stop()
                report_error(f"no debugger attached within {self.timeout:.0f} s: going on")
                return None
        conn.settimeout(None)
        log.info(f"debugger attached on {host}:{port}")
        return _RemotePdb(conn, marker)
