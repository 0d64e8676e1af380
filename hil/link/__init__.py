"""The serial link to a board: the console, who holds a port, and flashing with esptool
(the flasher, with its input checks, errors, esptool log capture, RFC 2217 client and
borrowed port each in a module of its own)."""
