"""Search spaces: both JSON forms, the Halton sequence, errors, trial slices."""

import json
import math
import os
import subprocess
import sys

import pytest

from sfperf.runner import UsageError, cli, run
from sfperf.runner import search_space as ss
from sfperf.runner.loading import REPO_ROOT, load_search_space
from tests.runner.conftest import BASELINE

# AlgoPerf's halton.generate_sequence(3, 3, shuffle_sequence=False) at the
# v0.6 pin (2c90454f), computed with its algoperf/halton.py.
OFFICIAL_SEQUENCE_3X3 = [
  (0.13714606964468423, 0.2739744372653363, 0.28612427728381884),
  (0.8065421801871611, 0.9911667058309517, 0.8300193327833143),
  (0.2569004196958611, 0.23023079535282354, 0.36079632571974196),
]
# Its halton.generate_search(TWO_DIMS, 4), sorted (its order is random).
TWO_DIMS = {
  'learning_rate': {'min': 1e-4, 'max': 1e-2, 'scaling': 'log'},
  'warmup_factor': {'feasible_points': [0.02, 0.05, 0.1]},
}
OFFICIAL_TWO_DIMS_4 = [
  (0.0002887098430981893, 0.05),
  (0.0003531415952537421, 0.02),
  (0.0005641669933578826, 0.05),
  (0.009601374545456929, 0.1),
]

MIXED = {
  'learning_rate': {'min': 1e-4, 'max': 1e-1, 'scaling': 'log'},
  'one_minus_beta1': {'min': 0.02, 'max': 0.2, 'scaling': 'linear'},
  'dropout_rate': {'feasible_points': [0.0, 0.1]},
  'warmup_factor': {'feasible_points': [0.02, 0.05, 0.1]},
}


def _write(tmp_path, content, name='space.json'):
  path = tmp_path / name
  path.write_text(content if isinstance(content, str) else json.dumps(content))
  return str(path)


def _as_dicts(points):
  return [point._asdict() for point in points]


# --- Halton sequence --------------------------------------------------------


def test_halton_sequence_equals_the_official_one_before_its_shuffle():
  assert ss.halton_sequence(3, 3) == OFFICIAL_SEQUENCE_3X3


def test_halton_bases_are_the_official_primes():
  assert ss.halton_bases(3) == [977, 983, 991]
  many = ss.halton_bases(170)  # more than the 166 below 1000 but 997
  assert len(set(many)) == 170 and many == sorted(many)
  assert all(
    all(base % d for d in range(2, math.isqrt(base) + 1)) for base in many
  )
  assert many[-1] > 1000


def test_odd_primes_below():
  assert ss.odd_primes_below(30) == [3, 5, 7, 11, 13, 17, 19, 23, 29]
  assert ss.odd_primes_below(3) == []


# With bases near 1000, a few hundred points differ mostly in their last,
# scrambled digit, so they spread like a random draw without replacement
# from a grid of about 1000 values; the tolerances below are about three
# standard deviations of such a draw.


def test_halton_points_are_spread_over_the_unit_cube():
  points = ss.halton_sequence(64, 2)
  assert all(0.0 <= u < 1.0 for point in points for u in point)
  assert len({point[0] for point in points}) == 64
  for axis in (0, 1):
    counts = [0] * 4
    for point in points:
      counts[int(point[axis] * 4)] += 1
    assert all(abs(count - 16) <= 6 for count in counts), counts


# --- list form --------------------------------------------------------------


def test_list_form_keeps_the_first_points_in_order(tmp_path):
  points = [{'learning_rate': 0.1 * i, 'beta2': 0.9} for i in range(1, 5)]
  path = _write(tmp_path, points)
  assert _as_dicts(load_search_space(path, 3)) == points[:3]
  assert _as_dicts(load_search_space(path, 10)) == points
  # Fields keep the file's order, as the official namedtuple does.
  assert load_search_space(path, 1)[0]._fields == ('learning_rate', 'beta2')


def test_published_schedule_free_space():
  path = os.path.join(
    REPO_ROOT, 'tuning_search_spaces', 'schedule_free_adamw_external.json'
  )
  points = load_search_space(path, 5)
  assert [p.learning_rate for p in points] == [
    0.004,
    0.003,
    0.002,
    0.005,
    0.001,
  ]
  assert [p.beta2 for p in points] == [0.9955] * 3 + [0.62918, 0.9955]
  assert {p.one_minus_beta1 for p in points} == {0.1}
  assert {p.warmup_factor for p in points} == {0.02}
  assert {p.weight_decay for p in points} == {0.08}


# --- dict form --------------------------------------------------------------


def test_dict_form_gives_the_official_point_set(tmp_path):
  points = load_search_space(_write(tmp_path, TWO_DIMS), 4)
  assert sorted(tuple(p) for p in points) == OFFICIAL_TWO_DIMS_4


def test_dict_form_is_deterministic_within_a_process(tmp_path):
  path = _write(tmp_path, MIXED)
  first = _as_dicts(load_search_space(path, 12))
  assert _as_dicts(load_search_space(path, 12)) == first
  # Another path and another layout of the same contents: same order.
  other = _write(tmp_path, json.dumps(MIXED, indent=4), name='copy.json')
  assert _as_dicts(load_search_space(other, 12)) == first


