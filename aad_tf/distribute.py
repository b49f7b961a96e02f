"""Distribution strategies, per-replica input, and which worker writes.

    strategy = create_strategy()                      # all visible GPUs, else one device
    with strategy.scope():
      model = ...                                     # variables mirrored on every replica
    dataset = distribute_batches(strategy, make_batches, global_batch_size=B)
    model.fit(dataset, ...)
    if is_chief(strategy): ...                        # checkpoints, summaries, export

Strategies (`create_strategy`):
  * `TF_CONFIG` naming a cluster of several tasks -> `MultiWorkerMirroredStrategy` (synchronous
    all-reduce over every GPU of every worker, or one CPU per worker).
  * `devices` given -> `MirroredStrategy` over them (`OneDeviceStrategy` for one). Naming more CPUs
    than exist (`cpu:0,cpu:1`) splits the host CPU into logical devices, which only works before
    TensorFlow initialises its runtime.
  * otherwise -> `MirroredStrategy` over all visible GPUs if there are several, else TensorFlow's
    default strategy (one device: the GPU if there is one, else the CPU).

Loss scaling: every loss term is a per-example vector reduced with `aad_tf.losses.average`
(sum / global batch), and Keras optimizers sum gradients over replicas, so the update equals the
one-device update on the whole global batch for every term, Grad-CAM terms included.

Input: `distribute_batches` hands each replica its slice of every global batch, in replica order,
so the examples a step sees do not depend on the number of replicas or workers.

Multi-worker `fit` (keras-team/keras#20585): Keras 3 reduces the step's logs with
`strategy.reduce('MEAN', value, axis=0)` under `MultiWorkerMirroredStrategy`, which fails on the
scalar logs every `train_step` returns ("Invalid reduction dimension 0 for input with 0
dimensions"), and earlier on the nested first batch. `create_strategy` returns
`KerasMultiWorkerMirroredStrategy`, whose `reduce` handles both.

Writing: only the chief writes checkpoints, summaries and exports. Other workers still take part
in every save (saving may need collectives) but write into a scratch directory
(`worker_scratch_dir`) that is deleted afterwards; they restore from the chief's checkpoints, so
the run directory must be on a file system every worker sees.
"""

import contextlib
import json
import os
import re
import shutil
import tempfile
from typing import Callable, Iterator, Optional, Sequence

import keras
import tensorflow as tf
from absl import logging

_DEVICE_RE = re.compile(r'^(?:/?(?:job:\w+/)?(?:replica:\d+/)?(?:task:\d+/)?device:)?/?'
                        r'(cpu|gpu|tpu):(\d+)$', re.IGNORECASE)


def tf_config_cluster_size(environ=None) -> int:
  """Number of tasks in the cluster of `$TF_CONFIG` (0 when unset or empty)."""
  environ = os.environ if environ is None else environ
  raw = environ.get('TF_CONFIG', '')
  if not raw.strip():
    return 0
  try:
    cluster = json.loads(raw).get('cluster', {})
  except (json.JSONDecodeError, AttributeError) as e:
    raise ValueError(f'TF_CONFIG is not a JSON object with a "cluster": {raw!r} ({e}).') from e
  return sum(len(tasks) for name, tasks in cluster.items() if name in ('chief', 'worker'))


def normalize_device(name: str) -> str:
  """'GPU:1', 'gpu:1', '/gpu:1', '/device:GPU:1' -> '/device:GPU:1' (ValueError otherwise)."""
  match = _DEVICE_RE.match(name.strip())
  if not match:
    raise ValueError(f'Cannot parse device {name!r}; expected e.g. GPU:0 or CPU:1.')
  return f'/device:{match.group(1).upper()}:{int(match.group(2))}'


def _ensure_logical_cpus(count: int) -> None:
  """Splits the host CPU into `count` logical devices (only before the runtime starts)."""
  cpu = tf.config.list_physical_devices('CPU')[0]
  current = tf.config.get_logical_device_configuration(cpu)
  if current is not None and len(current) >= count:
    return
  try:
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(count)])
  except RuntimeError as e:
    raise ValueError(
        f'Cannot create {count} logical CPU devices: TensorFlow has already initialised its '
        f'runtime ({e}). Create the strategy before running any TensorFlow op.') from e


