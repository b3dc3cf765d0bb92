import signal

import pytest
from rich.console import Console
from transformers import TrainerControl

from lancy_trl.train.callbacks import GracefulInterrupt


def test_first_ctrl_c_saves_and_stops_at_the_step_boundary_second_aborts():
    interrupt = GracefulInterrupt(Console(quiet=True))
    with interrupt:
        assert signal.getsignal(signal.SIGINT) == interrupt._handle
        control = interrupt.on_step_end(None, None, TrainerControl())
        assert not control.should_save and not control.should_training_stop
        interrupt._handle(signal.SIGINT, None)
        control = interrupt.on_step_end(None, None, TrainerControl())
        assert control.should_save and control.should_training_stop
        with pytest.raises(KeyboardInterrupt):
            interrupt._handle(signal.SIGINT, None)
    assert signal.getsignal(signal.SIGINT) != interrupt._handle
