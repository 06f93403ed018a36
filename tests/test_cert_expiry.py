"""Certificate lifetimes: reading a PEM file's end of validity, the warnings 30 days ahead,
and the daily checks on an injected clock (appliance/cert_expiry.py,
appliance/gateway/cert_watch.py).
The certificates are real files, made by `herald cert selfsigned`'s code with a chosen date."""

from __future__ import annotations

import datetime
import logging
from pathlib import Path

import pytest
import trio

from appliance.cert_expiry import (
    CHECK_INTERVAL_S,
    CertificateUnreadable,
    WatchedCertificate,
    check_certificates,
    describe_validity,
    pin_in_use,
    read_validity,
    run_daily_checks,
)
from appliance.cli.certs import make_self_signed
from appliance.config import Config, EscrowConfig, TlsConfig
from appliance.gateway.cert_watch import (
    ESCROW_CLIENT_RENEWAL,
    expired_gateway_refusal,
    watch_certificates,
    watched_certificates,
)

NOW = datetime.datetime(2026, 11, 27, 6, 0, tzinfo=datetime.UTC)
DAY = datetime.timedelta(days=1)


def _cert(folder: Path, *, days_left: float, at: datetime.datetime = NOW) -> Path:
    """A real self-signed certificate (and its key beside it) that ends `days_left` after
    `at`."""
    return make_self_signed(folder, ["herald.example"],
                            now=at + datetime.timedelta(days=days_left) - 365 * DAY).cert_file


def _watched(path: Path, renewal: str = "Renew it with X.") -> WatchedCertificate:
    return WatchedCertificate("the test certificate", path, renewal)


def test_a_file_ends_with_its_first_certificate_to_end(tmp_path: Path) -> None:
    late = _cert(tmp_path / "late", days_left=400)
    early = _cert(tmp_path / "early", days_left=12)
    chain = tmp_path / "chain.pem"
    chain.write_bytes(late.read_bytes() + early.read_bytes())
    validity = read_validity(chain)
    assert validity.count == 2
    assert validity.not_after == read_validity(early).not_after
    assert validity.days_left(NOW) == 12


def test_days_left_round_down_and_go_negative_once_expired(tmp_path: Path) -> None:
    validity = read_validity(_cert(tmp_path, days_left=10))
    assert validity.days_left(NOW) == 10
    assert validity.days_left(NOW + datetime.timedelta(seconds=1)) == 9
    assert validity.days_left(validity.not_after - datetime.timedelta(seconds=1)) == 0
    assert not validity.expired(validity.not_after - datetime.timedelta(seconds=1))
    assert validity.expired(validity.not_after)
    assert validity.days_left(validity.not_after) == 0
    assert validity.days_left(validity.not_after + datetime.timedelta(seconds=1)) == -1