def test_dict_form_is_deterministic_across_processes(tmp_path):
  path = _write(tmp_path, MIXED)
  script = (
    'import json, sys\n'
    'from sfperf.runner.loading import load_search_space\n'
    'points = load_search_space(sys.argv[1], 12)\n'
    'print(json.dumps([p._asdict() for p in points]))\n'
  )
  env = dict(os.environ, PYTHONHASHSEED='12345')
  output = subprocess.run(
    [sys.executable, '-c', script, path],
    cwd=REPO_ROOT,
    env=env,
    capture_output=True,
    text=True,
    check=True,
  ).stdout
  assert json.loads(output) == _as_dicts(load_search_space(path, 12))


def test_dict_form_order_is_seeded_by_contents_and_trial_count():
  points = ss.generate_points(MIXED, 20)
  changed = dict(MIXED, dropout_rate={'feasible_points': [0.0, 0.2]})
  changed_points = ss.generate_points(changed, 20)
  # Same Halton coordinates (same dimensions), but another shuffle.
  assert [p['learning_rate'] for p in changed_points] != [
    p['learning_rate'] for p in points
  ]
  assert sorted(p['learning_rate'] for p in changed_points) == sorted(
    p['learning_rate'] for p in points
  )
  assert ss.shuffle_seed(MIXED, 20) != ss.shuffle_seed(MIXED, 21)


def test_dict_form_points_lie_in_their_dimensions():
  points = ss.generate_points(MIXED, 200)
  assert len(points) == 200
  for point in points:
    assert list(point) == list(MIXED)
    assert 1e-4 <= point['learning_rate'] <= 1e-1
    assert 0.02 <= point['one_minus_beta1'] <= 0.2
    assert point['dropout_rate'] in (0.0, 0.1)
    assert point['warmup_factor'] in (0.02, 0.05, 0.1)
  # Discrete values are drawn uniformly: each one about equally often.
  for name, size in (('dropout_rate', 2), ('warmup_factor', 3)):
    counts = {}
    for point in points:
      counts[point[name]] = counts.get(point[name], 0) + 1
    assert len(counts) == size
    assert all(abs(n - 200 / size) <= 15 for n in counts.values()), counts


def test_log_scaling_is_uniform_in_log_space():
  low, high = 1e-5, 1e-1
  space = {'learning_rate': {'min': low, 'max': high, 'scaling': 'log'}}
  values = sorted(p['learning_rate'] for p in ss.generate_points(space, 400))
  units = sorted(u for (u,) in ss.halton_sequence(400, 1))
  expected = [low * math.exp(u * math.log(high / low)) for u in units]
  assert values == pytest.approx(expected, rel=1e-12)
  # About a quarter of the points in each of the four decades.
  decades = [int(math.log10(value / low)) for value in values]
  assert all(abs(decades.count(d) - 100) <= 20 for d in range(4))

  linear = dict(space, learning_rate=dict(space['learning_rate']))
  linear['learning_rate']['scaling'] = 'linear'
  linear_values = [p['learning_rate'] for p in ss.generate_points(linear, 400)]
  assert sum(v >= 1e-2 for v in linear_values) > 350


def test_min_equal_to_max_is_a_constant():
  space = {'weight_decay': {'min': 0.1, 'max': 0.1, 'scaling': 'log'}}
  assert [p['weight_decay'] for p in ss.generate_points(space, 3)] == [
    pytest.approx(0.1)
  ] * 3


# --- malformed files --------------------------------------------------------


@pytest.mark.parametrize(
  ('content', 'fragments'),
  [
    ('{"learning_rate": ', ['not JSON']),
    ('[]', ['empty']),
    ('3', ['list of points or an object']),
    ('{}', ['no hyperparameters']),
    ('[{"lr": 0.1}, 7]', ['point 1']),
    ('[{"lr": 0.1}, {"lr": 0.2, "wd": 0.1}]', ['point 1', "'wd'"]),
    ('[{"lr": "fast"}, {"lr": null}]', ['point 1.lr', 'None']),
    ('[{"learning-rate": 0.1}]', ["'learning-rate'"]),
    (
      '{"lr": {"min": 0.1, "max": 1.0, "scaling": "log", "step": 2}}',
      ['lr', "'step'"],
    ),
    ('{"lr": {"min": 0.1, "max": 1.0}}', ['lr', "'scaling'"]),
    ('{"lr": {"min": 2.0, "max": 1.0, "scaling": "linear"}}', ['lr', 'min']),
    ('{"lr": {"min": 0.0, "max": 1.0, "scaling": "log"}}', ['lr.min', 'log']),
    ('{"lr": {"min": -1, "max": 1.0, "scaling": "log"}}', ['lr.min', 'log']),
    ('{"lr": {"min": "0.1", "max": 1.0, "scaling": "log"}}', ['lr.min']),
    ('{"lr": {"min": 0.1, "max": true, "scaling": "log"}}', ['lr.max']),
    ('{"lr": {"min": 0.1, "max": 1.0, "scaling": "exp"}}', ['lr.scaling']),
    ('{"lr": {"feasible_points": []}}', ['lr.feasible_points']),
    ('{"lr": {"feasible_points": 0.1}}', ['lr.feasible_points']),
    ('{"lr": {"feasible_points": [0.1, [0.2]]}}', ['lr.feasible_points[1]']),
    ('{"lr": {"feasible_points": [0.1], "min": 0}}', ['lr', "'min'"]),
    ('{"lr": 0.1}', ['lr', 'expected an object']),
  ],
)
def test_malformed_search_space_names_file_and_field(
  tmp_path, content, fragments
):
  path = _write(tmp_path, content)
  with pytest.raises(UsageError) as caught:
    load_search_space(path, 2)
  message = str(caught.value)
  assert path in message
  for fragment in fragments:
    assert fragment in message


