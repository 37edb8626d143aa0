"""NixOS's polling conditions over the driver's (which runs them before
machine actions)."""

import _vmrig

from .durations import _seconds
from .logger import log


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
        self._native = _vmrig._PollingCondition(condition, self.seconds_interval, self.description)

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