def create_strategy(devices: Sequence[str] = ()) -> tf.distribute.Strategy:
  """The strategy for this process (see the module docstring).

  Args:
    devices: device names ('GPU:0', 'cpu:1', ...) to mirror over; empty: all visible GPUs.

  Returns:
    A `tf.distribute.Strategy`; log it with `describe`.

  Raises:
    ValueError: unparsable or unknown devices, devices together with a multi-worker TF_CONFIG,
      or logical CPUs requested after TensorFlow started.
  """
  devices = [normalize_device(d) for d in devices]
  if len(set(devices)) != len(devices):
    raise ValueError(f'Devices repeat: {devices}.')
  if tf_config_cluster_size() > 1:
    if devices:
      raise ValueError('Choose devices with CUDA_VISIBLE_DEVICES under a multi-worker TF_CONFIG; '
                       'MultiWorkerMirroredStrategy uses every local GPU.')
    return KerasMultiWorkerMirroredStrategy()
  if devices:
    cpus = [int(d.rsplit(':', 1)[1]) for d in devices if ':CPU:' in d]
    if cpus and max(cpus) > 0:
      _ensure_logical_cpus(max(cpus) + 1)
    known = {normalize_device(d.name) for d in tf.config.list_logical_devices()
             if d.device_type in ('CPU', 'GPU', 'TPU')}
    missing = [d for d in devices if d not in known]
    if missing:
      raise ValueError(f'Unknown devices {missing}; this host has {sorted(known)}.')
    if len(devices) == 1:
      return tf.distribute.OneDeviceStrategy(devices[0])
    return tf.distribute.MirroredStrategy(devices)
  gpus = [d.name for d in tf.config.list_logical_devices('GPU')]
  if len(gpus) > 1:
    return tf.distribute.MirroredStrategy(gpus)
  return tf.distribute.get_strategy()


def is_multi_worker(strategy: tf.distribute.Strategy) -> bool:
  return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def worker_index(strategy: tf.distribute.Strategy) -> int:
  """This worker's task id (0 without a cluster)."""
  resolver = getattr(strategy, 'cluster_resolver', None) if is_multi_worker(strategy) else None
  return int(resolver.task_id or 0) if resolver is not None else 0


def is_chief(strategy: Optional[tf.distribute.Strategy] = None) -> bool:
  """True for the one process that writes: the 'chief' task, else worker 0, else the only one."""
  strategy = strategy or tf.distribute.get_strategy()
  if not is_multi_worker(strategy):
    return True
  resolver = strategy.cluster_resolver
  task_type = resolver.task_type
  if task_type in (None, 'chief'):
    return True
  has_chief = 'chief' in resolver.cluster_spec().as_dict()
  return task_type == 'worker' and int(resolver.task_id or 0) == 0 and not has_chief


def describe(strategy: tf.distribute.Strategy) -> str:
  """One line for the log: strategy class, replicas, devices, worker."""
  try:
    devices = strategy.extended.worker_devices
  except RuntimeError:  # the default strategy: one device, TensorFlow's choice
    devices = ()
  text = (f'{type(strategy).__name__} with {strategy.num_replicas_in_sync} replica(s)'
          f'{" on " + ", ".join(devices) if devices else ""}')
  if is_multi_worker(strategy):
    text += f' (worker {worker_index(strategy)}, chief={is_chief(strategy)})'
  return text


@contextlib.contextmanager
def worker_scratch_dir(strategy: tf.distribute.Strategy, directory: str) -> Iterator[str]:
  """Yields `directory` on the chief, else a scratch directory removed on exit."""
  if is_chief(strategy):
    yield directory
    return
  scratch = tempfile.mkdtemp(prefix=f'aad_worker{worker_index(strategy)}_')
  try:
    yield scratch
  finally:
    shutil.rmtree(scratch, ignore_errors=True)


