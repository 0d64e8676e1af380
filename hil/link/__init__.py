"""The serial link to a board: the console, who holds a port, and flashing with esptool."""
