"""Small trainings in a fresh process, for tests that need one (not a test module itself).

Logical CPU devices and TF_CONFIG clusters must be set up before TensorFlow runs its first op, op
determinism is process-wide, and a run killed with SIGKILL must be a process of its own. So
tests/test_distribute.py and tests/test_resume.py run this file:

  python tests/train_worker.py '<json spec>'

Spec keys:
  mode: 'mirrored_step' (one AAD step of a small ResNet9 on the default strategy and on a
    MirroredStrategy over two logical CPUs; writes to `out` the trainable weights before
    (init_one, init_two) and after (one, two), and the batch-norm statistics) or 'train'
    (aad_tf.training.train on a tiny in-memory dataset; writes the final classifier weights to
    `out`).
  out: .npz path written at the end.
  model_dir, train_steps, checkpoint_every, deterministic, devices, sleep (seconds per step, so a
    test can kill the run mid-way): for 'train'.
"""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # pylint: disable=g-import-not-at-top

NUM_TRAIN = 40  # 5 steps of 8 per epoch
BATCH = 8


def tiny_arrays(data_lib, shape=(28, 28, 1)):
  rng = np.random.default_rng(123)
  x = rng.uniform(size=(NUM_TRAIN + 8, *shape)).astype(np.float32)
  y = rng.integers(0, 10, NUM_TRAIN + 8).astype(np.int32)
  return data_lib.Arrays(x_train=x[:NUM_TRAIN], y_train=y[:NUM_TRAIN], x_test=x[NUM_TRAIN:],
                         y_test=y[NUM_TRAIN:])


def weights_dict(model):
  return {f'w{i}': v.numpy() for i, v in enumerate(model.weights)}


def flat(variables):
  return np.concatenate([v.numpy().ravel() for v in variables])


def mirrored_step(spec):
  from aad_tf import distribute  # pylint: disable=g-import-not-at-top
  two = distribute.create_strategy(['cpu:0', 'cpu:1'])  # Before any other TF op.
  import keras  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from aad_tf import defenses, models  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(0)
  x = rng.uniform(size=(BATCH, 32, 32, 3)).astype(np.float32)
  y = rng.integers(0, 10, BATCH).astype(np.int32)
  config = defenses.DefenseConfig(
      defense='madry', aad=True,
      attack=defenses.AttackConfig(eps=8 / 255, step_size=2 / 255, num_steps=2,
                                  random_init=False))
  results = {}
  for name, strategy in (('one', tf.distribute.get_strategy()), ('two', two)):
    keras.utils.set_random_seed(0)
    with strategy.scope():
      classifier = models.get_model('resnet9', input_shape=(32, 32, 3), num_classes=10, width=4)
      model = defenses.AADModel(classifier, 'gradcam', config)
      model.compile(optimizer=keras.optimizers.SGD(spec.get('learning_rate', 0.005)))
      model.optimizer.build(model.trainable_variables)
    results[f'init_{name}'] = flat(classifier.trainable_weights)
    results[f'init_stats_{name}'] = flat(classifier.non_trainable_weights)
    dataset = distribute.distribute_batches(
        strategy, lambda: tf.data.Dataset.from_tensors((x, y)), global_batch_size=BATCH)
    history = model.fit(dataset, epochs=1, steps_per_epoch=1, verbose=0).history
    results[name] = flat(classifier.trainable_weights)
    results[f'stats_{name}'] = flat(classifier.non_trainable_weights)  # BN moving statistics
    results[f'loss_{name}'] = np.array(history['loss'])
    results[f'replicas_{name}'] = np.array(strategy.num_replicas_in_sync)
  np.savez(spec['out'], **results)


class Sleep:
  """A Keras callback slowing each step, so that a test can kill the run mid-way."""

  def __new__(cls, seconds):
    import keras  # pylint: disable=g-import-not-at-top

    class _Sleep(keras.callbacks.Callback):

      def on_train_batch_end(self, batch, logs=None):
        time.sleep(seconds)

    return _Sleep()


def train(spec):
  from aad_tf import distribute  # pylint: disable=g-import-not-at-top
  strategy = distribute.create_strategy(spec.get('devices', []))
  from aad_tf import data as data_lib  # pylint: disable=g-import-not-at-top
  from aad_tf import defenses, training  # pylint: disable=g-import-not-at-top

  config = training.TrainConfig(
      model_dir=spec['model_dir'], dataset='mnist', model='lenet', keep_prob=0.5,
      batch_size=BATCH, train_steps=spec['train_steps'], optimizer='adam', learning_rate=1e-3,
      augment='pad_crop_flip', seed=3,
      defense=defenses.DefenseConfig(
          defense='madry', aad=True,
          attack=defenses.AttackConfig(eps=0.3, step_size=0.1, num_steps=2, random_init=True)),
      checkpoint_every=spec.get('checkpoint_every', 2), keep_checkpoints=10,
      log_every=1, deterministic=spec.get('deterministic', False))
  callbacks = [Sleep(spec['sleep'])] if spec.get('sleep') else []
  model = training.train(config, tiny_arrays(data_lib), callbacks=callbacks, strategy=strategy)
  np.savez(spec['out'], step=model.optimizer.iterations.numpy(),
           chief=distribute.is_chief(strategy), **weights_dict(model.classifier))


if __name__ == '__main__':
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  job = json.loads(sys.argv[1])
  {'mirrored_step': mirrored_step, 'train': train}[job['mode']](job)
