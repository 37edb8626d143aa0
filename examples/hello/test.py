# A NixOS-style test script: runs unchanged under NixOS's driver and vmrig's.

with subtest("alice has jq, root does not"):
    machine.succeed("su -- alice -c 'which jq'")
    machine.fail("su -- root -c 'which jq'")

with subtest("the machine knows itself"):
    assert machine.succeed("hostname").strip() == "machine"
    t.assertIn("Hello from a vmrig guest.", machine.succeed("cat /etc/motd"))
    t.assertEqual(nodes["machine"]["users"]["alice"]["uid"], 1000)

machine.screenshot("screen")
