"""The dumper's environment is detected once per process, however many threads ask for it
at once, and a detection begun ahead in the background is the one every caller gets."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from tracker import environment


def test_threads_asking_at_once_share_one_detection():
    environment.redetect()
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda _: environment.of(None), range(32)))
    assert all(answer is answers[0] for answer in answers)
    assert answers[0].criu_path is None and answers[0].features == {}


def test_a_detection_begun_ahead_is_awaited_not_repeated():
    before = environment.redetect()
    environment.detect_ahead()          # detected already: nothing begins again
    with ThreadPoolExecutor(max_workers=4) as pool:
        answers = list(pool.map(lambda _: environment.current(), range(8)))
    assert all(answer is before for answer in answers)
    assert environment.redetect() is not before
