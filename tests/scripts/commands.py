# A NixOS test script for one machine (`machine`, VLAN 1) that uses every
# global and the Machine methods a guest without systemd supports: commands,
# waits, files, polling conditions, console, monitor, QMP, screen, keyboard.
# Written against the NixOS test driver's documented API, so it runs
# unchanged under nixos-test-driver and vmrig (both command-line generations).
import datetime
import socket
from pathlib import Path

from test_driver import logger
from test_driver.errors import MachineError, RequestedAssertionFailed
from test_driver.machine import Machine as MachineClass
from test_driver.polling_condition import PollingConditionError

with subtest("the globals a test script sees"):
    assert machines == [machine] and machines_qemu == [machine]
    assert machines_nspawn == []
    assert isinstance(machine, MachineClass) and isinstance(machine, Machine)
    assert isinstance(machine, QemuMachine) and isinstance(machine, BaseMachine)
    assert not isinstance(machine, NspawnMachine)
    assert [v.nr for v in vlans] == [1] and vlan1 is vlans[0]
    assert list(driver.machines) == machines
    assert Path(driver.out_dir).is_dir() and Path(machine.out_dir) == Path(driver.out_dir)
    assert machine.name == "machine"
    for f in (start_all, join_all, create_machine, test_script, run_tests, dump_machine_ssh):
        assert callable(f)
    assert issubclass(RequestedAssertionFailed, AssertionError)
    assert issubclass(MachineError, Exception)
    log.info("an info line from the script")
    log.warning("a warning line from the script")
    with log.nested("a nested section"):
        log.info("inside the section")
    debug.breakpoint()  # nothing happens without --debug-hook-attach
    t.assertEqual(6 * 7, 42)
    t.assertIn("b", "abc")
    t.assertTrue(True)
    try:
        t.assertEqual(1, 2)
    except RequestedAssertionFailed:
        pass
    else:
        raise Exception("t.assertEqual(1, 2) did not fail")

with subtest("start and connect"):
    assert not machine.is_up() and not machine.booted and not machine.connected
    start_all()
    machine.connect()
    assert machine.is_up() and machine.booted and machine.connected
    assert machine.pid > 0
    machine.log("connected")
    with machine.nested("a section about the machine"):
        machine.succeed("true")

with subtest("execute, succeed and fail"):
    assert machine.execute("echo out; exit 3") == (3, "out\n")
    assert machine.execute("echo kept", check_return=False) == (-1, "kept\n")
    assert machine.execute("echo unread", check_output=False) == (-2, "")
    assert machine.execute("echo next") == (0, "next\n")
    assert machine.execute("sleep 30", timeout=1)[0] == 124
    assert machine.execute("false | true")[0] != 0  # set -o pipefail
    assert machine.execute("echo $undefined_variable")[0] != 0  # set -u
    assert machine.succeed("echo a", "echo b") == "a\nb\n"
    assert machine.succeed("echo quick", timeout=30) == "quick\n"
    assert machine.fail("false", "exit 2") == ""
    assert machine.succeed("printf 'x\\0y'") == "x\0y"
    assert machine.succeed("su - alice -c 'id -u'").strip() == "1000"
    machine.sleep(1)

with subtest("a failed check is RequestedAssertionFailed, and can be caught"):
    for check in (
        lambda: machine.succeed("echo about to fail; exit 4"),
        lambda: machine.fail("true"),
        lambda: machine.wait_until_succeeds("false", timeout=2),
        lambda: machine.wait_until_fails("true", timeout=2),
        lambda: machine.wait_for_file("/nonexistent", timeout=2),
        lambda: machine.wait_for_console_text("never-on-the-console", timeout=2),
        lambda: retry(lambda last_try: False, timeout_seconds=2),
    ):
        try:
            check()
        except RequestedAssertionFailed as e:
            log.info(f"caught as expected: {e}")
        else:
            raise Exception("a failing check passed")
    # NixOS builds these waits on retry(), and says so.
    for wait in (
        lambda: machine.wait_for_file("/nonexistent", timeout=1),
        lambda: machine.wait_for_console_text("never-on-the-console", timeout=1),
    ):
        try:
            wait()
        except RequestedAssertionFailed as e:
            assert "action timed out" in str(e), str(e)
        else:
            raise Exception("a wait for nothing passed")

with subtest("waits"):
    machine.succeed("(sleep 2; touch /tmp/later) >/dev/null 2>&1 &")
    machine.wait_for_file("/tmp/later", timeout=30)
    assert machine.wait_until_succeeds("test -e /tmp/later && echo there", timeout=30) == "there\n"
    machine.succeed("(sleep 2; rm /tmp/later) >/dev/null 2>&1 &")
    machine.wait_until_fails("test -e /tmp/later", timeout=datetime.timedelta(seconds=30))
    machine.succeed("(nc -l -k 4321 >/dev/null 2>&1 & echo $! > /tmp/nc.pid)")
    machine.wait_for_open_port(4321, timeout=30)
    machine.wait_for_open_port(4321, addr="127.0.0.1", timeout=30)
    machine.succeed("kill $(cat /tmp/nc.pid)")
    machine.wait_for_closed_port(4321, timeout=30)
    machine.succeed("(nc -l -U /tmp/test.sock >/dev/null 2>&1 &)")
    machine.wait_for_open_unix_socket("/tmp/test.sock", timeout=30)
    tries = []

    def flag_is_there(last_try):
        tries.append(last_try)
        return machine.execute("test -e /tmp/flag")[0] == 0

    machine.succeed("(sleep 2; touch /tmp/flag) >/dev/null 2>&1 &")
    retry(flag_is_there, timeout_seconds=30)
    assert tries[-1] is False and len(tries) >= 2