def test_missing_file_and_bad_trial_count(tmp_path):
  with pytest.raises(UsageError, match='does not exist'):
    load_search_space(str(tmp_path / 'nope.json'), 1)
  path = _write(tmp_path, TWO_DIMS)
  with pytest.raises(UsageError, match='num_tuning_trials'):
    load_search_space(path, 0)


def test_cli_reports_a_malformed_space_in_one_line(tmp_path, capsys):
  path = _write(tmp_path, {'lr': {'min': 2.0, 'max': 1.0, 'scaling': 'log'}})
  argv = [
    'sfperf run',
    f'--submission_path={BASELINE}',
    '--workload=digits',
    f'--tuning_search_space={path}',
    f'--experiment_dir={tmp_path}',
    '--experiment_name=exp',
  ]
  assert cli.main(argv) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and path in err[0] and 'lr' in err[0]


# --- trials, hparams.json, slices ------------------------------------------


def _run_external(tmp_path, space_path, **kwargs):
  kwargs.setdefault('num_tuning_trials', 3)
  return run(
    BASELINE,
    'digits',
    experiment_dir=str(tmp_path),
    experiment_name='exp',
    tuning_search_space=space_path,
    rng_seed=0,
    max_global_steps=1,
    save_checkpoints=False,
    **kwargs,
  )


def test_existing_hparams_json_overrides_the_sampled_point(tmp_path):
  path = _write(tmp_path, MIXED)
  sampled = ss.generate_points(MIXED, 3)
  trial_dir = tmp_path / 'exp' / 'digits_pytorch' / 'trial_2'
  trial_dir.mkdir(parents=True)
  kept = dict(sampled[1], learning_rate=0.0123)
  (trial_dir / 'hparams.json').write_text(json.dumps(kept))

  results = _run_external(tmp_path, path, resume_last_run=True)
  assert [r.hyperparameters for r in results] == [sampled[0], kept, sampled[2]]
  for index, expected in ((1, sampled[0]), (2, kept), (3, sampled[2])):
    written = trial_dir.parent / f'trial_{index}' / 'hparams.json'
    assert json.loads(written.read_text()) == expected


def test_hparam_slice_runs_only_the_chosen_trials(tmp_path):
  points = [{'learning_rate': 0.1 * i} for i in range(1, 4)]
  path = _write(tmp_path, points)
  results = _run_external(
    tmp_path, path, hparam_start_index=1, hparam_end_index=2
  )
  assert [r.trial_index for r in results] == [2]
  assert results[0].hyperparameters == points[1]
  workload_dir = tmp_path / 'exp' / 'digits_pytorch'
  assert sorted(os.listdir(workload_dir)) == ['trial_2']


def test_hparam_slice_through_the_cli(tmp_path):
  points = [{'learning_rate': 0.1 * i} for i in range(1, 4)]
  path = _write(tmp_path, points)
  argv = [
    'sfperf run',
    f'--submission_path={BASELINE}',
    '--workload=digits',
    f'--tuning_search_space={path}',
    '--num_tuning_trials=3',
    '--hparam_start_index=2',
    f'--experiment_dir={tmp_path}',
    '--experiment_name=exp',
    '--max_global_steps=1',
    '--rng_seed=0',
    '--nosave_checkpoints',
  ]
  assert cli.main(argv) == 0
  assert os.listdir(tmp_path / 'exp' / 'digits_pytorch') == ['trial_3']


@pytest.mark.parametrize(
  ('kwargs', 'fragment'),
  [
    ({'hparam_start_index': 3}, 'select none'),
    ({'hparam_start_index': 2, 'hparam_end_index': 1}, 'select none'),
    ({'hparam_end_index': -1}, 'non-negative'),
    ({'hparam_start_index': 0, 'tuning_ruleset': 'self'}, 'self-tuning'),
  ],
)
def test_bad_hparam_slice(tmp_path, kwargs, fragment):
  path = _write(tmp_path, [{'learning_rate': 0.1}] * 3)
  if kwargs.get('tuning_ruleset') == 'self':
    path = None
  with pytest.raises(UsageError, match=fragment):
    _run_external(tmp_path, path, **kwargs)
  assert not (tmp_path / 'exp').exists()
