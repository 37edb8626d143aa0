# A NixOS test script about a machine's life (one machine, so `machine`, on
# VLAN 1): start, shutdown, start again (allowing reboots), reboot,
# wait_for_shutdown, crash, and create_machine + release for a second machine,
# whose start script comes from the environment (`OTHER_START_SCRIPT`, a
# run-NAME-vm), as a Nix test would interpolate it. Written against the NixOS
# test driver's documented API.
import os

with subtest("shutdown, then start again from scratch"):
    assert not machine.is_up()
    machine.start()
    machine.succeed("touch /tmp/first-boot")
    machine.shutdown()
    assert not machine.is_up() and not machine.booted
    machine.start(allow_reboot=True)
    machine.fail("test -e /tmp/first-boot")
    assert machine.is_up()

with subtest("reboot, when the machine allows it"):
    machine.succeed("touch /tmp/before-reboot")
    machine.reboot()
    machine.fail("test -e /tmp/before-reboot")
    assert machine.is_up()

with subtest("wait_for_shutdown sees the guest power off"):
    machine.succeed("(sleep 1; poweroff -f) >/dev/null 2>&1 &")
    machine.wait_for_shutdown()
    assert not machine.is_up()

with subtest("crash stops QEMU at once"):
    machine.start()
    machine.succeed("true")
    machine.crash()
    assert not machine.is_up()

with subtest("create_machine adds a machine at run time; release stops it"):
    other = create_machine(os.environ["OTHER_START_SCRIPT"])
    assert isinstance(other, BaseMachine)
    other.start()
    assert other.succeed("hostname").strip() == other.name
    other.release()
    assert not other.is_up()
    join_all()
