# The pair: a server with a tiny TCP service and a client, on VLAN 1.
start_all()

with subtest("the client reaches the server's service by name"):
    server.wait_for_open_port(8080)
    client.wait_until_succeeds("nc -N server 8080 </dev/null | grep -q server")

with subtest("a cut cable stops traffic until it is plugged back"):
    client.succeed("ping -c 1 -W 5 server")
    client.block()
    client.fail("ping -c 1 -W 1 server")
    client.unblock()
    client.wait_until_succeeds("ping -c 1 -W 1 server", timeout=60)
