# A NixOS test script for two machines on VLAN 1, `client` and `server`
# (which answers on port 8080 with its hostname): start_all, names and
# addresses, a cut cable (block/unblock), join_all. Written against the NixOS
# test driver's documented API.

with subtest("the globals of a two-machine test"):
    assert sorted(m.name for m in machines) == ["client", "server"]
    assert "machine" not in globals()  # the alias exists for one machine only
    assert client in machines and server in machines
    assert vlan1.nr == 1 and vlans == [vlan1]

start_all()

with subtest("the client reaches the server's service by name"):
    server.wait_for_open_port(8080)
    client.wait_until_succeeds("nc -N server 8080 </dev/null | grep -q server", timeout=60)
    assert client.succeed("hostname").strip() == "client"
    assert server.succeed("hostname").strip() == "server"
    client.succeed("ip addr show | grep -q '192.168.1.'")

with subtest("a cut cable stops traffic until it is plugged back"):
    client.succeed("nc -z -w 5 server 8080")
    client.block()
    client.fail("nc -z -w 2 server 8080")
    client.unblock()
    client.wait_until_succeeds("nc -z -w 2 server 8080", timeout=60)

with subtest("join_all waits until every machine is off"):
    for m in machines:
        m.succeed("(sleep 1; poweroff -f) >/dev/null 2>&1 &")
    join_all()
    assert not client.is_up() and not server.is_up()
