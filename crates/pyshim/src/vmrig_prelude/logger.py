"""NixOS's logger (`log` in scripts, `test_driver.logger.rootlog`) over the
driver's terminal and XML logs."""

import contextlib
import sys

import _vmrig


def report_error(message):
    """An error line in the log that, unlike `log.error`, does not end the run."""
    _vmrig.log("error", message)


class _Logger:
    """NixOS's `log`: info/warning/error and nested sections."""

    def log(self, message, attributes=None):
        _vmrig.log("info", message)

    def info(self, message, attributes=None):
        _vmrig.log("info", message)

    def debug(self, message, attributes=None):
        _vmrig.log("debug", message)

    def warning(self, message, attributes=None):
        _vmrig.log("warning", message)

    def error(self, message, attributes=None):
        """As NixOS's: logs the error and ends the test script (SystemExit 1)."""
        _vmrig.log("error", message)
        sys.exit(1)

    @contextlib.contextmanager
    def nested(self, message, attributes=None):
        # A span in the driver's log: printed with its duration, nested.
        _vmrig.section_enter(message)
        try:
            yield
        finally:
            _vmrig.section_exit()

    @contextlib.contextmanager
    def subtest(self, name, attributes=None):
        with self.nested(f"subtest: {name}", attributes):
            yield

    def log_serial(self, message, machine):
        _vmrig.log("info", f"{machine} # {message}")

    def print_serial_logs(self, enable):
        _vmrig.serial_stdout(enable)

    def log_test_error(self, *args, **kwargs):
        for line in " ".join(str(a) for a in args).split("\n"):
            _vmrig.log_test_error(line)


log = _Logger()
# NixOS scripts reach the same logger as `test_driver.logger.rootlog`.
rootlog = log
