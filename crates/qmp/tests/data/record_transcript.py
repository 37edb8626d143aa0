#!/usr/bin/env python3
"""Record the raw bytes a real QEMU sends on its QMP socket.

Usage: record_transcript.py OUT_FILE

Starts `qemu-system-x86_64 -M pc -accel tcg` (no guest, no disk), runs a fixed
sequence of commands over QMP and writes everything QEMU sent, byte for byte,
to OUT_FILE. The sequence covers the greeting, `return` values small and large,
`error` responses, and events (STOP, RESUME, RESET, POWERDOWN, SHUTDOWN).
"""
import json, os, signal, socket, subprocess, sys, tempfile, time

out = sys.argv[1]
tmp = tempfile.mkdtemp()
sock_path = os.path.join(tmp, "qmp")
qemu = subprocess.Popen(
    ["qemu-system-x86_64", "-M", "pc", "-accel", "tcg", "-m", "64", "-display", "none",
     "-vga", "std", "-nodefaults", "-S",
     "-netdev", "user,id=net0", "-device", "e1000,netdev=net0,id=nic0",
     "-qmp", f"unix:{sock_path},server=on,wait=off"],
    start_new_session=True)
try:
    for _ in range(500):
        if os.path.exists(sock_path):
            break
        time.sleep(0.02)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(sock_path)
    buf = bytearray()

    def read_until(pred, timeout=20.0):
        deadline = time.time() + timeout
        s.settimeout(0.2)
        while time.time() < deadline:
            lines = [l for l in bytes(buf).split(b"\r\n") if l]
            if pred(lines):
                return
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                continue
            except ConnectionResetError:
                return
            if not chunk:
                return
            buf.extend(chunk)
        raise SystemExit("timed out waiting for QEMU")

    def has(lines, key, value):
        for l in lines:
            try:
                m = json.loads(l)
            except ValueError:
                continue
            if m.get(key) == value:
                return True
        return False

    read_until(lambda ls: any(b'"QMP"' in l for l in ls))
    cmds = [
        ("qmp_capabilities", None),
        ("query-version", None),
        ("query-status", None),
        ("cont", None),
        ("query-status", None),
        ("stop", None),
        ("set_link", {"name": "nic0", "up": False}),
        ("set_link", {"name": "nic0", "up": True}),
        ("set_link", {"name": "nosuchnic", "up": True}),
        ("no-such-command", None),
        ("human-monitor-command", {"command-line": "info status"}),
        ("human-monitor-command", {"command-line": "info registers"}),
        ("query-commands", None),
        ("query-migrate", None),
        ("send-key", {"keys": [{"type": "qcode", "data": "ctrl"}, {"type": "qcode", "data": "alt"}, {"type": "number", "data": 59}], "hold-time": 50}),
        ("system_reset", None),
        ("system_powerdown", None),
        ("query-qmp-schema", None),
        ("query-status", None),
        ("quit", None),
    ]
    for i, (name, args) in enumerate(cmds, start=1):
        msg = {"execute": name, "id": i}
        if args is not None:
            msg["arguments"] = args
        s.sendall(json.dumps(msg).encode() + b"\r\n")
        read_until(lambda ls, i=i: has(ls, "id", i))
    read_until(lambda ls: False, timeout=3.0)
    with open(out, "wb") as f:
        f.write(bytes(buf))
finally:
    try:
        os.killpg(qemu.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    qemu.wait()
