import json

start_all()

server.wait_for_open_port(3000)

expected = [
    {"id": 1, "done": False, "task": "finish tutorial 0", "due": None},
    {"id": 2, "done": False, "task": "pat self on back", "due": None},
]

actual = json.loads(client.succeed("curl http://server:3000/todos"))

assert expected == actual, "table query returns expected content"
