"""The fetcher's admission memory (fetcher/admission.py, pure): re-sent admissions, restarts and
the back-off of failed keys."""

from __future__ import annotations

from fetcher.admission import FailureBackoff, failed, succeeded, taken_on, verdict

KEY = "http://h/v.mp4"


def test_a_new_key_and_a_resent_admission() -> None:
    assert verdict(None, "a@1", 10.0) == ""
    rec = taken_on(None, KEY, "a@1", 10.0)
    assert (rec.state, rec.failures) == ("fetching", 0)
    # our own uncommitted message back after a restart: taken on again (its download resumes)
    assert verdict(rec, "a@1", 20.0) == ""
    done = succeeded(rec, 30.0)
    assert verdict(done, "a@1", 40.0) == "duplicate-admission"  # answered already: never twice
    assert verdict(done, "a@2", 40.0) == ""  # a new admission (evicted and hot again)
    assert verdict(done, "", 40.0) == ""  # no admission id: nothing to compare


def test_failed_keys_back_off_exponentially_and_permanent_ones_longest() -> None:
    b = FailureBackoff(base_s=60.0, max_s=600.0)
    rec = failed(taken_on(None, KEY, "a@1", 0.0), 100.0, "origin answered 500", b)
    assert (rec.state, rec.failures, rec.retry_after) == ("failed", 1, 160.0)
    assert verdict(rec, "a@1", 110.0) == "duplicate-admission"
    assert verdict(rec, "a@2", 159.0) == "failed-backoff"
    assert verdict(rec, "a@2", 160.0) == ""
    again = failed(taken_on(rec, KEY, "a@2", 160.0), 200.0, "reset", b)
    assert (again.failures, again.retry_after) == (2, 320.0)  # 60 * 2
    many = again
    for _ in range(5):
        many = failed(taken_on(many, KEY, "", 0.0), 1000.0, "x", b)
    assert many.retry_after == 1600.0  # capped at max_s
    refused = failed(taken_on(None, KEY, "", 0.0), 5.0, "refused by the address policy", b, permanent=True)
    assert refused.retry_after == 605.0
    assert succeeded(again, 400.0).failures == 0
