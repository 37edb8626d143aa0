"""NixOS's Machine over the driver's (`_vmrig._Machine`)."""

import sys
from pathlib import Path

import _vmrig

from .durations import _seconds
from .logger import log


class BaseMachine:
    """Common base of machines (NixOS's BaseMachine)."""


class Machine(BaseMachine):
    """A QEMU machine, with NixOS's Machine methods."""

    def __init__(self, native):
        self._m = native
        self.name = native.name
        # pathlib.Path, as NixOS's (scripts write `machine.state_dir / "x"`).
        self.out_dir = Path(native.out_dir)
        self.state_dir = Path(native.state_dir)
        self.shared_dir = Path(native.shared_dir)
        self.callbacks = []

    def __repr__(self):
        return f"<Machine '{self.name}'>"

    pid = property(lambda self: self._m.pid)
    booted = property(lambda self: self._m.booted)
    connected = property(lambda self: self._m.connected)
    process = property(lambda self: self._m.pid)

    def log(self, msg):
        _vmrig.log("info", f"{self.name}: {msg}")

    def nested(self, msg, attrs=None):
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
