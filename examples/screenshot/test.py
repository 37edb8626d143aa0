machine.wait_for_x()
machine.wait_for_file("/home/alice/.Xauthority")
machine.succeed("xauth merge ~alice/.Xauthority")
machine.wait_for_window("Firefox")
assert any("Firefox" in name for name in machine.get_window_names())

# The page is up when its text can be read off the screen.
machine.wait_for_text("Hello from vmrig")
machine.screenshot("screen")

# Type into the page's text box and read it back.
machine.send_chars("typed by vmrig")
machine.wait_for_text("typed by vmrig")
machine.send_key("ctrl-a")
machine.send_key("backspace")
machine.send_chars("again")
machine.wait_for_text("again")
assert "typed by vmrig" not in machine.get_screen_text()
