"""The NixOS test-script API over vmrig's Rust driver (module `_vmrig`).

Names, keyword arguments and defaults follow nixpkgs' nixos/lib/test-driver;
durations are numbers of seconds or `datetime.timedelta`.
"""

import contextlib
import datetime
import os
import re
import sys
import time
import traceback
import types
import unittest

import _vmrig


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


def _seconds(value, default=None):
    if value is None:
        return default
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    return float(value)


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


class PollingConditionError(RequestedAssertionFailed):
    pass


class _PollingCondition:
    def __init__(self, condition, seconds_interval=2.0, description=None):
        self.condition = condition
        self.seconds_interval = seconds_interval
        self.description = description or (condition.__doc__ or condition.__name__).strip()
        self.last_called = float("-inf")
        self.entered = False

    def check(self, force=False):
        if (self.entered or time.monotonic() - self.last_called < self.seconds_interval) and not force:
            return True
        self.entered = True
        try:
            with log.nested(f"checking polling condition {self.description!r}"):
                try:
                    result = self.condition()
                except Exception:
                    result = False
                result = result is None or bool(result)
        finally:
            self.entered = False
            self.last_called = time.monotonic()
        return result

    def maybe_raise(self):
        if not self.check():
            raise PollingConditionError(f"Polling condition failed: {self.description}")

    def wait(self, timeout=900):
        retry(lambda _: self.check(force=True), timeout)

    def __enter__(self):
        _conditions.append(self)

    def __exit__(self, *exc):
        _conditions.remove(self)


_conditions = []


def _check_conditions():
    for condition in list(_conditions):
        condition.maybe_raise()


def polling_condition(fun_=None, *, seconds_interval=2.0, description=None):
    """Decorator: a condition checked before machine actions while in `with`."""

    def wrap(fun):
        return _PollingCondition(fun, seconds_interval, description)

    return wrap(fun_) if fun_ is not None else wrap


def retry(fn, timeout_seconds=900):
    """Calls fn(False) every second until it returns True or time is up, then fn(True)."""
    timeout_seconds = _seconds(timeout_seconds)
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


def _action(fun):
    def wrapper(self, *args, **kwargs):
        _check_conditions()
        return fun(self, *args, **kwargs)

    wrapper.__name__ = fun.__name__
    wrapper.__doc__ = fun.__doc__
    return wrapper


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

    @_action
    def execute(self, command, check_return=True, check_output=True, timeout=900):
        return self._m.execute(command, check_return, check_output, _seconds(timeout))

    @_action
    def succeed(self, *commands, timeout=None):
        return self._m.succeed(list(commands), _seconds(timeout))

    @_action
    def fail(self, *commands, timeout=None):
        return self._m.fail(list(commands), _seconds(timeout))

    def wait_until_succeeds(self, command, timeout=900):
        _check_conditions()
        return self._m.wait_until_succeeds(command, _seconds(timeout))

    def wait_until_fails(self, command, timeout=900):
        _check_conditions()
        return self._m.wait_until_fails(command, _seconds(timeout))

    def sleep(self, secs):
        self.succeed(f"sleep {_seconds(secs)}")

    @_action
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

    @_action
    def send_key(self, key, delay=0.01, log=True):
        self._m.send_key(key, _seconds(delay))

    def send_chars(self, chars, delay=0.01):
        self._m.send_chars(chars, _seconds(delay))

    def send_console(self, chars):
        self._m.send_console(chars)

    @_action
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
        raise MachineError("shell_interact is not supported in vmrig test scripts yet")

    def console_interact(self):
        raise MachineError("console_interact is not supported in vmrig test scripts yet")

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


class _Debug:
    def breakpoint(self, *args, **kwargs):
        raise MachineError("interactive debugging (--debug-hook-attach) is not supported by vmrig yet")


def _identifier(name):
    return re.sub(r"[^A-Za-z0-9_]", "_", name)


def _globals(native_driver, script_path, nodes):
    machines = [Machine(m) for m in native_driver.machines()]
    vlans = [_VLan(n) for n in native_driver.vlans()]

    class _Driver:
        out_dir = native_driver.out_dir

        def __init__(self):
            self.machines = machines
            self.vlans = vlans
            self.polling_conditions = _conditions

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

    def create_machine(start_command, *, name=None, keep_vm_state=False):
        m = Machine(native_driver.create_machine(str(start_command)))
        machines.append(m)
        return m

    def test_script():
        with log.nested("run the VM test script"):
            exec(compile(open(script_path).read(), script_path, "exec"), g)

    def dump_machine_ssh(offset=1000):
        raise MachineError("the SSH backdoor (enable_ssh_backdoor) is not supported by vmrig yet")

    g = {
        "__name__": "__main__",
        "start_all": start_all,
        "test_script": test_script,
        "run_tests": test_script,
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
        "polling_condition": polling_condition,
        "BaseMachine": BaseMachine,
        "QemuMachine": QemuMachine,
        "NspawnMachine": NspawnMachine,
        "Machine": Machine,
        "t": _TestCase(),
        "debug": _Debug(),
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


def _run(native_driver, script_path, nodes):
    """Runs the script; returns the exit status (0 passed, 1 failed)."""
    g = _globals(native_driver, script_path, nodes)
    try:
        code = compile(open(script_path).read(), script_path, "exec")
        exec(code, g)
        return 0
    except RequestedAssertionFailed as e:
        # NixOS prints only the test script's own frames, each line prefixed.
        frames = [f for f in traceback.extract_tb(e.__traceback__) if f.filename == script_path]
        text = "".join(traceback.format_list(frames) + traceback.format_exception_only(type(e), e))
        for line in text.rstrip("\n").split("\n"):
            print(f"!!! {line}", file=sys.stderr)
        return 1
    except BaseException:
        traceback.print_exc()
        return 1
