"""The NixOS test-script API over vmrig's Rust driver (module `_vmrig`).

Names, keyword arguments and defaults follow nixpkgs' nixos/lib/test-driver;
durations are numbers of seconds or `datetime.timedelta`.
"""

import contextlib
import datetime
import math
import os
import re
import sys
import time
import traceback
import types
import unittest

try:
    import _vmrig
except ImportError:  # the wheel: vmrig/__init__.py registers it first
    from vmrig import _vmrig


class RequestedAssertionFailed(AssertionError):
    """A check the test script asked for did not hold (succeed, fail, waits, t.*)."""


class MachineError(Exception):
    """The machine itself failed (QEMU exited, a socket closed, ...)."""


# Tracebacks name them where NixOS scripts import them from.
RequestedAssertionFailed.__module__ = MachineError.__module__ = "test_driver.errors"



def _module(name, **attrs):
    mod = types.ModuleType(name)
    mod.__dict__.update(attrs)
    sys.modules[name] = mod
    return mod


_package = _module("test_driver")
_package.__path__ = []
_package.errors = _module(
    "test_driver.errors",
    RequestedAssertionFailed=RequestedAssertionFailed,
    MachineError=MachineError,
)


_MAX_SECONDS = 365 * 24 * 3600


def _seconds(value, name="timeout", default=None):
    """A duration argument in seconds, or an error naming the argument."""
    if value is None:
        return default
    if isinstance(value, datetime.timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            seconds = float(value)
        except OverflowError:
            seconds = math.inf
    else:
        raise TypeError(f"{name}={value!r}: expected a number of seconds or a datetime.timedelta")
    if not (math.isfinite(seconds) and 0 <= seconds <= _MAX_SECONDS):
        raise ValueError(
            f"{name}={value!r}: expected a number of seconds from 0 to {_MAX_SECONDS} (a year)"
        )
    return seconds


class _Logger:
    """NixOS's `log`: info/warning/error and nested sections."""

    def log(self, message, attributes=None):
        _vmrig.log("info", message)

    def info(self, message, attributes=None):
        _vmrig.log("info", message)

    def warning(self, message, attributes=None):
        _vmrig.log("warning", message)

    def error(self, message, attributes=None):
        _vmrig.log("error", message)

    @contextlib.contextmanager
    def nested(self, message, attributes=None):
        # A span in the driver's log: printed with its duration, nested.
        _vmrig.section_enter(message)
        try:
            yield
        finally:
            _vmrig.section_exit()


log = _Logger()


class PollingConditionError(Exception):
    """A polling condition failed before a machine action (as NixOS: not an assertion)."""


class PollingCondition:
    """NixOS's PollingCondition over the driver's: while entered (`with`),
    the driver runs `condition` before machine actions, at most every
    `seconds_interval`; `None` or a true value holds."""

    def __init__(self, condition, logger=None, seconds_interval=2.0, description=None):
        self.condition = condition
        self.logger = log if logger is None else logger
        self.seconds_interval = _seconds(seconds_interval, "seconds_interval")
        if description is None:
            self.description = condition.__doc__ or condition.__name__
        else:
            self.description = str(description)
        self._native = _vmrig._PollingCondition(
            condition, self.seconds_interval, self.description
        )

    def check(self, force=False):
        return self._native.check(force)

    def maybe_raise(self):
        self._native.maybe_raise()

    def status_message(self, status):
        return self._native.status_message(status)

    @property
    def nested_message(self):
        return f"Checking polling condition {self.description!r}"

    def wait(self, timeout=900):
        self._native.wait(_seconds(timeout))


PollingConditionError.__module__ = "test_driver.polling_condition"
_module(
    "test_driver.polling_condition",
    PollingCondition=PollingCondition,
    PollingConditionError=PollingConditionError,
)


def _polling_condition(native_driver, conditions):
    """NixOS's `polling_condition` decorator, for one driver."""

    class Poll:
        def __init__(self, fun, seconds_interval, description):
            self.condition = PollingCondition(fun, log, seconds_interval, description)

        def __enter__(self):
            self.condition._native.enter(native_driver)
            conditions.append(self.condition)

        def __exit__(self, *exc):
            conditions.remove(self.condition)
            self.condition._native.exit()

        def wait(self, timeout=900):
            self.condition.wait(timeout)

    def polling_condition(fun_=None, *, seconds_interval=2.0, description=None):
        """Decorator: a condition checked before machine actions while in `with`."""

        def wrap(fun):
            return Poll(fun, seconds_interval, description)

        return wrap(fun_) if fun_ is not None else wrap

    return polling_condition


def retry(fn, timeout_seconds=900):
    """Calls fn(False) every second until it returns True or time is up, then fn(True)."""
    timeout_seconds = _seconds(timeout_seconds, "timeout_seconds")
    start = time.monotonic()
    while time.monotonic() - start < timeout_seconds:
        if fn(False):
            return
        time.sleep(1)
    elapsed = time.monotonic() - start
    if not fn(True):
        raise RequestedAssertionFailed(
            f"action timed out after {elapsed:.2f} seconds (timeout={timeout_seconds})"
        )


class BaseMachine:
    """Common base of machines (NixOS's BaseMachine)."""


class Machine(BaseMachine):
    """A QEMU machine, with NixOS's Machine methods."""

    def __init__(self, native):
        self._m = native
        self.name = native.name
        self.out_dir = native.out_dir
        self.state_dir = native.state_dir
        self.shared_dir = native.shared_dir
        self.callbacks = []

    def __repr__(self):
        return f"<Machine '{self.name}'>"

    pid = property(lambda self: self._m.pid)
    booted = property(lambda self: self._m.booted)
    connected = property(lambda self: self._m.connected)
    process = property(lambda self: self._m.pid)

    def log(self, msg):
        _vmrig.log("info", f"{self.name}: {msg}")

    def nested(self, msg, attrs={}):
        return log.nested(f"{self.name}: {msg}", attrs)

    def is_up(self):
        return self._m.is_up()

    def start(self, allow_reboot=False):
        self._m.start(allow_reboot)

    def connect(self):
        self._m.connect()

    def execute(self, command, check_return=True, check_output=True, timeout=900):
        return self._m.execute(command, check_return, check_output, _seconds(timeout))

    def succeed(self, *commands, timeout=None):
        return self._m.succeed(list(commands), _seconds(timeout))

    def fail(self, *commands, timeout=None):
        return self._m.fail(list(commands), _seconds(timeout))

    def wait_until_succeeds(self, command, timeout=900):
        return self._m.wait_until_succeeds(command, _seconds(timeout))

    def wait_until_fails(self, command, timeout=900):
        return self._m.wait_until_fails(command, _seconds(timeout))

    def sleep(self, secs):
        self.succeed(f"sleep {_seconds(secs, 'secs')}")

    def systemctl(self, q, user=None):
        return self._m.systemctl(q, user)

    def wait_for_unit(self, unit, user=None, timeout=900):
        self._m.wait_for_unit(unit, user, _seconds(timeout))

    def get_unit_info(self, unit, user=None):
        return dict(self._m.get_unit_info(unit, user))

    def get_unit_property(self, unit, property, user=None):
        return self._m.get_unit_property(unit, property, user)

    def require_unit_state(self, unit, require_state="active"):
        self._m.require_unit_state(unit, require_state)

    def start_job(self, jobname, user=None):
        return self._m.start_job(jobname, user)

    def stop_job(self, jobname, user=None):
        return self._m.stop_job(jobname, user)

    def wait_for_file(self, filename, timeout=900):
        self._m.wait_for_file(filename, _seconds(timeout))

    def wait_for_open_port(self, port, addr="localhost", timeout=900):
        self._m.wait_for_open_port(port, addr, _seconds(timeout))

    def wait_for_open_unix_socket(self, addr, is_datagram=False, timeout=900):
        self._m.wait_for_open_unix_socket(addr, is_datagram, _seconds(timeout))

    def wait_for_closed_port(self, port, addr="localhost", timeout=900):
        self._m.wait_for_closed_port(port, addr, _seconds(timeout))

    def get_tty_text(self, tty):
        return self._m.get_tty_text(str(tty))

    def wait_until_tty_matches(self, tty, regexp, timeout=900):
        self._m.wait_until_tty_matches(str(tty), regexp, _seconds(timeout))

    def dump_tty_contents(self, tty):
        self._m.dump_tty_contents(str(tty))

    def send_key(self, key, delay=0.01, log=True):
        self._m.send_key(key, _seconds(delay, "delay"))

    def send_chars(self, chars, delay=0.01):
        self._m.send_chars(chars, _seconds(delay, "delay"))

    def send_console(self, chars):
        self._m.send_console(chars)

    def send_monitor_command(self, command):
        return self._m.send_monitor_command(command)

    def wait_for_monitor_prompt(self):
        return ""

    def wait_for_qmp_event(self, event_filter, timeout=60 * 10):
        return self._m.wait_for_qmp_event(event_filter, _seconds(timeout))

    def screenshot(self, filename):
        self._m.screenshot(str(filename))

    def get_screen_text(self):
        return self._m.get_screen_text()

    def get_screen_text_variants(self):
        return self._m.get_screen_text_variants()

    def wait_for_text(self, regex, timeout=900):
        self._m.wait_for_text(regex, _seconds(timeout))

    def wait_for_console_text(self, regex, timeout=None):
        self._m.wait_for_console_text(regex, _seconds(timeout))

    def get_console_log(self):
        return self._m.get_console_log()

    def wait_for_x(self, timeout=900):
        self._m.wait_for_x(_seconds(timeout))

    def get_window_names(self):
        return self._m.get_window_names()

    def wait_for_window(self, regexp, timeout=900):
        self._m.wait_for_window(regexp, _seconds(timeout))

    def forward_port(self, host_port=8080, guest_port=80):
        self._m.forward_port(host_port, guest_port)

    def block(self):
        self._m.block()

    def unblock(self):
        self._m.unblock()

    def copy_from_host(self, source, target):
        self._m.copy_from_host(str(source), target)

    def copy_from_host_via_shell(self, source, target):
        self._m.copy_from_host_via_shell(str(source), target)

    def copy_from_machine(self, source, target_dir=""):
        self._m.copy_from_machine(source, str(target_dir))

    def copy_from_vm(self, source, target_dir=""):
        self.copy_from_machine(source, target_dir)

    def shutdown(self):
        self._m.shutdown()

    def crash(self):
        self._m.crash()

    def reboot(self):
        self._m.reboot()

    def wait_for_shutdown(self):
        self._m.wait_for_shutdown(900.0)

    def shell_interact(self, address=None):
        """Type commands for the guest's root shell (Ctrl-D or Ctrl-C ends it);
        `address` (socat syntax, e.g. "tcp:127.0.0.1:4444") takes them from there."""
        self.connect()
        sys.stdout.flush()
        self._m.shell_interact(address)

    def console_interact(self):
        """Type lines for the serial console (QEMU's stdin); its output shows in
        the log. Ctrl-D or Ctrl-C ends it."""
        self.log("Terminal is ready (there is no prompt):")
        sys.stdout.flush()
        self._m.console_interact()

    def switch_root(self):
        self._m.switch_root()

    def release(self):
        self._m.release()


QemuMachine = Machine


class NspawnMachine(BaseMachine):
    """Containers are not supported by vmrig."""


_module(
    "test_driver.machine",
    Machine=Machine,
    QemuMachine=QemuMachine,
    BaseMachine=BaseMachine,
    NspawnMachine=NspawnMachine,
    retry=retry,
    RequestedAssertionFailed=RequestedAssertionFailed,
    MachineError=MachineError,
)


class _TestCase(unittest.TestCase):
    failureException = RequestedAssertionFailed

    def runTest(self):
        pass


class _VLan:
    def __init__(self, nr):
        self.nr = nr

    def __repr__(self):
        return f"<VLan {self.nr}>"


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
                log.error(f"no debugger attached within {self.timeout:.0f} s: going on")
                return None
        conn.settimeout(None)
        log.info(f"debugger attached on {host}:{port}")
        return _RemotePdb(conn, marker)


def _identifier(name):
    return re.sub(r"^[^A-Za-z_]|[^A-Za-z0-9_]", "_", name)


def _report_failure(e, script_path):
    """Prints a failed script's error the NixOS way: the script's own frames
    after `!!!` for assertion failures, the whole traceback otherwise."""
    if isinstance(e, RequestedAssertionFailed):
        frames = [f for f in traceback.extract_tb(e.__traceback__) if f.filename == script_path]
        lines = ["Traceback (most recent call last):"]
        for entry in traceback.format_list(frames):
            lines.extend(entry.rstrip("\n").split("\n"))
        lines.append("")
        lines.extend(f"{type(e).__name__}: {e}".split("\n"))
    else:
        tb = e.__traceback__
        if tb is not None and tb.tb_frame.f_code is _exec_script.__code__:
            tb = tb.tb_next  # the script's frames, then the driver's: not the exec() itself
        lines = "".join(traceback.format_exception(type(e), e, tb)).rstrip("\n").split("\n")
    for line in lines:
        _vmrig.log_test_error(line)


def _exec_script(g, script_path, debug):
    """Runs the script in `g`; a failure is reported (and debugged with
    --debug-hook-attach) and raised again."""
    with log.nested("run the VM test script"):
        try:
            if script_path is None:
                raise MachineError(
                    "no test script: give one as an argument, with --test-script or in the config's test_script"
                )
            with open(script_path) as f:
                code = compile(f.read(), script_path, "exec")
            exec(code, g)
        except Exception as e:
            _report_failure(e, script_path)
            debug._post_mortem(e.__traceback__, script_path)
            raise


def _globals(native_driver, script_path=None, nodes=None, debug=None, interactive=False):
    machines = [Machine(m) for m in native_driver.machines()]
    vlans = [_VLan(n) for n in native_driver.vlans()]
    debug = debug if debug is not None else _Debug()

    class _Driver:
        out_dir = native_driver.out_dir

        def __init__(self):
            self.machines = machines
            self.vlans = vlans
            self.polling_conditions = conditions
            self.global_timeout = native_driver.global_timeout

        def check_polling_conditions(self):
            for condition in self.polling_conditions:
                condition.maybe_raise()

    conditions = []
    driver = _Driver()

    def start_all():
        with log.nested("start all VMs"):
            native_driver.start_all()

    def join_all():
        with log.nested("wait for all VMs to finish"):
            native_driver.join_all()

    @contextlib.contextmanager
    def subtest(name):
        start = time.monotonic()
        failure = None
        with log.nested(f"subtest: {name}"):
            try:
                yield
            except BaseException as e:
                failure = f"{type(e).__name__}: {e}"
                log.error(f'Test "{name}" failed with error: "{e}"')
                raise
            finally:
                native_driver.record_subtest(name, time.monotonic() - start, failure)

    def create_machine(start_command, *, name=None, keep_vm_state=False, keep_machine_state=False):
        m = Machine(native_driver.create_machine(str(start_command)))
        machines.append(m)
        return m

    def test_script():
        """Runs the test script. In the REPL a failure is reported and you
        stay at the prompt, the machines as the script left them."""
        try:
            _exec_script(g, script_path, debug)
        except Exception:
            if not interactive:
                raise

    def run_tests():
        """Runs the test script, then syncs the machines that are up (NixOS's run_tests)."""
        test_script()
        _sync(machines)

    def dump_machine_ssh(offset=1000):
        raise MachineError("the SSH backdoor (enable_ssh_backdoor) is not supported by vmrig yet")

    g = {
        "__name__": "__main__",
        "start_all": start_all,
        "test_script": test_script,
        "run_tests": run_tests,
        "machines": machines,
        "machines_qemu": machines,
        "machines_nspawn": [],
        "vlans": vlans,
        "driver": driver,
        "log": log,
        "os": os,
        "create_machine": create_machine,
        "subtest": subtest,
        "join_all": join_all,
        "retry": retry,
        "serial_stdout_off": lambda: native_driver.serial_stdout(False),
        "serial_stdout_on": lambda: native_driver.serial_stdout(True),
        "polling_condition": _polling_condition(native_driver, conditions),
        "BaseMachine": BaseMachine,
        "QemuMachine": QemuMachine,
        "NspawnMachine": NspawnMachine,
        "Machine": Machine,
        "t": _TestCase(),
        "debug": debug,
        "dump_machine_ssh": dump_machine_ssh,
        "RequestedAssertionFailed": RequestedAssertionFailed,
        "MachineError": MachineError,
    }
    if nodes is not None:
        g["nodes"] = nodes
    for m in machines:
        g[_identifier(m.name)] = m
    for v in vlans:
        g[f"vlan{v.nr}"] = v
    if len(machines) == 1:
        g["machine"] = machines[0]
    return g


def _sync(machines):
    for m in machines:
        if m.is_up():
            m.execute("sync")


def _exit_status(e):
    if e.code is None:
        return 0
    return e.code if isinstance(e.code, int) else 1


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
        log.error(f"syncing the machines after the test script failed: {e}")
        return 1
    log.info(f"test script finished in {time.monotonic() - started:.2f}s")
    return 0


def _terminating(signum, frame):
    raise SystemExit(128 + signum)


def _console(g, history):
    import code

    try:
        import readline
        import rlcompleter
    except ImportError:
        readline = None
    if readline is not None:
        readline.set_completer(rlcompleter.Completer(g).complete)
        readline.parse_and_bind("tab: complete")
        with contextlib.suppress(OSError):
            readline.read_history_file(history)
    try:
        code.InteractiveConsole(g, filename="<vmrig>").interact(
            banner="vmrig interactive mode (Python). Ctrl-D or exit() leaves and stops the machines.",
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
        log.error(f"VMRIG_REPL={choice!r}: expected auto, plain or ptpython")
        raise SystemExit(1)
    if choice == "plain":
        return None
    try:
        from ptpython.repl import embed
    except ImportError as e:
        if choice == "ptpython":
            log.error(f"VMRIG_REPL=ptpython, but ptpython cannot be imported: {e}")
            raise SystemExit(1)
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


def _main(native_driver, args):
    """The CLI's entry: runs the script, or the REPL; returns the exit status."""
    debug = _Debug(args["debug_hook_attach"], native_driver.global_timeout)
    g = _globals(native_driver, args["script"], args["nodes"], debug, args["interactive"])
    if args["interactive"]:
        return _repl(g, args["history"])
    return _run(g, args["script"], debug, native_driver.global_timeout)


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
