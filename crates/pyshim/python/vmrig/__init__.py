"""vmrig from plain Python: NixOS-style VM tests as ordinary programs.

    from vmrig import Driver

    with Driver(start_scripts=["result/bin/run-server-vm",
                               "result/bin/run-client-vm"], vlans=[1]) as d:
        d.start_all()
        d.server.wait_for_open_port(8080)
        d.client.succeed("nc -z server 8080")

`Driver(...)` takes the NixOS driver's settings as keyword arguments
(`start_scripts`, `vlans`, `test_script`, `out_dir`, `keep_machine_state`,
`global_timeout`, `log_level`, `junit_xml`, `debug_hook_attach`, `tmp_dir`);
every global of a NixOS test script is an attribute of it (`d.machine`,
`d.subtest`, `d.t`, `d.retry`, ...) and `d.test_symbols()` returns them as a
dict, e.g. for `globals().update(d.test_symbols())`. `d.run_tests()` runs
`test_script`. Leaving the `with` block stops every machine.

After `import vmrig`, `test_driver.errors` and `test_driver.machine` import
as in NixOS.
"""

import sys

from . import _vmrig

# The prelude imports the native module under the name the vmrig binary uses.
sys.modules.setdefault("_vmrig", _vmrig)
_prelude = _vmrig.prelude()

Driver = _prelude.Driver
Machine = _prelude.Machine
BaseMachine = _prelude.BaseMachine
QemuMachine = _prelude.QemuMachine
RequestedAssertionFailed = _prelude.RequestedAssertionFailed
MachineError = _prelude.MachineError
retry = _prelude.retry
PollingCondition = _prelude.PollingCondition

__all__ = [
    "Driver",
    "Machine",
    "BaseMachine",
    "QemuMachine",
    "RequestedAssertionFailed",
    "MachineError",
    "retry",
    "PollingCondition",
]
