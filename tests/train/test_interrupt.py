"""SIGINT/SIGTERM handling: the first signal is a flag, the second acts at once."""

from __future__ import annotations

import multiprocessing
import os
import signal

import pytest

from lmforge.train.interrupt import StopSignals


def test_first_signal_sets_the_flag_and_handlers_are_restored():
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with StopSignals() as signals:
        signal.raise_signal(signal.SIGTERM)
        assert signals.received == "SIGTERM"
    assert {s: signal.getsignal(s) for s in before} == before


def test_an_ignored_signal_stays_ignored():
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as a background job starts
    try:
        with StopSignals() as signals:
            signal.raise_signal(signal.SIGINT)
            assert signals.received is None
            assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)


def test_second_sigint_raises_keyboard_interrupt_at_once():
    with pytest.raises(KeyboardInterrupt), StopSignals() as signals:
        signal.raise_signal(signal.SIGINT)
        assert signals.received == "SIGINT"
        signal.raise_signal(signal.SIGINT)
        pytest.fail("the second SIGINT did not interrupt")


def _twice_sigterm() -> None:
    with StopSignals():
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)
        os._exit(0)  # not reached: the second SIGTERM ends the process


def test_second_sigterm_ends_the_process():
    proc = multiprocessing.get_context("fork").Process(target=_twice_sigterm)
    proc.start()
    proc.join(30)
    assert proc.exitcode == -signal.SIGTERM
