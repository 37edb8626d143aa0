# The tutorial's test script, with sway's IPC where it asks GNOME Shell:
#   wmClass = su "${gdbus} ${gseval} global.display.focus_window.wm_class"
#   machine.wait_until_succeeds("${wmClass} | grep -q 'firefox'")
#   machine.sleep(20)
#   machine.screenshot("screen")
def su(command):
    return f"su - alice -c '{command}'"


def focused(field):
    return su("swaymsg -t get_tree") + f" | jq -r '.. | select(.focused? == true) | .{field}'"


machine.wait_until_succeeds(f"{focused('app_id')} | grep -q 'firefox'")
# Where the tutorial sleeps 20 s: the window's title is the page's once it
# has loaded, and OCR reads the page off the screen.
machine.wait_until_succeeds(f"{focused('name')} | grep -q 'vmrig test page'")
machine.wait_for_text("Hello from vmrig")
machine.screenshot("screen")

# Keys reach the Wayland client through QEMU's keyboard, libinput and sway.
machine.send_chars("typed by vmrig")
machine.wait_for_text("typed by vmrig")
machine.send_key("ctrl-a")
machine.send_key("backspace")
machine.send_chars("again")
machine.wait_for_text("again")
assert "typed by vmrig" not in machine.get_screen_text()
