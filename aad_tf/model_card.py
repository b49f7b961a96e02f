"""A model card beside every export: MODEL_CARD.md and a RobustBench-style model_info.json.

Both are made from a run's files, never from flags:

* `config.json` (written by `training.train`): architecture, training recipe, data;
* `robustness.json` (written by `trainers.evaluate`): clean and AutoAttack accuracy, eps, the
  other attacks. Without it, every robust number says "not evaluated" (`NOT_EVALUATED`);
* `eval.json` (the closing evaluation of `trainers.main`), if present, is reported apart, as
  what it is (a few fixed attacks), never as the robustness evaluation.

    model_card.write(model_dir, output_dir)   # -> (MODEL_CARD.md path, model_info.json path)

model_info.json follows RobustBench's model_info files (`name`, `dataset`, `threat_model`,
`eps` as "8/255", `clean_acc` and `autoattack_acc` in percent as strings with two decimals,
`architecture`, `additional_data`, `number_forward_passes`), plus `training`, `data`, `commit`
and where each number came from.
"""

import datetime
import json
import os
import subprocess
from typing import Any, Dict, Optional, Tuple

import tensorflow as tf

from aad_tf import data as data_lib
from aad_tf import files
from aad_tf import models

CARD_NAME = 'MODEL_CARD.md'
INFO_NAME = 'model_info.json'
NOT_EVALUATED = 'not evaluated'
AUTOATTACK = 'autoattack'
# The threat model of every attack in aad_tf (the aad_tf.attacks package).
THREAT_MODEL = 'Linf'

_DEFENSE_NAMES = {'none': 'standard training (no adversarial examples)',
                  'madry': 'Madry et al. PGD adversarial training',
                  'alp': 'adversarial logit pairing (Kannan et al.)',
                  'stepll': 'StepLL adversarial training (Kurakin et al.)',
                  'ensemble': 'ensemble adversarial training (Tramer et al.)',
                  'trades': 'TRADES (Zhang et al.)'}


def read_json(path: str) -> Optional[Dict[str, Any]]:
  """The JSON object in `path`, or None if there is no such file."""
  if not tf.io.gfile.exists(path):
    return None
  with tf.io.gfile.GFile(path) as f:
    return json.load(f)


def code_commit() -> Optional[str]:
  """The git commit of this checkout of aad_tf (with '-dirty' for local changes), or None."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  try:
    commit = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=root, capture_output=True,
                            text=True, timeout=10)
    if commit.returncode:
      return None
    dirty = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no'], cwd=root,
                           capture_output=True, text=True, timeout=10).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return None
  return commit.stdout.strip() + ('-dirty' if dirty else '')


def format_eps(eps: Optional[float]) -> str:
  """eps as RobustBench writes it: '8/255' when it is a whole number of 8-bit levels, else '0.3'."""
  if eps is None:
    return NOT_EVALUATED
  levels = eps * 255
  if eps > 0 and abs(levels - round(levels)) < 1e-6 and abs(eps * 10 - round(eps * 10)) > 1e-9:
    return f'{int(round(levels))}/255'
  return f'{eps:g}'


def format_accuracy(value: Optional[float]) -> str:
  """A fraction as RobustBench's percentage string ('56.17'), or NOT_EVALUATED."""
  return NOT_EVALUATED if value is None else f'{100 * value:.2f}'


