"""Learning-rate schedules of a training run (`TrainConfig.lr_schedule`).

  step:   the initial rate, multiplied by `lr_decay_rate` every `lr_decay_epochs` (1: constant).
  cyclic: one triangle, from 0 up to the initial rate at `peak_fraction` of the run, then down
          to 0 at its last step: the schedule of fast adversarial training (Wong, Rice & Kolter,
          "Fast is better than free", ICLR 2020; Smith's one-cycle policy). It suits short budgets,
          where a constant or step-decayed rate ends training far from a minimum.

A schedule is a function of the optimizer's step only, so a resumed run continues it where the
checkpoint left it (the optimizer's iteration count is checkpointed).
"""

import keras
import tensorflow as tf

SCHEDULES = ('step', 'cyclic')


@keras.saving.register_keras_serializable(package='aad_tf')
class Cyclic(keras.optimizers.schedules.LearningRateSchedule):
  """Piecewise-linear 0 -> `peak` (at `peak_fraction * total_steps`) -> 0 (at `total_steps`)."""

  def __init__(self, peak: float, total_steps: int, peak_fraction: float = 0.4):
    if peak <= 0:
      raise ValueError(f'peak must be positive, got {peak}.')
    if int(total_steps) != total_steps or total_steps < 1:
      raise ValueError(f'total_steps must be a positive integer, got {total_steps}.')
    if not 0.0 < peak_fraction < 1.0:
      raise ValueError(f'peak_fraction must be in (0, 1), got {peak_fraction}.')
    self.peak = float(peak)
    self.total_steps = int(total_steps)
    self.peak_fraction = float(peak_fraction)

  def __call__(self, step):
    # The rate of optimizer step `step` (0-based) is that of the middle of the step's interval,
    # so the first step does not waste its update on a rate of exactly 0.
    t = (tf.cast(step, tf.float32) + 0.5) / self.total_steps
    up = t / self.peak_fraction
    down = (1.0 - t) / (1.0 - self.peak_fraction)
    return self.peak * tf.clip_by_value(tf.minimum(up, down), 0.0, 1.0)

  def get_config(self):
    return {'peak': self.peak, 'total_steps': self.total_steps,
            'peak_fraction': self.peak_fraction}


def learning_rate(name: str, *, initial: float, total_steps: int, steps_per_epoch: int,
                  decay_rate: float = 1.0, decay_epochs: float = 1.0):
  """The learning rate (a float or a LearningRateSchedule) of schedule `name`.

  Args:
    name: one of SCHEDULES.
    initial: the rate at the start ('step') or at the peak ('cyclic').
    total_steps: the run's optimizer steps ('cyclic' ends at 0 there).
    steps_per_epoch: optimizer steps per epoch ('step' decays every decay_epochs of them).
    decay_rate, decay_epochs: the 'step' schedule's factor and period.
  """
  if name == 'cyclic':
    return Cyclic(initial, total_steps)
  if name != 'step':
    raise ValueError(f'lr_schedule must be one of {SCHEDULES}, got {name!r}.')
  if decay_rate == 1.0:
    return initial
  return keras.optimizers.schedules.ExponentialDecay(
      initial, decay_steps=max(1, int(decay_epochs * steps_per_epoch)), decay_rate=decay_rate,
      staircase=True)
