import signal

import pytest
from rich.console import Console
from transformers import TrainerControl, TrainerState

from lancy_trl.train.callbacks import GracefulInterrupt


def test_first_ctrl_c_saves_and_stops_at_the_step_boundary_second_aborts():
    interrupt = GracefulInterrupt(Console(quiet=True))
    with interrupt:
        assert signal.getsignal(signal.SIGINT) == interrupt._handle
        control = interrupt.on_step_end(None, TrainerState(global_step=3), TrainerControl())
        assert not control.should_save and not control.should_training_stop
        interrupt._handle(signal.SIGINT, None)
        control = interrupt.on_step_end(None, TrainerState(global_step=3), TrainerControl())
        assert control.should_save and control.should_training_stop
        with pytest.raises(KeyboardInterrupt):
            interrupt._handle(signal.SIGINT, None)
    assert signal.getsignal(signal.SIGINT) != interrupt._handle


def test_a_ctrl_c_landing_inside_the_ranks_agreement_is_kept_for_the_next_step(monkeypatch):
    """Python runs a signal handler when the blocking collective returns: the Ctrl-C arrives after the ranks agreed
    on "no stop". It must stop the run at the next step, not be overwritten by that answer (a run that printed
    "Stopping..." and trained on)."""
    from lancy_trl.scale import distributed

    interrupt = GracefulInterrupt(Console(quiet=True))

    def agree_while_ctrl_c_lands(flag):
        interrupt._handle(signal.SIGINT, None)
        return flag

    with interrupt:
        monkeypatch.setattr(distributed, "agree", agree_while_ctrl_c_lands)
        state = TrainerState(global_step=3)
        assert not interrupt.on_step_end(None, state, TrainerControl()).should_training_stop  # agreed before it
        monkeypatch.setattr(distributed, "agree", lambda flag: flag)
        assert interrupt.on_step_end(None, state, TrainerControl()).should_training_stop  # and kept for this step


def test_ctrl_c_speaks_without_the_locks_a_progress_display_holds(tmp_path):
    """The handler runs in the main thread wherever it was: here inside the console's write (its lock held), while
    the progress display's refresh thread holds the display's lock and waits for the console's. A handler that
    printed through the console waited on that thread forever (here: until its 5-second give-up)."""
    import threading
    import time

    from rich.progress import Progress

    out = open(tmp_path / "out.txt", "w")
    console = Console(file=out, force_terminal=True)
    interrupt = GracefulInterrupt(console)
    with Progress(console=console, auto_refresh=False) as progress, interrupt:
        live, holding = progress.live, threading.Event()

        def refresh_thread():
            with live._lock:  # what rich's refresh thread holds while it waits to write
                holding.set()
                if console._lock.acquire(timeout=5):
                    console._lock.release()

        with console._lock:  # the main thread, interrupted inside the console's write
            thread = threading.Thread(target=refresh_thread)
            thread.start()
            holding.wait()
            start = time.monotonic()
            interrupt._handle(signal.SIGINT, None)
            took = time.monotonic() - start
        thread.join()
    out.close()
    assert interrupt.requested and took < 1, took
    assert "Stopping after this step" in (tmp_path / "out.txt").read_text()


def test_a_checkpoint_every_few_minutes_and_a_log_at_each_checkpoint():
    import time

    from lancy_trl.train.callbacks import SaveEvery, whole_run_loss

    every = SaveEvery(minutes=1)
    control = every.on_step_end(None, None, TrainerControl())
    assert not control.should_save and not control.should_log
    every.last = time.monotonic() - 61  # a minute of training since the last checkpoint
    control = every.on_step_end(None, None, TrainerControl())
    assert control.should_save and control.should_log
    assert not every.on_step_end(None, None, TrainerControl()).should_save  # the clock restarted
    step_save = TrainerControl(should_save=True)  # a --save-steps checkpoint is logged too
    assert every.on_step_end(None, None, step_save).should_log
    assert not SaveEvery(minutes=0).on_step_end(None, None, TrainerControl()).should_save
    # losses logged at steps 1, 2 and 4 (each the mean since the log before), resumed at 4, 2 more steps at 1.0
    history = [{"step": 1, "loss": 4.0}, {"step": 2, "loss": 3.0}, {"step": 4, "loss": 2.0}, {"step": 6, "loss": 1.0}]
    assert whole_run_loss(history, 4, 1.0, 6) == (4.0 + 3.0 + 2 * 2.0 + 2 * 1.0) / 6


def test_a_rank_stopped_by_another_ranks_ctrl_c_takes_its_own_late_copy_without_aborting(monkeypatch):
    """The launcher passes Ctrl-C to one worker after the other. A rank can be stopped by the agreement before its
    own copy arrives: that copy, during the save or after training, is not a second Ctrl-C (it aborted the rank and
    broke the other's collective)."""
    from lancy_trl.scale import distributed

    monkeypatch.setattr(distributed, "agree", lambda flag: True)  # another rank asked
    previous = signal.getsignal(signal.SIGINT)
    during, after = GracefulInterrupt(Console(quiet=True)), GracefulInterrupt(Console(quiet=True))
    with during:
        assert during.on_step_end(None, TrainerState(global_step=3), TrainerControl()).should_training_stop
        during._handle(signal.SIGINT, None)  # the copy lands while the checkpoint saves: not an abort
        with pytest.raises(KeyboardInterrupt):
            during._handle(signal.SIGINT, None)  # a real second Ctrl-C
    assert signal.getsignal(signal.SIGINT) == previous
    with after:
        assert after.on_step_end(None, TrainerState(global_step=3), TrainerControl()).should_training_stop
    signal.raise_signal(signal.SIGINT)  # the copy lands after training: taken quietly, the old handler back
    assert signal.getsignal(signal.SIGINT) == previous