def check_global_batch(strategy: tf.distribute.Strategy, global_batch_size: int) -> int:
  """The per-replica batch size; ValueError unless the global batch splits evenly."""
  replicas = strategy.num_replicas_in_sync
  if global_batch_size % replicas:
    raise ValueError(f'The global batch size {global_batch_size} does not split evenly over '
                     f'{replicas} replicas; use a multiple of {replicas}.')
  return global_batch_size // replicas


def replica_slices(dataset: tf.data.Dataset, *, num_replicas: int, first: int,
                   count: int) -> tf.data.Dataset:
  """Splits each global batch into `num_replicas` equal slices and keeps slices [first, first+count).

  Args:
    dataset: elements are tuples of tensors [B, ...] (the global batch).
    num_replicas: replicas in the whole job, R (B must be a multiple of R).
    first: global index of this worker's first replica.
    count: replicas on this worker.

  Returns:
    A dataset of per-replica batches [B / R, ...]: for each global batch, the slices of replicas
    first, first + 1, ..., first + count - 1 in that order.
  """

  def split(*tensors):
    parts = []
    for t in tensors:
      per = tf.shape(t)[0] // num_replicas
      shape = tf.concat([[num_replicas, per], tf.shape(t)[1:]], axis=0)
      parts.append(tf.reshape(t, shape)[first:first + count])
    return tf.data.Dataset.from_tensor_slices(tuple(parts))

  return dataset.flat_map(split)


def _is_default(strategy: tf.distribute.Strategy) -> bool:
  return not tf.distribute.has_strategy() and strategy is tf.distribute.get_strategy()


def distribute_replica_batches(
    strategy: tf.distribute.Strategy,
    make_replica_batches: Callable[[tf.distribute.InputContext], tf.data.Dataset], *,
    global_batch_size: int):
  """Feeds replicas from per-worker datasets of per-replica batches.

  Args:
    strategy: the strategy of the model.
    make_replica_batches: context -> the per-replica batches of this worker's replicas: for each
      step, the batch of each local replica in replica order (local replica k of worker w is
      replica w * R_local + k). Called once per worker; with the default strategy, once with
      a one-replica context (so it yields whole global batches).
    global_batch_size: B, a multiple of the number of replicas.

  Returns:
    What `model.fit` takes.
  """
  check_global_batch(strategy, global_batch_size)
  if _is_default(strategy):
    return make_replica_batches(tf.distribute.InputContext())
  return strategy.distribute_datasets_from_function(make_replica_batches)


def distribute_batches(strategy: tf.distribute.Strategy,
                       make_batches: Callable[[], tf.data.Dataset], *,
                       global_batch_size: int):
  """Feeds each replica its slice of every global batch that `make_batches()` yields.

  Replica r (counted over all workers) gets rows [r * B/R, (r + 1) * B/R) of each batch, so a
  step sees the same examples whatever the number of replicas. Each worker builds the global
  batches itself (cheap for in-memory data; `aad_tf.data.imagenet_train_dataset` instead decodes
  only its own examples, through `distribute_replica_batches`) and keeps its replicas' slices.

  Args:
    strategy: the strategy of the model.
    make_batches: () -> tf.data.Dataset of (x [B, ...], y [B]) global batches.
    global_batch_size: B, a multiple of the number of replicas.

  Returns:
    What `model.fit` takes: a distributed dataset (`make_batches()` for the default strategy).
  """

  def replica_batches(context: tf.distribute.InputContext) -> tf.data.Dataset:
    if context.num_replicas_in_sync == 1:
      return make_batches()
    local = context.num_replicas_in_sync // context.num_input_pipelines
    return replica_slices(make_batches(), num_replicas=context.num_replicas_in_sync,
                          first=context.input_pipeline_id * local, count=local)

  return distribute_replica_batches(strategy, replica_batches,
                                    global_batch_size=global_batch_size)