@pytest.mark.parametrize("content", [
    b"", b"not a certificate\n", b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
])
def test_a_file_without_a_certificate_is_unreadable(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.pem"
    path.write_bytes(content)
    with pytest.raises(CertificateUnreadable, match="holds no PEM certificate"):
        read_validity(path)
    with pytest.raises(CertificateUnreadable, match=r"cannot read .*missing\.pem"):
        read_validity(tmp_path / "missing.pem")


def test_a_certificate_ending_within_30_days_is_a_warning_naming_file_date_days_and_renewal(
    tmp_path: Path,
) -> None:
    path = _cert(tmp_path, days_left=10)
    (found,) = check_certificates([_watched(path)], NOW)
    assert found.level == logging.WARNING and not found.expired
    assert found.message == (f"the test certificate, {path}, expires on 2026-12-07 06:00 UTC, "
                             f"in 10 days. Renew it with X.")


@pytest.mark.parametrize(("days_left", "warned"), [(400, False), (30, False), (29.9, True),
                                                   (1, True), (0.5, True)])
def test_the_warning_starts_30_days_ahead(tmp_path: Path, days_left: float,
                                          warned: bool) -> None:
    findings = check_certificates([_watched(_cert(tmp_path, days_left=days_left))], NOW)
    assert bool(findings) is warned
    if days_left < 1:
        assert "in less than a day" in findings[0].message


def test_an_expired_certificate_is_an_error(tmp_path: Path) -> None:
    path = _cert(tmp_path, days_left=-3)
    (found,) = check_certificates([_watched(path)], NOW)
    assert found.level == logging.ERROR and found.expired
    assert found.message == (f"the test certificate, {path}, EXPIRED on 2026-11-24 06:00 UTC. "
                             f"Renew it with X.")


def test_an_unreadable_certificate_is_a_warning_that_says_why(tmp_path: Path) -> None:
    (found,) = check_certificates([_watched(tmp_path / "gone.pem")], NOW)
    assert found.level == logging.WARNING
    assert found.message.startswith("cannot check when the test certificate expires: cannot "
                                    "read ")


def test_a_running_server_is_judged_on_the_certificate_it_loaded_not_on_a_renewed_file(
    tmp_path: Path,
) -> None:
    """Servers load their certificates once: renewing the file without a restart must not
    silence the warning, and the warning then says to restart."""
    path = _cert(tmp_path / "in-use", days_left=10)
    (pinned,) = pin_in_use([_watched(path)])
    assert pinned.in_use == read_validity(path)
    path.write_bytes(_cert(tmp_path / "renewed", days_left=400).read_bytes())
    assert check_certificates([_watched(path)], NOW) == []  # the file alone: renewed
    (found,) = check_certificates([pinned], NOW)
    assert found.level == logging.WARNING
    assert found.message == (
        f"the test certificate, {path}, expires on 2026-12-07 06:00 UTC, in 10 days. {path} "
        f"has been replaced since the start (it now ends on 2028-01-01 06:00 UTC), but the "
        f"certificate in use is the one loaded at the start: restart the server to use the "
        f"new file.")
    (expired,) = check_certificates([pinned], NOW + 11 * DAY)
    assert expired.level == logging.ERROR and "restart the server" in expired.message
    assert pin_in_use([_watched(tmp_path / "none.pem")])[0].in_use is None


def test_listings_mark_what_ends_within_30_days(tmp_path: Path) -> None:
    assert describe_validity(read_validity(_cert(tmp_path / "a", days_left=400)), NOW) == (
        "valid until 2028-01-01 06:00 UTC (400 days left)")
    assert describe_validity(read_validity(_cert(tmp_path / "b", days_left=1)), NOW) == (
        "valid until 2026-11-28 06:00 UTC (1 day left, RENEW SOON)")
    assert describe_validity(read_validity(_cert(tmp_path / "c", days_left=-1)), NOW) == (
        "EXPIRED on 2026-11-26 06:00 UTC")


def test_serve_watches_the_certificates_its_configuration_names(tmp_path: Path) -> None:
    assert watched_certificates(Config()) == []
    config = Config(
        tls=TlsConfig(cert_file="/c/gw.pem", key_file="/c/gw.key", client_ca_file="/c/ca.pem"),
        escrow=EscrowConfig(backend="service", address="h:1", ca_file="/e/ca.crt",
                            cert_file="/e/client.crt", key_file="/e/client.key"))
    watched = watched_certificates(config)
    assert [str(w.path) for w in watched] == ["/c/gw.pem", "/c/ca.pem", "/e/client.crt",
                                               "/e/ca.crt"]
    assert "herald cert selfsigned" in watched[0].renewal
    assert watched[2].renewal == ESCROW_CLIENT_RENEWAL
    assert "herald escrow issue-client" in watched[2].renewal
    assert "herald escrow renew" in watched[3].renewal
    assert "not `herald escrow init`" in watched[3].renewal.lower()


def test_only_an_expired_gateway_certificate_refuses_the_start(tmp_path: Path) -> None:
    def config(cert: Path) -> Config:
        return Config(tls=TlsConfig(cert_file=str(cert), key_file=str(cert.with_name("k"))))

    assert expired_gateway_refusal(config(_cert(tmp_path / "a", days_left=1)), NOW) is None
    expired = _cert(tmp_path / "b", days_left=-1)
    refusal = expired_gateway_refusal(config(expired), NOW)
    assert refusal is not None
    assert f"refusing to serve an expired certificate: {expired}" in refusal
    assert "expired on 2026-11-26 06:00 UTC" in refusal and "herald cert selfsigned" in refusal
    assert expired_gateway_refusal(Config(), NOW) is None
    # Unreadable: left to the TLS setup, which says what is wrong with the file.
    assert expired_gateway_refusal(config(tmp_path / "none.pem"), NOW) is None


async def test_herald_serve_checks_once_a_day_on_its_clock(
    tmp_path: Path, autojump_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="herald.certificates")
    path = _cert(tmp_path, days_left=30.5)
    start = trio.current_time()

    def now() -> datetime.datetime:  # the wall clock moves with Trio's virtual clock
        return NOW + datetime.timedelta(seconds=trio.current_time() - start)

    def days_said() -> list[str]:
        return [r.getMessage().split(", ")[-1].split(".")[0] for r in caplog.records]

    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: watch_certificates([_watched(path)], now=now))
        await trio.sleep(CHECK_INTERVAL_S - 1)
        assert days_said() == []  # no check before a day has passed (the start made its own)
        await trio.sleep(2)
        assert [r.getMessage() for r in caplog.records] == [
            f"certificate_expiry the test certificate, {path}, expires on 2026-12-27 18:00 UTC, "
            f"in 29 days. Renew it with X."]
        await trio.sleep(CHECK_INTERVAL_S)
        assert days_said() == ["in 29 days", "in 28 days"]
        await trio.sleep(29 * CHECK_INTERVAL_S)
        assert len(caplog.records) == 31 and caplog.records[-1].levelname == "ERROR"
        assert "EXPIRED on 2026-12-27 18:00 UTC" in caplog.records[-1].getMessage()
        nursery.cancel_scope.cancel()


def test_a_threaded_server_checks_after_each_wait_until_told_to_stop(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="herald.test")
    path = _cert(tmp_path, days_left=31.5)
    clock = [NOW]
    waits: list[float] = []

    def wait(interval_s: float) -> bool:  # a day passes at each wait; the 4th says "stop"
        waits.append(interval_s)
        clock[0] += datetime.timedelta(seconds=interval_s)
        return len(waits) == 4

    run_daily_checks([_watched(path)], logging.getLogger("herald.test"), wait=wait,
                     now=lambda: clock[0])
    assert waits == [CHECK_INTERVAL_S] * 4
    assert [r.getMessage().split(", in ")[-1] for r in caplog.records] == [
        "29 days. Renew it with X.", "28 days. Renew it with X."]
