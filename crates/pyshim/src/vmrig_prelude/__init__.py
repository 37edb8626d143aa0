"""The NixOS test-script API over vmrig's Rust driver (module `_vmrig`).

Names, keyword arguments and defaults follow nixpkgs' nixos/lib/test-driver;
durations are numbers of seconds or `datetime.timedelta`. The vmrig binary
embeds this package and calls `_main`; the `vmrig` wheel re-exports `Driver`
and the classes.

Importing it makes NixOS's module names importable from test scripts:
`test_driver.errors`, `test_driver.machine`, `test_driver.polling_condition`
and `test_driver.logger`.
"""

import sys
import types

from .driver import Driver
from .durations import retry
from .errors import MachineError, PollingConditionError, RequestedAssertionFailed
from .logger import log, rootlog
from .machine import BaseMachine, Machine, NspawnMachine, QemuMachine
from .main import _main
from .polling import PollingCondition

__all__ = [
    "BaseMachine",
    "Driver",
    "Machine",
    "MachineError",
    "NspawnMachine",
    "PollingCondition",
    "PollingConditionError",
    "QemuMachine",
    "RequestedAssertionFailed",
    "_main",
    "log",
    "retry",
]


def _module(name: str, **attrs: object) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__dict__.update(attrs)
    sys.modules[name] = mod
    return mod


_package = _module(
    "test_driver",
    __path__=[],
    errors=_module(
        "test_driver.errors",
        RequestedAssertionFailed=RequestedAssertionFailed,
        MachineError=MachineError,
    ),
    machine=_module(
        "test_driver.machine",
        Machine=Machine,
        QemuMachine=QemuMachine,
        BaseMachine=BaseMachine,
        NspawnMachine=NspawnMachine,
        retry=retry,
        RequestedAssertionFailed=RequestedAssertionFailed,
        MachineError=MachineError,
    ),
    polling_condition=_module(
        "test_driver.polling_condition",
        PollingCondition=PollingCondition,
        PollingConditionError=PollingConditionError,
    ),
    logger=_module("test_driver.logger", rootlog=rootlog),
)
