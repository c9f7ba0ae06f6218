"""The time limit of fine-tuning (sslseg.finetuning.budget), on its own: measured times in, schedules out.

No training here: the budget only does arithmetic on the times it is given, which is what makes it testable."""

import itertools

import pytest

from sslseg.finetuning.budget import CALIBRATION_STEPS, TimeBudget, rescale_schedule, validation_guess
from sslseg.schedule import Schedule

FRACTIONS = (0.1, 0.1)


def budget(limit=300.0, val_every=250, **options):
    made = TimeBudget(limit=limit, started=0.0, fractions=FRACTIONS, val_every=val_every, **options)
    made.start_window(step=0, now=10.0)  # training starts 10 s after the run (data reading, preprocessing)
    return made


def test_calibration_fixes_the_total_from_the_measured_step_time():
    timer = budget()
    schedule = Schedule.from_fractions(1000, *FRACTIONS, 1e-3)
    assert [step for step in range(1, 40) if timer.estimate_due(step)] == [CALIBRATION_STEPS]
    now = 10.0 + CALIBRATION_STEPS * 2.0  # 2 s per step
    schedule, per_step = timer.rescale(schedule, CALIBRATION_STEPS, now)
    assert per_step == pytest.approx(2.0)
    # the time left (300 - 40 s) at 2 s per step, after the 15 steps done
    assert schedule.total == CALIBRATION_STEPS + 130
    # about six validations over the run from now on, never more often than every calibration
    assert timer.val_every == 145 // 6
    assert budget(limit=3000.0, val_every=100).rescale(Schedule(1000, 0, 0, 1e-2), 15, 40.0)[0].total > 1000


def test_without_a_limit_nothing_is_estimated_or_cut():
    timer = budget(limit=None)
    schedule = Schedule.from_fractions(1000, *FRACTIONS, 1e-3)
    assert not any(timer.estimate_due(step) for step in range(1, 2000))
    assert timer.overrun(schedule, 500, now=1e9) is None
    assert budget(limit=0).limit is None  # 0 means no limit


def test_whole_network_steps_are_timed_afresh_after_unfreezing():
    timer = budget(limit=1000.0)
    schedule = Schedule.from_fractions(200, *FRACTIONS, 1e-3)
    timer.rescale(schedule, CALIBRATION_STEPS, now=10.0 + CALIBRATION_STEPS * 1.0)  # decoder-only: 1 s per step
    unfrozen_at, now = 20, 30.0
    timer.start_window(unfrozen_at, now)
    # the new window is calibrated again after 15 of its own steps (steps 21..34 are not estimate steps)
    assert [s for s in range(unfrozen_at + 1, unfrozen_at + CALIBRATION_STEPS + 1) if timer.estimate_due(s)] == \
        [unfrozen_at + CALIBRATION_STEPS]
    step, now = unfrozen_at + CALIBRATION_STEPS, now + CALIBRATION_STEPS * 3.0  # whole network: 3 s per step
    schedule, per_step = timer.rescale(schedule, step, now)
    assert per_step == pytest.approx(3.0)  # not the 75 s / 35 steps average over both kinds of step
    assert schedule.total == step + int((1000.0 - now) / 3.0)


def test_validation_time_is_excluded_from_the_step_time_and_added_as_its_own_cost():
    # before any validation ran: guessed from the sliding windows (a third of a training step per sample)
    timer = budget(limit=1000.0, val_every=250, validation_windows=12, batch_size=2)
    guess = validation_guess(2.0, windows=12, batch_size=2)
    assert guess == pytest.approx(12 * 2.0 / 2 / 3)
    assert timer.seconds_per_step(CALIBRATION_STEPS, now=10.0 + 30.0) == pytest.approx(2.0 + guess / 250)
    # after two validations of 5 s each (every 20 steps), at 1 s per training step
    timer = budget(limit=1000.0, val_every=20, validation_windows=12, batch_size=2)
    timer.add_validation(5.0)
    timer.add_validation(5.0)
    assert timer.estimate_due(40) and not timer.estimate_due(41)
    assert timer.seconds_per_step(40, now=10.0 + 40 * 1.0 + 10.0) == pytest.approx(1.0 + 5.0 / 20)
    # without validation cases there is no validation cost
    plain = budget(limit=1000.0, val_every=20)
    plain.add_validation(0.0)
    assert plain.seconds_per_step(40, now=50.0) == pytest.approx(1.0)


def test_explicit_steps_cap_the_total():
    capped = budget(limit=10_000.0, step_cap=100)
    schedule, _ = capped.rescale(Schedule.from_fractions(100, *FRACTIONS, 1e-3), CALIBRATION_STEPS, now=25.0)
    assert schedule.total == 100  # the limit would allow ~10 000 steps
    short = budget(limit=100.0, step_cap=100)
    schedule, _ = short.rescale(Schedule.from_fractions(100, *FRACTIONS, 1e-3), CALIBRATION_STEPS, now=40.0)
    assert schedule.total == CALIBRATION_STEPS + 30  # the limit binds first: 60 s left at 2 s per step


def test_a_run_past_one_point_one_times_its_limit_is_cut_short():
    timer = budget(limit=100.0)
    schedule = Schedule.from_fractions(1000, *FRACTIONS, 1e-3)  # poly from step 200
    assert timer.overrun(schedule, 500, now=109.0) is None  # within 1.1x: carry on
    cut = timer.overrun(schedule, 500, now=111.0)
    assert cut.total == 500 and (cut.decoder_steps, cut.full_steps) == (100, 100)  # ends now, warm-ups kept
    assert timer.overrun(schedule, 1000, now=500.0) is None  # finished runs are left alone
    # still in the whole-network warm-up: that warm-up ends after the current step, and the run no later than
    # one step after the old warm-up's end (its lr still decays to zero)
    cut = timer.overrun(schedule, 150, now=111.0)
    assert (cut.decoder_steps, cut.full_steps, cut.total) == (100, 51, schedule.poly_start + 1)
    assert cut.phase(150) == "full_warmup" and cut.lr(cut.total - 1) < cut.max_lr / 10


@pytest.mark.parametrize("step", [0, 5, 99, 100, 150, 199, 200, 600])
def test_rescaling_keeps_the_phase_of_the_current_step_and_the_warmups_behind_it(step):
    schedule = Schedule.from_fractions(1000, *FRACTIONS, 1e-3)  # 100 + 100 warm-up steps
    for new_total in (step + 1, step + 7, 300, 5000):
        rescaled = rescale_schedule(schedule, new_total, step, FRACTIONS)
        assert rescaled.phase(step) == schedule.phase(step)
        assert rescaled.total >= max(step, rescaled.poly_start + 1) and rescaled.max_lr == schedule.max_lr
        if step >= 100:  # the decoder warm-up is behind: unchanged
            assert rescaled.decoder_steps == 100
        if step >= 200:  # both warm-ups behind: unchanged, only the poly phase moves
            assert (rescaled.decoder_steps, rescaled.full_steps) == (100, 100)
            assert rescaled.total == max(new_total, step)
        if step < 100 and new_total == 5000:  # boundaries ahead follow the preset's fractions
            assert (rescaled.decoder_steps, rescaled.full_steps) == (500, 500)


def test_rescaling_a_schedule_without_warmups_keeps_it_without():
    for step, total in itertools.product((0, 10, 99), (1, 50, 400)):
        rescaled = rescale_schedule(Schedule(100, 0, 0, 1e-2), total, step, (0.0, 0.0))
        assert (rescaled.decoder_steps, rescaled.full_steps) == (0, 0) and rescaled.total == max(total, step, 1)
