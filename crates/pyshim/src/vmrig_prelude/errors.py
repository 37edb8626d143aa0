"""The exceptions a test script sees, named where NixOS scripts import
them from (`test_driver.errors`, `test_driver.polling_condition`)."""


class RequestedAssertionFailed(AssertionError):
    """A check the test script asked for did not hold (succeed, fail, waits, t.*)."""


class MachineError(Exception):
    """The machine itself failed (QEMU exited, a socket closed, ...)."""


class PollingConditionError(Exception):
    """A polling condition failed before a machine action (as NixOS: not an assertion)."""


# Tracebacks name them where NixOS scripts import them from.
RequestedAssertionFailed.__module__ = MachineError.__module__ = "test_driver.errors"
PollingConditionError.__module__ = "test_driver.polling_condition"
