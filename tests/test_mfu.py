"""MFU's denominator: the device kind's bf16 peak on accelerators, a measured matmul on CPU,
loop.peak_flops where set; and the console line names which."""

import types

import jax
import pytest

from configs import devices, topologies
from jaxgpt import metrics


@pytest.mark.parametrize(
  'kind, peak',
  [
    ('TPU v5 lite', 197e12),
    ('TPU v5', 459e12),
    ('TPU v5p', 459e12),
    ('TPU v4', 275e12),
    ('TPU v6 lite', 918e12),
    ('NVIDIA H100 80GB HBM3', 989e12),
    ('NVIDIA H100 PCIe', 756e12),  # the longer key wins over 'NVIDIA H100'
    ('NVIDIA A100-SXM4-80GB', 312e12),
    ('NVIDIA L4', 121e12),
    ('NVIDIA L40S', 362e12),  # not 'NVIDIA L4'
    ('NVIDIA GeForce RTX 4090', 0.0),
    ('cpu', 0.0),
  ],
)
def test_bf16_peak_by_device_kind(kind, peak):
  assert devices.bf16_peak(kind) == peak


def test_topologies_take_their_peaks_from_the_device_table():
  assert topologies.parse('v5e-8')[4] == devices.BF16_PEAK['TPU v5 lite']
  assert topologies.parse('v5p-64')[4] == devices.BF16_PEAK['TPU v5p']


def _device(platform, kind):
  # A jax.Device's two fields that the choice reads (there is no TPU here to ask).
  return types.SimpleNamespace(platform=platform, device_kind=kind)


def test_accelerators_use_their_bf16_peak_and_cpu_measures():
  assert metrics.peak_flops(0.0, _device('tpu', 'TPU v5 lite')) == (197e12, 'bf16')
  assert metrics.peak_flops(0.0, _device('gpu', 'NVIDIA H200')) == (989e12, 'bf16')
  peak, kind = metrics.peak_flops(0.0, jax.devices()[0])
  assert kind == 'measured' and 1e8 < peak < 1e14
  assert metrics.peak_flops(5e12, _device('tpu', 'TPU v5 lite')) == (5e12, 'set')


def test_an_unknown_accelerator_falls_back_to_measuring_and_says_so(caplog):
  peak, kind = metrics.peak_flops(0.0, _device('gpu', 'NVIDIA GeForce RTX 4090'))
  assert kind == 'measured' and peak > 0
  assert "no bf16 peak for device kind 'NVIDIA GeForce RTX 4090'" in caplog.text


def test_the_log_line_says_what_mfu_is_a_fraction_of():
  v = {'loss': 2.0, 'lr': 1e-3, 'grad_norm': 0.5, 'tokens_per_s': 1000.0, 'mfu': 0.4, 'eta_s': 60}
  assert 'mfu 40.0% of bf16 peak |' in metrics.log_line(10, 100, v, 'bf16')
  assert 'mfu 40.0% of measured peak |' in metrics.log_line(10, 100, v, 'measured')
  assert 'mfu 40.0% of set peak |' in metrics.log_line(10, 100, v, 'set')
