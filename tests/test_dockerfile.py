"""Static checks of the Dockerfile (no Docker engine runs on CI machines)."""

import os
import re

REPO = os.path.dirname(os.path.dirname(__file__))


def _dockerfile() -> str:
  with open(os.path.join(REPO, 'Dockerfile'), encoding='utf-8') as f:
    return f.read()


def test_algoperf_is_pinned_to_full_commits():
  text = _dockerfile()
  pins = dict(re.findall(r'(v0\.[56])\) commit=([0-9a-f]{40})', text))
  assert pins == {
    'v0.6': '2c90454fc05d5bdf3598b0c7651e611f132a7060',
    'v0.5': '4b01ee64c30dec442dd111abe31d40d80820fc70',
  }


def test_framework_is_a_build_argument_with_a_valid_default():
  text = _dockerfile()
  assert re.search(r'^ARG framework=(pytorch|jax)$', text, re.M)
  assert 'pytorch) extras=' in text and 'jax) extras=' in text


def test_project_is_installed_without_overriding_algoperf_pins():
  # AlgoPerf's torch/jax versions are the benchmark's; our pyproject pins
  # torch for the CPU machines and must not replace them in the image.
  assert 'pip install --no-deps -e /sfperf' in _dockerfile()


def test_dockerignore_keeps_local_state_out():
  with open(os.path.join(REPO, '.dockerignore'), encoding='utf-8') as f:
    ignored = f.read().split()
  assert {'.venv', '.git', 'demo_out'} <= set(ignored)


def test_the_image_has_the_compilers_the_cpu_kernels_need():
  assert re.search(r'apt-get install[^&]*\bbuild-essential\b', _dockerfile())