def training_recipe(config: Dict[str, Any]) -> Dict[str, Any]:
  """The training recipe of a config.json, as plain fields and one summary line."""
  defense = config['defense']
  attack = defense['attack']
  name = defense['defense']
  steps = config.get('train_steps')
  budget = (f'{steps} steps' if steps is not None else f'{config["epochs"]:g} epochs')
  parts = [_DEFENSE_NAMES.get(name, name)]
  if name != 'none':
    parts.append(f'training attack PGD-{attack["num_steps"]} x {attack["step_size"]:.4g} at eps '
                 f'{format_eps(attack["eps"])}'
                 f'{", random start" if attack.get("random_init") else ""}')
  hparams = defense.get('hparams') or defense  # flat in config.json before issue 16
  if name == 'alp':
    parts.append(f'logit-pairing weight {hparams["alp_weight"]:g}')
  if name == 'trades':
    parts.append(f'TRADES beta {hparams["trades_beta"]:g}')
  if defense['aad']:
    parts.append(f'+ AAD (alpha {defense["alpha"]:g}, beta {defense["beta"]:g}, kappa '
                 f'{defense["kappa"]})')
  parts.append(f'{config["optimizer"]} lr {config["learning_rate"]:g}, batch '
               f'{config["batch_size"]}, {budget}, augmentation {config.get("augment") or "none"}, '
               f'seed {config["seed"]}')
  return {'summary': '; '.join(parts), 'defense': name, 'aad': bool(defense['aad']),
          'alpha': defense['alpha'], 'beta': defense['beta'], 'kappa': defense['kappa'],
          'attack': attack, 'optimizer': config['optimizer'],
          'learning_rate': config['learning_rate'], 'batch_size': config['batch_size'],
          'train_steps': steps, 'epochs': config['epochs'], 'augment': config.get('augment'),
          'seed': config['seed'], 'mixed_precision': config.get('mixed_precision', False),
          # What the weights were trained in, and what the export and evaluation compute in.
          'training_precision': training_precision(config.get('mixed_precision', False)),
          'precision': 'float32'}


def training_precision(recorded) -> str:
  """config.json's mixed_precision as 'float32' or 'bfloat16' (older runs recorded a bool)."""
  return 'bfloat16' if recorded in (True, 'bfloat16', 'true') else 'float32'


def _autoattack_version(robustness: Dict[str, Any]) -> Optional[str]:
  """The AutoAttack version string of a robustness.json: top level, its attack's settings, or
  its `versions`."""
  settings = (robustness.get('attacks') or {}).get(AUTOATTACK)
  version = (robustness.get('autoattack_version') or
             (settings.get('version') if isinstance(settings, dict) else None) or
             (robustness.get('versions') or {}).get(AUTOATTACK))
  return str(version) if version else None


def model_info(model_dir: str, *, commit: Optional[str] = None) -> Dict[str, Any]:
  """The RobustBench-style model_info of the run in `model_dir`.

  Args:
    model_dir: a training run (config.json; robustness.json and eval.json if written).
    commit: the code's commit; None means `code_commit()`.

  Raises:
    ValueError: `model_dir` holds no config.json.
  """
  config = read_json(os.path.join(model_dir, 'config.json'))
  if config is None:
    raise ValueError(f'{model_dir} holds no config.json: not a training run directory.')
  robustness = read_json(os.path.join(model_dir, 'robustness.json'))
  closing = read_json(os.path.join(model_dir, 'eval.json'))
  info = data_lib.get_info(config['dataset'])
  spec = models.get_spec(config['model'])
  accuracy = (robustness or {}).get('accuracy', {})
  evaluated = robustness is not None
  return {
      'name': os.path.basename(os.path.normpath(model_dir)),
      'dataset': config['dataset'],
      'threat_model': THREAT_MODEL,
      'norm': THREAT_MODEL,
      'eps': format_eps(robustness['eps']) if evaluated else NOT_EVALUATED,
      'clean_acc': format_accuracy(accuracy.get('clean')) if evaluated else NOT_EVALUATED,
      'autoattack_acc': format_accuracy(accuracy.get(AUTOATTACK)) if evaluated else NOT_EVALUATED,
      'autoattack_version': (_autoattack_version(robustness) if evaluated else None),
      'worst_case_acc': format_accuracy(accuracy.get('worst_case')) if evaluated
                        else NOT_EVALUATED,
      'robustness': ({'source': 'robustness.json', 'num_examples': robustness.get('num_examples'),
                      'first_example': robustness.get('first_example', 0),
                      'accuracy': accuracy, 'seed': robustness.get('seed'),
                      'gradient_masking_suspected': robustness.get(
                          'gradient_masking_suspected')}
                     if evaluated else NOT_EVALUATED),
      'closing_evaluation': ({'source': 'eval.json', 'eps': closing.get('eps'),
                              'num_examples': closing.get('num_examples'),
                              'accuracy': closing.get('accuracy', {})}
                             if closing is not None else None),
      'architecture': config['model'],
      'architecture_description': spec.description,
      'input': {'shape': list(_image_shape(config, info)), 'range': [0.0, 1.0],
                'dtype': 'float32'},
      'num_classes': info.num_classes,
      'training': training_recipe(config),
      'data': {'dataset': config['dataset'], 'train_split': f'train ({info.num_train} images)',
               'eval_split': f'test ({info.num_test} images)', 'source': config.get('data_source'),
               'data_dir': config.get('data_dir'),
               'pretrained_weights': config.get('pretrained_weights')},
      'additional_data': False,
      'number_forward_passes': 1,
      'commit': commit if commit is not None else code_commit(),
      'created': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
  }


