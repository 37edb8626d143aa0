"""A test script's globals, and running it with NixOS's failure report."""

import contextlib
import os
import re
import time
import traceback
import unittest
from pathlib import Path

import _vmrig

from .debug import _Debug
from .durations import retry
from .errors import MachineError, RequestedAssertionFailed
from .logger import log, report_error
from .machine import BaseMachine, Machine, NspawnMachine, QemuMachine
from .polling import PollingCondition, _polling_condition


class _TestCase(unittest.TestCase):
    failureException = RequestedAssertionFailed

    def runTest(self):
        pass


class _VLan:
    def __init__(self, nr):
        self.nr = nr

    def __repr__(self):
        return f"<VLan {self.nr}>"


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
                    "no test script: give one as an argument, with --test-script "
                    "or in the config's test_script"
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
        out_dir = Path(native_driver.out_dir)

        def __init__(self):
            self.machines = machines
            self.vlans = vlans
            self.polling_conditions = conditions
            self.global_timeout = native_driver.global_timeout

        def check_polling_conditions(self):
            for condition in self.polling_conditions:
                condition.maybe_raise()

    conditions: list[PollingCondition] = []
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
                report_error(f'Test "{name}" failed with error: "{e}"')
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
        "serial_stdout_off": lambda: log.print_serial_logs(False),
        "serial_stdout_on": lambda: log.print_serial_logs(True),
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


def _terminating(signum, frame):
    raise SystemExit(128 + signum)
