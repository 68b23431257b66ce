"""`sfperf compare`, bootstrap spreads, --strict and --exclude-unrun."""

import math
import os

import pytest

from sfperf.catalog import load_catalog
from sfperf.cli import main as sfperf_main
from sfperf.results import compare, uncertainty
from sfperf.results.logs import read_log_root
from sfperf.results.scoring import score_logs
from tests.results.test_bad_logs import good_rows, write_trial

REPO = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
SUBSET_SELF = os.path.join(
  REPO, 'tests', 'data', 'algoperf_v05_subset', 'self_tuning'
)


def _field(tmp_path):
  """Two submissions on fastmri: fast reaches at 200 s, slow at 400 s."""
  root = tmp_path / 'field'
  for study in range(3):
    write_trial(str(root), 'fast', f'study_{study}', 'trial_1', good_rows(1))
    write_trial(str(root), 'slow', f'study_{study}', 'trial_1', good_rows(3))
  return str(root)


def test_variant_is_ranked_inside_the_field(tmp_path):
  field = read_log_root(_field(tmp_path))
  variant_root = tmp_path / 'variant'
  for study in range(3):
    write_trial(
      str(variant_root), 'mine', f'study_{study}', 'trial_1', good_rows(2)
    )
  catalog = load_catalog('v0.6')
  result = compare.compare(
    read_log_root(str(variant_root)),
    [field],
    catalog,
    self_tuning=True,
    reference='slow',
  )
  assert result.ranks == {'fast': 1, 'mine': 2, 'slow': 3}
  assert result.speedups['mine']['fastmri'] == pytest.approx(400 / 300)
  assert result.speedups['fast']['fastmri'] == pytest.approx(2.0)
  # fastmri is the only base workload anyone ran; the others are 'not run'
  # (NaN), not 'not reached', and the geometric mean leaves them out.
  assert math.isnan(result.speedups['mine']['ogbg'])
  assert result.mean_speedups['mine'] == pytest.approx(4 / 3)
  assert 'not run' in compare.markdown(result, self_tuning=True)
  # Scores of the field alone are unchanged by the variant's absence.
  assert set(result.field_alone.scores) == {'fast', 'slow'}


def test_a_variant_named_like_a_field_entry_is_kept_apart(tmp_path):
  field = read_log_root(_field(tmp_path))
  result = compare.compare(
    field, [field], load_catalog('v0.6'), self_tuning=True
  )
  assert set(result.with_variants.scores) == {
    'fast',
    'slow',
    'fast (variant)',
    'slow (variant)',
  }
  assert result.with_variants.scores['fast (variant)'] == pytest.approx(
    result.with_variants.scores['fast']
  )


def test_unknown_reference_is_one_clear_error(tmp_path, capsys):
  field = _field(tmp_path)
  code = sfperf_main(
    [
      'sfperf',
      'compare',
      field,
      '--field',
      field,
      '--reference',
      'nobody',
      '--out',
      str(tmp_path / 'out'),
      '--bootstrap',
      '0',
    ]
  )
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 2 and len(err) == 1 and 'nobody' in err[0]


def test_speedup_convention_for_unreached_targets():
  assert uncertainty.speedup(100.0, 50.0, 1000.0) == 2.0
  assert uncertainty.speedup(math.inf, 500.0, 1001.0) == pytest.approx(2.002)
  assert uncertainty.speedup(math.inf, math.inf, 1001.0) == 1.0


def test_bootstrap_spread_brackets_the_score_and_is_seeded():
  scores = score_logs(read_log_root(SUBSET_SELF), load_catalog('v0.5'))
  first = uncertainty.score_spreads(scores, num_resamples=200, seed=1)
  again = uncertainty.score_spreads(scores, num_resamples=200, seed=1)
  assert first == again
  for name, spread in first.items():
    assert spread.low <= scores.scores[name] + 1e-12
    assert spread.low <= spread.high
  # The subset has every study of fastmri and ogbg: resampling moves the
  # baseline's score (SF is fastest in most resamples).
  assert first['baseline'].high > first['baseline'].low


def test_identical_studies_have_no_spread(tmp_path):
  scores = score_logs(read_log_root(_field(tmp_path)), load_catalog('v0.6'))
  spreads = uncertainty.score_spreads(scores, num_resamples=50)
  assert all(s.low == s.high == s.value for s in spreads.values())


def test_exclude_unrun_changes_only_the_denominator(tmp_path):
  logs = read_log_root(_field(tmp_path))
  catalog = load_catalog('v0.6')
  default = score_logs(logs, catalog)
  excluded = score_logs(
    read_log_root(_field(tmp_path)), catalog, exclude_unrun=True
  )
  # One of nine base workloads run: fastest scores 1/9 by default, 1 alone.
  assert default.scores['fast'] == pytest.approx(1 / 9)
  assert excluded.scores['fast'] == pytest.approx(1.0)
  assert 'finewebedu_lm' in excluded.excluded_workloads
  assert any('finewebedu_lm' in w for w in default.warnings)


def test_strict_fails_on_missing_studies(tmp_path, capsys):
  root = tmp_path / 'logs'
  write_trial(str(root), 'a', 'study_0', 'trial_1', good_rows(1))
  code = sfperf_main(
    [
      'sfperf',
      'score',
      str(root),
      '--self-tuning',
      '--strict',
      '--out',
      str(tmp_path / 'out'),
    ]
  )
  err = capsys.readouterr().err
  assert code == 2 and '1 studies, expected 3' in err


def test_a_name_in_two_field_folders_is_refused(tmp_path):
  first = read_log_root(_field(tmp_path / 'one'))
  second = read_log_root(_field(tmp_path / 'two'))
  with pytest.raises(compare.CompareError, match='in two --field folders'):
    compare.compare(first, [first, second], load_catalog('v0.6'), True)


def test_a_variant_without_catalog_workloads_is_refused(tmp_path):
  field = read_log_root(_field(tmp_path))
  variant_root = tmp_path / 'variant'
  write_trial(
    str(variant_root),
    'mine',
    'study_0',
    'trial_1',
    good_rows(),
    'digits_pytorch',
  )
  with pytest.raises(compare.CompareError, match='cannot be compared'):
    compare.compare(
      read_log_root(str(variant_root)), [field], load_catalog('v0.6'), True
    )


def test_strict_fails_on_workloads_never_run(tmp_path, capsys):
  root = tmp_path / 'logs'
  for study in range(3):
    write_trial(str(root), 'a', f'study_{study}', 'trial_1', good_rows(1))
  code = sfperf_main(
    [
      'sfperf',
      'score',
      str(root),
      '--self-tuning',
      '--strict',
      '--out',
      str(tmp_path / 'out'),
      '--bootstrap',
      '0',
    ]
  )
  assert code == 2 and 'no logs for criteo1tb' in capsys.readouterr().err


@pytest.mark.parametrize('bad', ['-1', '100001', 'many'])
def test_bootstrap_count_is_bounded(tmp_path, bad):
  with pytest.raises(SystemExit):
    sfperf_main(
      [
        'sfperf',
        'score',
        str(tmp_path),
        '--out',
        str(tmp_path / 'o'),
        '--bootstrap',
        bad,
      ]
    )


def test_ruleset_mismatch_is_a_warning(tmp_path):
  from sfperf.results.cli import ruleset_warnings

  scores = score_logs(read_log_root(_field(tmp_path)), load_catalog('v0.6'))
  assert ruleset_warnings(scores, self_tuning=True) == []
  assert 'pass --self-tuning' in ruleset_warnings(scores, False)[0]
