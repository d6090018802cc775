"""Given what EM reports poll after poll, the service notifies each transition once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from failover_poller.em_source import SessionProblem
from failover_poller.service import PollService
from tests.fakes import FakeChannel, FakeClock, FakeSource, FakeStateStore, load_session
from veeam_em.errors import EmAuthenticationError, EmNotFoundError, EmResponseError, EmTlsError

HOST = "em01.example.test:9398"
FIRST_POLL = datetime(2025, 3, 10, 20, 30, tzinfo=UTC)
WORKING = "failover-session-working.xml"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(FIRST_POLL)


@pytest.fixture
def source() -> FakeSource:
    return FakeSource()


@pytest.fixture
def store() -> FakeStateStore:
    return FakeStateStore()


@pytest.fixture
def channels() -> tuple[FakeChannel, FakeChannel]:
    return FakeChannel("sns"), FakeChannel("eventbridge")


def service(
    source: FakeSource,
    store: FakeStateStore,
    channels: tuple[FakeChannel, ...],
    clock: FakeClock,
    watched: tuple[str, ...] = (),
) -> PollService:
    return PollService(
        source,
        store,  # type: ignore[arg-type]
        channels,
        em_host=HOST,
        watched_ids=watched,
        first_sight_lookback=timedelta(minutes=15),
        clock=clock,
    )


def ended(minutes_after_first_poll: float, result: str = "Success") -> dict[str, object]:
    end = FIRST_POLL + timedelta(minutes=minutes_after_first_poll)
    return {"state": "Stopped", "result": result, "end_time": end, "progress": 100}


def test_running_then_finished_notifies_once_per_channel(source, store, channels, clock) -> None:
    poller = service(source, store, channels, clock)
    source.answer(load_session(WORKING))
    source.answer(load_session(WORKING, **ended(1)))
    source.answer(load_session(WORKING, **ended(1)))

    first, second, third = poller.poll(), poller.poll(), poller.poll()

    assert (first.notifications, second.notifications, third.notifications) == (0, 1, 0)
    for channel in channels:
        assert [n.outcome for n in channel.published] == ["finished"]
        assert channel.published[0].detail["result"] == "Success"


def test_failed_result_is_a_failed_notification(source, store, channels, clock) -> None:
    poller = service(source, store, channels, clock)
    source.answer(load_session(WORKING))
    source.answer(load_session(WORKING, **ended(1, "Failed"), failure_message="2 of 2 VMs failed"))

    poller.poll()
    poller.poll()

    sns, events = channels
    assert sns.published[0].attributes["event_type"] == "failover.failed"
    assert sns.published[0].subject.endswith("FAILED")
    assert "Result:              Failed" in sns.published[0].message
    assert events.published[0].detail_type == "Cloud Failover Session Failed"


@pytest.mark.parametrize(
    ("state", "result"),
    [("Working", "None"), ("Stopping", "None"), ("Pausing", "None"), ("Stopped", "None")],
)
def test_anything_short_of_a_final_result_is_running(
    source, store, channels, clock, state, result
) -> None:
    poller = service(source, store, channels, clock)
    source.answer(load_session(WORKING, state=state, result=result))

    report = poller.poll()

    assert report.notifications == 0
    assert all(not channel.published for channel in channels)


def test_first_sight_of_an_old_finished_session_is_history(source, store, channels, clock) -> None:
    poller = service(source, store, channels, clock)
    source.answer(load_session(WORKING, **ended(-60)))

    report = poller.poll()

    assert report.notifications == 0
    assert report.sessions_changed == 1


def test_first_sight_of_a_session_ended_since_deployment_is_news(
    source, store, channels, clock
) -> None:
    poller = service(source, store, channels, clock)
    source.answer(load_session(WORKING, **ended(-5)))

    report = poller.poll()

    assert report.notifications == 1


def test_a_watched_session_is_news_however_old(source, store, channels, clock) -> None:
    session = load_session(WORKING, **ended(-60 * 24 * 20))
    poller = service(source, store, channels, clock, watched=(session.id,))
    source.answer(session)

    report = poller.poll()

    assert report.notifications == 1
    assert source.calls[0][0] == (session.id,)


def test_unchanged_session_is_not_written_again(source, store, channels, clock) -> None:
    poller = service(source, store, channels, clock)
    source.answer(load_session(WORKING))
    source.answer(load_session(WORKING))

    poller.poll()
    writes_after_first = store.writes
    poller.poll()

    assert store.writes == writes_after_first == 1


def test_em_failure_is_reported_not_raised_and_state_untouched(
    source, store, channels, clock
) -> None:
    poller = service(source, store, channels, clock)
    source.fail(EmTlsError(HOST, "certificate verify failed: self-signed certificate"))

    report = poller.poll()

    assert not report.ok
    assert report.failure == "tls"
    assert HOST in (report.error or "")
    assert store.items == {}


def test_authentication_failure_has_its_own_kind(source, store, channels, clock) -> None:
    poller = service(source, store, channels, clock)
    source.fail(EmAuthenticationError(HOST, "EM refused the user name or password (401)"))

    assert poller.poll().failure == "authentication"


def test_one_unreadable_session_does_not_stop_the_others(source, store, channels, clock) -> None:
    poller = service(source, store, channels, clock)
    broken = EmResponseError("https://em/x", "a Progress from 0 to 100", "-5", session_id="bad")
    source.answer(load_session(WORKING, **ended(1)), problems=[SessionProblem("bad", broken)])

    report = poller.poll()

    assert report.session_errors == 1
    assert report.notifications == 1
    assert ("em01.example.test:9398", "bad") not in store.items


def test_a_watched_session_that_is_gone_is_counted_not_notified(
    source, store, channels, clock
) -> None:
    missing = "8f0e4a43-2b1d-4c3e-9f5a-6b7c8d9e0f1a"
    poller = service(source, store, channels, clock, watched=(missing,))
    gone = EmNotFoundError(HOST, "GET", "/api/cloud/failoverSessions/x", 404, "not found")
    source.answer(problems=[SessionProblem(missing, gone, gone=True)])

    report = poller.poll()

    assert report.sessions_gone == 1
    assert all(not channel.published for channel in channels)


def test_failed_publish_waits_in_the_outbox_and_is_retried_on_that_channel_only(
    source, store, channels, clock
) -> None:
    sns, events = channels
    events.failures = 1
    poller = service(source, store, channels, clock)
    source.answer(load_session(WORKING))
    source.answer(load_session(WORKING, **ended(1)))
    source.answer(load_session(WORKING, **ended(1)))

    poller.poll()
    clock.advance(minutes=1)
    failing = poller.poll()
    clock.advance(minutes=1)
    retrying = poller.poll()

    assert failing.publish_failures == 1
    assert retrying.retried == 1
    assert len(sns.published) == 1
    assert len(events.published) == 1
    assert store.pending(HOST, 10) == []


def test_a_claim_lost_to_another_invocation_is_not_published(
    source, store, channels, clock
) -> None:
    poller = service(source, store, channels, clock)
    rival = service(FakeSource(), store, (FakeChannel("sns"), FakeChannel("eventbridge")), clock)
    session = load_session(WORKING, **ended(1))
    source.answer(load_session(WORKING))
    poller.poll()

    # The rival reads the same stored state and writes first.
    rival._source.answer(session)  # type: ignore[attr-defined]
    rival.poll()
    source.answer(session)
    report = poller.poll()

    assert report.notifications == 0
    assert all(not channel.published for channel in channels)


def test_discovery_asks_from_the_last_successful_poll(source, store, channels, clock) -> None:
    poller = service(source, store, channels, clock)
    source.answer()
    source.answer()

    poller.poll()
    clock.advance(minutes=1)
    poller.poll()

    first_since, second_since = source.calls[0][1], source.calls[1][1]
    assert first_since == FIRST_POLL - timedelta(minutes=15) - timedelta(minutes=5)
    assert second_since == FIRST_POLL - timedelta(minutes=5)


def test_out_of_time_stops_before_the_next_session(source, store, channels, clock) -> None:
    poller = service(source, store, channels, clock)
    source.answer(load_session(WORKING, **ended(1)))

    report = poller.poll(remaining_seconds=lambda: 1.0)

    assert report.out_of_time
    assert report.notifications == 0
    assert store.watchers[HOST].last_poll_at is None


def refused() -> EmAuthenticationError:
    return EmAuthenticationError(HOST, "EM refused the user name or password (401)")


def test_repeated_refusals_back_off_and_say_when_the_next_try_is(
    source, store, channels, clock
) -> None:
    poller = service(source, store, channels, clock)
    source.fail(refused())
    source.fail(refused())

    first = poller.poll()
    clock.advance(minutes=1)
    second = poller.poll()
    clock.advance(minutes=1)
    paused = poller.poll()

    assert first.next_attempt_at is None
    assert second.next_attempt_at == "2025-03-10T20:36:00Z"
    assert paused.backing_off
    assert "next attempt at 2025-03-10T20:36:00Z" in (paused.error or "")
    assert len(source.calls) == 2


def test_the_back_off_doubles_up_to_an_hour() -> None:
    from failover_poller.service import logon_back_off

    waits = [logon_back_off(refusals) for refusals in range(1, 9)]

    assert waits[0] is None
    assert [w.total_seconds() / 60 for w in waits[1:] if w] == [5, 10, 20, 40, 60, 60, 60]


def test_a_blind_poller_says_so_once_and_once_again_when_it_sees(
    source, store, channels, clock
) -> None:
    poller = service(source, store, channels, clock)
    unreachable = EmTlsError(HOST, "certificate verify failed: certificate has expired")
    for _ in range(5):
        source.fail(unreachable)
    source.answer()
    source.answer()

    reports = []
    for _ in range(7):
        reports.append(poller.poll())
        clock.advance(minutes=1)

    assert [r.unhealthy for r in reports] == [False, False, True, True, True, False, False]
    for channel in channels:
        assert [n.outcome for n in channel.published] == ["poller.unhealthy", "poller.recovered"]
    unhealthy = channels[0].published[0]
    assert "3 polls in a row" in unhealthy.message
    assert "certificate has expired" in unhealthy.message


def test_a_gone_session_is_reported_once(source, store, channels, clock) -> None:
    missing = "8f0e4a43-2b1d-4c3e-9f5a-6b7c8d9e0f1a"
    poller = service(source, store, channels, clock, watched=(missing,))
    gone = EmNotFoundError(HOST, "GET", "/api/cloud/failoverSessions/x", 404, "not found")
    source.answer(problems=[SessionProblem(missing, gone, gone=True)])
    source.answer(problems=[SessionProblem(missing, gone, gone=True)])

    first, second = poller.poll(), poller.poll()

    assert (first.sessions_gone, second.sessions_gone) == (1, 0)
    assert first.ok and second.ok


class CrashingChannel(FakeChannel):
    """A channel whose invocation dies (a Lambda timeout) in the middle of a publish."""

    def publish_batch(self, entries):  # type: ignore[no-untyped-def]
        if self.failures:
            self.failures -= 1
            raise TimeoutError("Task timed out after 60.00 seconds")
        return super().publish_batch(entries)


def test_a_notification_claimed_by_a_dead_invocation_is_delivered_after_its_lease(
    source, store, clock
) -> None:
    sns, events = FakeChannel("sns"), CrashingChannel("eventbridge", failures=1)
    poller = service(source, store, (sns, events), clock)
    source.answer(load_session(WORKING))
    source.answer(load_session(WORKING, **ended(1)))
    source.answer(load_session(WORKING, **ended(1)))
    source.answer(load_session(WORKING, **ended(1)))
    poller.poll()

    with pytest.raises(TimeoutError):
        poller.poll()
    clock.advance(seconds=60)
    within_lease = poller.poll()
    clock.advance(seconds=90)
    after_lease = poller.poll()

    assert within_lease.retried == 0
    assert after_lease.retried == 1
    assert len(sns.published) == len(events.published) == 1


def test_a_session_unreadable_for_a_while_is_still_notified_when_it_reads_again(
    source, store, channels, clock
) -> None:
    poller = service(source, store, channels, clock)
    broken = EmResponseError("https://em/x", "a Progress from 0 to 100", "-5", session_id="s")
    source.answer(load_session(WORKING))
    source.answer(problems=[SessionProblem("s", broken)])
    source.answer(problems=[SessionProblem("s", broken)])
    source.answer(load_session(WORKING, **ended(2)))

    complete = poller.poll()
    for _ in range(3):
        clock.advance(minutes=6)
        last = poller.poll()

    assert complete.ok
    assert last.notifications == 1
    # Every poll after the complete one still asks from before it.
    assert {since for _, since in source.calls[1:]} == {FIRST_POLL - timedelta(minutes=5)}


def alert_service(source, store, channels, clock, **policy):  # type: ignore[no-untyped-def]
    from failover_poller.alerts import AlertPolicy

    return PollService(
        source,
        store,  # type: ignore[arg-type]
        channels,
        em_host=HOST,
        watched_ids=(),
        first_sight_lookback=timedelta(minutes=15),
        alerts=AlertPolicy(**policy),
        clock=clock,
    )


def kinds(channel: FakeChannel) -> list[str]:
    return [notification.attributes["event_type"] for notification in channel.published]


def test_a_session_running_too_long_is_stuck_once_and_still_finishes(
    source, store, channels, clock
) -> None:
    poller = alert_service(source, store, channels, clock, stuck_after=timedelta(minutes=30))
    for _ in range(3):
        source.answer(load_session(WORKING))
    source.answer(load_session(WORKING, **ended(60)))

    for _ in range(4):
        poller.poll()
        clock.advance(minutes=20)

    for channel in channels:
        assert kinds(channel) == ["failover.stuck", "failover.finished"]


def test_a_session_whose_progress_does_not_move_is_stuck(source, store, channels, clock) -> None:
    poller = alert_service(
        source, store, channels, clock, stuck_without_progress=timedelta(minutes=10)
    )
    source.answer(load_session(WORKING, progress=40))
    source.answer(load_session(WORKING, progress=40))
    source.answer(load_session(WORKING, progress=40))

    poller.poll()
    clock.advance(minutes=5)
    early = poller.poll()
    clock.advance(minutes=6)
    late = poller.poll()

    assert (early.alerts, late.alerts) == (0, 1)
    assert channels[1].published[0].detail["stuck"]["reason"] == "no-progress"


def test_started_alerts_only_when_asked_for(source, store, channels, clock) -> None:
    quiet = alert_service(source, store, channels, clock)
    source.answer(load_session(WORKING))
    quiet.poll()
    assert kinds(channels[0]) == []

    loud = alert_service(FakeSource(), FakeStateStore(), channels, clock, notify_started=True)
    loud._source.answer(load_session(WORKING))  # type: ignore[attr-defined]
    loud.poll()
    assert kinds(channels[0]) == ["failover.started"]


def test_a_plan_that_failed_and_then_succeeds_has_recovered(source, store, channels, clock) -> None:
    poller = alert_service(source, store, channels, clock)
    failed = load_session(WORKING, **ended(1, "Failed"))
    retry = load_session(
        "failover-session-stopped-success.xml",
        name=failed.name,
        creation_time=FIRST_POLL + timedelta(minutes=2),
        end_time=FIRST_POLL + timedelta(minutes=3),
    )
    source.answer(load_session(WORKING))
    source.answer(failed)
    source.answer(failed, retry)

    for _ in range(3):
        poller.poll()
        clock.advance(minutes=2)

    events = channels[1].published
    assert [n.detail["result"] for n in events] == ["Failed", "Success"]
    assert events[1].detail["recoveredFrom"] == failed.id
    assert "recovered" in events[1].subject.lower()


def test_a_muted_plan_reaches_eventbridge_only_marked_muted(source, store, channels, clock) -> None:
    poller = alert_service(
        source, store, channels, clock, muted_plans=frozenset({"contoso failover plan"})
    )
    source.answer(load_session(WORKING))
    source.answer(load_session(WORKING, **ended(1)))

    poller.poll()
    poller.poll()

    sns, events = channels
    assert sns.published == []
    assert [n.detail["muted"] for n in events.published] == [True]
    assert store.pending(HOST, 10) == []


def test_a_weekly_window_mutes_sns_inside_it_only() -> None:
    from failover_poller.alerts import AlertPolicy, WeeklyWindow

    policy = AlertPolicy(mute_windows=(WeeklyWindow.parse("Sat 22:00-Mon 06:00"),))

    assert policy.muted("Any Plan", datetime(2026, 12, 6, 12, 0, tzinfo=UTC))  # a Sunday
    assert not policy.muted("Any Plan", datetime(2026, 12, 7, 6, 0, tzinfo=UTC))  # Monday 06:00


def test_a_gap_longer_than_em_keeps_sessions_is_told_once(source, store, channels, clock) -> None:
    poller = alert_service(source, store, channels, clock)
    source.answer()
    source.answer()
    source.answer()

    poller.poll()
    clock.advance(days=31)
    poller.poll()
    clock.advance(minutes=1)
    poller.poll()

    assert kinds(channels[0]) == ["monitoring.gap"]


def test_a_recovery_seen_in_the_same_poll_as_the_failure_is_still_a_recovery(
    source, store, channels, clock
) -> None:
    # The EM cut the retry's end to whole seconds, so it reads as ending before the failure.
    poller = alert_service(source, store, channels, clock)
    failed = load_session(WORKING, **ended(3.5, "Failed"))
    retry = load_session(
        "failover-session-stopped-success.xml",
        name=failed.name,
        creation_time=FIRST_POLL + timedelta(minutes=2.9),
        end_time=FIRST_POLL + timedelta(minutes=3),
        state="Stopped",
    )
    source.answer(load_session(WORKING))
    source.answer(retry, failed)

    poller.poll()
    poller.poll()

    events = {n.detail["result"]: n.detail for n in channels[1].published}
    assert set(events) == {"Failed", "Success"}
    assert events["Success"]["recoveredFrom"] == failed.id
    assert events["Failed"]["recoveredFrom"] is None
