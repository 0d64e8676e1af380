"""Fixtures for the firmware-model tests: a real mosquitto, provisioned virtual boards,
and an MQTT observer. Plain clients only; the rig fixtures of the plugin are not used."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hil.device.settings import Provisioning, provisioning_image
from hil.firmware.catalog import cached_build
from hil.rig.virtual_board import ControlClient, VirtualBoardProcess
from hil.services.broker import OBSERVER_USER, DeviceCredentials, MosquittoBroker
from hil.services.mqtt import MqttObserver
from hil.sim.flash import SpiFlash

DEVICES = ("dev1", "dev2", "dev3")
WIFI_SSID = "hil-lab"
WIFI_PASS = "hil-lab-password"
FAST = {"measurement_interval_s": 1, "heartbeat_interval_s": 2, "status_report_interval_s": 2}


@pytest.fixture(scope="session")
def images() -> Path:
    return cached_build()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    broker = MosquittoBroker(tmp_path / "broker")
    for device in DEVICES:
        broker.add_device(device)
    broker.start()
    try:
        yield broker
    finally:
        broker.kill()


@pytest.fixture
def observer(broker: MosquittoBroker) -> Iterator[MqttObserver]:
    with MqttObserver("127.0.0.1", broker.plain_port, username=OBSERVER_USER, password=broker.observer_password) as obs:
        yield obs


@dataclass
class SimBoard:
    process: VirtualBoardProcess
    device_id: str
    creds: DeviceCredentials

    @property
    def control(self) -> ControlClient:
        assert self.process.control is not None
        return self.process.control


def write_factory_flash(state_dir: Path, images: Path, app: str, provisioning: bytes) -> None:
    """What a factory programmer leaves on a new board: bootloader, table, app, NVS."""
    state_dir.mkdir(parents=True, exist_ok=True)
    with SpiFlash(state_dir / "flash.bin") as flash:
        for line in (images / "flash_args").read_text().splitlines()[1:]:
            offset, name = line.split()
            flash.write(int(offset, 16), (images / (f"{app}.bin" if offset == "0x10000" else name)).read_bytes())
        flash.write(0x9000, provisioning)


BoardMaker = Callable[..., SimBoard]


@pytest.fixture
def make_board(
    broker: MosquittoBroker, images: Path, virtual_board_factory: Callable[..., VirtualBoardProcess], tmp_path: Path
) -> BoardMaker:
    def make(
        app: str = "baseline",
        *,
        device_id: str = "dev1",
        listener: str = "plain",
        config: Mapping[str, Any] | None = None,
        ota_pubkey: str | None = None,
        wifi_pass: str = WIFI_PASS,
        ca_pem: str | None = None,
        profile: str = "default",
    ) -> SimBoard:
        creds = broker.credentials(device_id)
        prov = Provisioning(
            device_id=device_id,
            wifi_ssid=WIFI_SSID,
            wifi_pass=wifi_pass,
            mqtt_uri=broker.uri(listener),
            mqtt_user=creds.username if listener != "mtls" else None,
            mqtt_pass=creds.password if listener != "mtls" else None,
            ca_cert=ca_pem or broker.ca_pem,
            client_cert=creds.client_cert_pem if listener == "mtls" else None,
            client_key=creds.client_key_pem if listener == "mtls" else None,
            ota_pubkey=ota_pubkey,
        )
        state = tmp_path / f"board-{device_id}"
        write_factory_flash(state, images, app, provisioning_image(prov, {**FAST, **(config or {})}))
        return SimBoard(virtual_board_factory(state_dir=state, profile=profile), device_id, creds)

    return make
