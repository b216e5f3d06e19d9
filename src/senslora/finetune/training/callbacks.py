"""The Trainer callbacks of a run: timing and weight checks after each step, checkpoints.

(A method's own callbacks, such as AdaLoRA's, come from its module in `senslora.finetune.methods`.)

- `GuardCallback`: times each step (evaluation and saving excluded), checks the weights after each
  optimizer step, writes a log line at each epoch's end, always evaluates the last step, saves a
  checkpoint at each epoch's end (after its evaluation) and completes each checkpoint Trainer writes
  with its senslora/ state, then removes the older ones;
"""

from __future__ import annotations

import shutil
import time

from transformers import TrainerCallback
from transformers.trainer_utils import IntervalStrategy

from senslora.finetune.run_files.checkpoints import CHECKPOINT_PREFIX, checkpoints
from senslora.finetune.run_files.saving import write_checkpoint_state
from senslora.finetune.training import numeric_health
from senslora.finetune.training.trainer import SensloraTrainerMixin
from senslora.utils.distributed import is_main_process


class GuardCallback(TrainerCallback):
    """Step timing, log lines at the end of each epoch, the last step always evaluated, weights checked."""

    def __init__(self, trainer: SensloraTrainerMixin) -> None:
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        self.trainer.run.clock = time.perf_counter()

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if not args.max_grad_norm or args.max_grad_norm <= 0:
            self.trainer.check_gradients()  # with clipping on, `_clip_grad_norm` checked already

    def on_step_end(self, args, state, control, **kwargs):
        run = self.trainer.run
        now = time.perf_counter()
        run.step_times.append(now - run.clock)
        run.result.train_seconds += now - run.clock
        run.clock = now
        run.result.global_step = state.global_step
        numeric_health.check_weights(run, self.trainer.model, state.global_step)
        end_of_epoch = abs(state.epoch - round(state.epoch)) < 1e-9
        if end_of_epoch:
            control.should_log = True
        if state.global_step >= state.max_steps and args.eval_strategy != IntervalStrategy.EPOCH:
            # the final weights are always evaluated: with evaluation by epoch the epoch's end does it (also
            # when max_steps stops mid-epoch), so forcing it here too would evaluate the last step twice
            control.should_evaluate = True
        return control

    def on_epoch_end(self, args, state, control, **kwargs):
        """A checkpoint at every epoch's end, whatever save_steps says, written after the epoch's evaluation
        (at the step's end it would precede it, and a run resumed from it would lack that evaluation)."""
        control.should_save = True
        return control

    def on_save(self, args, state, control, **kwargs):
        """Complete the checkpoint Trainer just wrote (senslora/ last), then drop the older ones."""
        run = self.trainer.run
        started = time.perf_counter()
        checkpoint = run.run_dir / "checkpoints" / f"{CHECKPOINT_PREFIX}{state.global_step}"
        if is_main_process():
            write_checkpoint_state(checkpoint, self.trainer.model, run)
            for older in checkpoints(run.run_dir):
                if older != checkpoint:
                    shutil.rmtree(older, ignore_errors=True)
        run.clock += time.perf_counter() - started  # saving is not training time
        return control
