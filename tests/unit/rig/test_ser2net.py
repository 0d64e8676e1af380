"""ser2net's generated config: RFC 2217 accepters on loopback, the right connector per backend."""

from __future__ import annotations

import pytest

from hil.rig.ser2net import Ser2netError, ServedPort, config_text


def test_a_board_behind_ser2net_is_chained_over_rfc2217_so_modem_lines_pass() -> None:
    text = config_text([ServedPort("board0", "rfc2217://127.0.0.1:4000", 47001)])
    assert "accepter: telnet(rfc2217),tcp,127.0.0.1,47001" in text
    assert "connector: telnet(rfc2217),tcp,127.0.0.1,4000" in text
    assert "kickolduser: true" in text


def test_a_usb_uart_is_a_serialdev_at_its_baud_rate() -> None:
    text = config_text([ServedPort("bench3", "/dev/ttyUSB0", 47002, baud=460800)])
    assert "connector: serialdev,/dev/ttyUSB0,460800n81,local" in text


def test_every_port_gets_its_own_connection_block() -> None:
    text = config_text([ServedPort("a", "/dev/ttyUSB0", 1), ServedPort("b", "/dev/ttyUSB1", 2)])
    assert text.count("connection: &") == 2 and "&a\n" in text and "&b\n" in text


def test_a_bad_backend_url_is_named() -> None:
    with pytest.raises(Ser2netError, match="board0"):
        ServedPort("board0", "rfc2217://nohost", 1).connector()