def _image_shape(config: Dict[str, Any], info: data_lib.DatasetInfo) -> Tuple[int, int, int]:
  size = config.get('image_size')
  shape = info.image_shape
  return shape if size is None else (size, size, shape[-1])


def render(info: Dict[str, Any]) -> str:
  """MODEL_CARD.md of a `model_info` dict."""
  training = info['training']
  evaluated = info['robustness'] != NOT_EVALUATED
  lines = [f'# Model card: {info["name"]}', '',
           f'{info["architecture"]} ({info["architecture_description"].rstrip(".")}) trained on '
           f'{info["dataset"]} by aad-tf: {training["summary"]}.', '',
           '## Robustness', '']
  if evaluated:
    robustness = info['robustness']
    version = info['autoattack_version']
    lines += [f'{info["threat_model"]}, eps {info["eps"]}, {robustness["num_examples"]} test '
              f'images from #{robustness["first_example"]} (robustness.json, seed '
              f'{robustness["seed"]}).', '',
              '| metric | accuracy (%) |', '|---|---|',
              f'| clean | {info["clean_acc"]} |',
              f'| AutoAttack{f" ({version})" if version else ""} | {info["autoattack_acc"]} |']
    lines += [f'| {name} | {format_accuracy(value)} |'
              for name, value in sorted(robustness['accuracy'].items())
              if name not in ('clean', AUTOATTACK)]
    if robustness.get('gradient_masking_suspected'):
      lines += ['', 'Gradient masking suspected: see robustness.json diagnostics.']
  else:
    lines += [f'AutoAttack accuracy: {NOT_EVALUATED}. Clean accuracy: {NOT_EVALUATED}. '
              f'The run has no robustness.json; evaluate it with '
              f'`aad-evaluate --model_dir=RUN --attacks=...` and export again to fill this card.']
  closing = info['closing_evaluation']
  if closing:
    accuracies = ', '.join(f'{name} {format_accuracy(value)}'
                           for name, value in sorted(closing['accuracy'].items()))
    lines += ['', f'Closing evaluation of training (eval.json; a few fixed attacks, not a '
                  f'robustness evaluation): eps {format_eps(closing["eps"])}, '
                  f'{closing["num_examples"]} test images: {accuracies} (%).']
  data = info['data']
  lines += ['', '## Training', '', f'- recipe: {training["summary"]}',
            f'- defense: {training["defense"]}, AAD: {"yes" if training["aad"] else "no"}',
            f'- precision: trained in {training["training_precision"]}; the exported model and '
            f'its evaluation compute in {training["precision"]}',
            f'- data: {data["dataset"]}, {data["train_split"]} (source {data["source"]}); no '
            f'additional data'
            + (f'; started from {data["pretrained_weights"]}' if data['pretrained_weights']
               else ''),
            '', '## Use', '',
            f'- input: float32 {info["input"]["shape"]} images in [0, 1] (8-bit pixels / 255); '
            f'output: {info["num_classes"]} logits',
            '- files: the SavedModel (signatures `serving_default`, `attention`) and the .keras '
            'file beside this card',
            f'- code: aad-tf commit {info["commit"] or "unknown"}; card written {info["created"]}',
            '', 'model_info.json holds the same facts in RobustBench\'s model_info layout.', '']
  return '\n'.join(lines)


def write(model_dir: str, output_dir: str, *, commit: Optional[str] = None) -> Tuple[str, str]:
  """Writes MODEL_CARD.md and model_info.json of the run in `model_dir` into `output_dir`.

  Returns:
    (path of MODEL_CARD.md, path of model_info.json).
  """
  info = model_info(model_dir, commit=commit)
  tf.io.gfile.makedirs(output_dir)
  card_path = os.path.join(output_dir, CARD_NAME)
  info_path = os.path.join(output_dir, INFO_NAME)
  for path, text in ((card_path, render(info)),
                     (info_path, json.dumps(info, indent=2, sort_keys=True, default=str) + '\n')):
    files.write_text(path, text)
  return card_path, info_path