with subtest("NixOS's logger module"):
    logger.rootlog.info("a line through test_driver.logger.rootlog")
    with logger.rootlog.nested("a section of rootlog"):
        logger.rootlog.warning("a warning inside it")

with subtest("polling conditions"):

    @polling_condition
    def tmp_is_writable():
        "/tmp is writable"
        machine.succeed("touch /tmp/.probe")

    assert tmp_is_writable.condition.description == "/tmp is writable"
    with tmp_is_writable:
        machine.succeed("true")
        tmp_is_writable.wait(timeout=30)
        assert tmp_is_writable.condition.check(force=True) is True

    @polling_condition(seconds_interval=0, description="a condition that never holds")
    def never():
        return False

    with never:
        try:
            machine.succeed("true")
        except Exception as e:
            assert "a condition that never holds" in str(e), str(e)
            assert isinstance(e, PollingConditionError), repr(e)
            assert not isinstance(e, AssertionError), repr(e)
        else:
            raise Exception("a failing polling condition did not stop the action")
    assert never.condition.description == "a condition that never holds"
    assert never.condition.check(force=True) is False
    machine.succeed("true")

with subtest("a bad duration is an error naming the argument"):
    for bad in (-1, float("nan"), float("inf"), 10**400, datetime.timedelta(days=-1)):
        try:
            machine.wait_for_file("/etc/hostname", timeout=bad)
        except ValueError as e:
            assert "timeout=" in str(e), str(e)
        else:
            raise Exception(f"timeout={bad!r} was taken")
    try:
        machine.sleep(-3)
    except ValueError as e:
        assert "secs=-3" in str(e), str(e)
    else:
        raise Exception("sleep(-3) was taken")
    machine.succeed("true")

with subtest("files between host and guest"):
    src = Path(driver.out_dir) / "from-host.txt"
    src.write_text("hello from the host\n")
    machine.copy_from_host(str(src), "/tmp/copied/by-share.txt")
    assert machine.succeed("cat /tmp/copied/by-share.txt") == "hello from the host\n"
    machine.copy_from_host_via_shell(str(src), "/tmp/copied/by-shell.txt")
    assert machine.succeed("cat /tmp/copied/by-shell.txt") == "hello from the host\n"
    machine.succeed("mkdir -p /tmp/tree/sub && echo leaf > /tmp/tree/sub/leaf")
    machine.copy_from_machine("/tmp/tree", "copied")
    assert (Path(driver.out_dir) / "copied" / "tree" / "sub" / "leaf").read_text() == "leaf\n"
    machine.copy_from_vm("/tmp/copied/by-shell.txt")
    assert (Path(driver.out_dir) / "by-shell.txt").read_text() == "hello from the host\n"

with subtest("the serial console"):
    machine.succeed("echo marker-on-the-console > /dev/ttyS0")
    machine.wait_for_console_text("marker-on-the-console", timeout=30)
    assert "marker-on-the-console" in machine.get_console_log()
    machine.succeed("stty -F /dev/ttyS0 -echo; (head -n 1 /dev/ttyS0 > /tmp/from-console &)")
    machine.send_console("typed on the console\n")
    machine.wait_until_succeeds("grep -q 'typed on the console' /tmp/from-console", timeout=30)
    serial_stdout_off()
    machine.succeed("echo hidden-from-the-log > /dev/ttyS0")
    machine.wait_for_console_text("hidden-from-the-log", timeout=30)
    serial_stdout_on()

with subtest("the monitor and QMP"):
    status = machine.send_monitor_command("info status")
    assert "running" in status and status.endswith("(qemu) "), repr(status)
    machine.wait_for_monitor_prompt()
    machine.send_monitor_command("stop")
    machine.send_monitor_command("cont")
    event = machine.wait_for_qmp_event(lambda e: e["event"] == "RESUME", timeout=30)
    assert event["event"] == "RESUME"
    with socket.socket() as s:  # a free host port for forward_port
        s.bind(("127.0.0.1", 0))
        host_port = s.getsockname()[1]
    machine.forward_port(host_port, 8081)
    machine.succeed(
        "(while true; do echo forwarded | nc -l -N 8081; done >/dev/null 2>&1 &)"
    )
    machine.wait_for_open_port(8081, timeout=30)

    def forwarded(last_try):
        # The listener restarts after each connection (the port probe's too).
        with socket.create_connection(("127.0.0.1", host_port), timeout=10) as c:
            return c.makefile().readline() == "forwarded\n"

    retry(forwarded, timeout_seconds=30)

with subtest("screen, keyboard and TTYs"):
    machine.send_chars("clear; echo typed-$((6*7))\n")
    machine.wait_until_tty_matches("1", "typed-42", timeout=60)
    assert "typed-42" in machine.get_tty_text("1")
    machine.send_key("ctrl-l")
    machine.send_chars("echo second line\n", delay=0.02)
    machine.wait_until_tty_matches(1, "second line", timeout=60)
    machine.screenshot("screen")
    assert (Path(driver.out_dir) / "screen.png").read_bytes()[:4] == b"\x89PNG"
    machine.wait_for_text("second", timeout=120)
    assert len(machine.get_screen_text_variants()) == 3
    assert isinstance(machine.get_screen_text(), str)