class KerasMultiWorkerMirroredStrategy(tf.distribute.MultiWorkerMirroredStrategy):
  """MultiWorkerMirroredStrategy whose `reduce` accepts what Keras 3 `fit` passes it.

  Keras 3 `fit` under MultiWorkerMirroredStrategy fails (keras-team/keras#20585) in two calls to
  `strategy.reduce`: once on the first (x, y) batch, a nested structure, before training
  ("Attempt to convert a value (PerReplica...) to a Tensor"), and on every step's logs, scalars
  reduced with axis=0 ("Invalid reduction dimension 0 for input with 0 dimensions"). This
  subclass reduces nested structures element by element and reduces scalars across replicas
  (axis=None), which is what both calls mean. Everything else is the parent strategy.
  """

  def reduce(self, reduce_op, value, axis):
    parent = super()

    def reduce_one(v):
      if axis is not None:
        local = self.experimental_local_results(v)
        if local and getattr(local[0], 'shape', None) is not None and local[0].shape.rank == 0:
          return parent.reduce(reduce_op, v, axis=None)
      return parent.reduce(reduce_op, v, axis=axis)

    return tf.nest.map_structure(reduce_one, value)


def resolve_jit_compile(requested: Optional[bool], strategy: tf.distribute.Strategy,
                        deterministic: bool) -> Optional[bool]:
  """Whether to compile the train step with XLA: only if asked and where it works.

  Args:
    requested: True, False, or None to let Keras decide ('auto': XLA on one GPU; off on CPU,
      under any strategy other than the default one, and under op determinism).
    strategy: the model's strategy.
    deterministic: whether op determinism is on.

  Returns:
    None ('auto'), or the bool to pass as `compile(jit_compile=...)`. A True request is turned
    off, with a log line, under several replicas (Keras's XLA step does not run under
    MirroredStrategy) and under op determinism (Keras refuses XLA there: not every XLA op is
    deterministic). A True request on a machine without a GPU is kept but warned about, once per
    process: XLA is for GPUs, and on a CPU our train steps ran about 7x slower with it (issue 25:
    0.15 against 1.72 steps/s on the quickstart).
  """
  if requested is None or not requested:
    return requested
  if strategy.num_replicas_in_sync > 1:
    logging.warning('jit_compile ignored: XLA does not run with %d replicas.',
                    strategy.num_replicas_in_sync)
    return False
  if deterministic:
    logging.warning('jit_compile ignored: Keras disables XLA under op determinism.')
    return False
  if not tf.config.list_physical_devices('GPU') and not _XLA_ON_CPU_WARNED:
    _XLA_ON_CPU_WARNED.append(True)
    logging.warning('jit_compile on a machine without a GPU: XLA is for GPUs; on a CPU our train '
                    'steps run about 7x slower with it. Leave --jit_compile off here.')
  return True


# Whether resolve_jit_compile has warned about XLA on a CPU (once per process).
_XLA_ON_CPU_WARNED = []


def enable_determinism(seed: int) -> None:
  """Seeds Python, NumPy, TF and Keras, and makes TF ops deterministic (process-wide).

  Op determinism alone does not make an AAD step repeatable: with both AAD terms on (alpha, beta >
  0; second-order Grad-CAM gradients) the compiled step gave different weights in 2 of 5 repeats
  from identical weights and data (TF 2.21, CPU, one thread), and eager execution and either term
  alone did not. In one process, switching Grappler's dependency optimizer off was enough (6 of 6
  repeats identical), but across processes on a loaded machine the first training step of the same
  run still differed between 2 of 4 processes; with the whole Grappler meta-optimizer off, 7 of 7
  repeats in one process and 4 of 4 processes were bit-identical (tools/README.md,
  "Determinism"). So `--deterministic` runs graphs as traced, unoptimised by Grappler: slower
  per step, which a reproducibility check can afford.
  """
  keras.utils.set_random_seed(seed)
  tf.config.experimental.enable_op_determinism()
  tf.config.optimizer.set_experimental_options({'disable_meta_optimizer': True})
