"""OTA to a fleet, per device (no fleet, no broker): installed and confirmed only with
``success`` and an ``online`` on the new version since the offer; anything else in the
device's own words."""

from __future__ import annotations

from hil.load.ota import FleetOta, download_timeout, outcome

OFFER = 10.0


def test_success_and_the_new_version_online_is_installed_and_confirmed() -> None:
    states = [(11.0, {"state": "downloading"}), (12.0, {"state": "rebooting"}), (14.0, {"state": "success"})]
    assert outcome(states, [(5.0, "1.0.0"), (13.0, "1.1.0")], "1.1.0", OFFER) is None


def test_success_without_the_new_version_online_is_a_failure() -> None:
    states = [(14.0, {"state": "success"})]
    assert outcome(states, [(13.0, "1.0.0")], "1.1.0", OFFER) == (
        "reported success but never came online as 1.1.0 (online as ['1.0.0'])"
    )
    assert "online as nothing" in str(outcome(states, [(5.0, "1.1.0")], "1.1.0", OFFER))  # before the offer


def test_a_refusal_or_a_stall_is_said_in_the_devices_words() -> None:
    rejected = [(11.0, {"state": "rejected", "reason": "signature invalid"})]
    assert outcome(rejected, [], "1.1.0", OFFER) == "rejected: signature invalid"
    stalled = [(11.0, {"state": "downloading"}), (12.0, {"state": "rebooting"})]
    assert outcome(stalled, [], "1.1.0", OFFER) == "no verdict (last state: rebooting)"
    assert outcome([(5.0, {"state": "success"})], [], "1.1.0", OFFER) == "no verdict (last state: none reported)"
    # The first verdict counts: a success reported after a rollback does not undo it.
    flip = [(12.0, {"state": "rolled_back", "reason": "self-test failed"}), (20.0, {"state": "success"})]
    assert outcome(flip, [(21.0, "1.1.0")], "1.1.0", OFFER) == "rolled_back: self-test failed"


def test_the_deadline_allows_the_paced_download_twice_the_reboot_and_the_self_test() -> None:
    assert download_timeout(90_000, 30_000) == 2 * 3.0 + 30.0 + 60.0
    summary = FleetOta(
        devices=3, version="1.1.0", image_bytes=90_000, bytes_per_s=65_536, succeeded=2,
        failures={"fleet-0002": "no verdict"}, requests=4, resumed=1, seconds=9.5, confirmed_after=(2.0, 3.0),
    ).summary()  # fmt: skip
    assert "2 installed and confirmed (median 3.0 s, last 3.0 s), 1 failed; 4 downloads, 1 resumed" in summary
