"""Peak dense bfloat16 FLOP/s per jax device, by `jax.Device.device_kind`: what MFU is
measured against on accelerators (on CPU, a float32 matmul measured at start-up).

A TPU v4 or v5p device is a whole chip (its two TensorCores fused, "megacore"); v5e and
v6e chips have one core. GPU figures are the dense tensor-core rates (without sparsity)
of the SXM parts unless the kind names another form. Sources: the Cloud TPU system
architecture pages and NVIDIA's data sheets.
"""

BF16_PEAK = {
  'TPU v4': 275e12,
  'TPU v5 lite': 197e12,  # v5e
  'TPU v5e': 197e12,
  'TPU v5': 459e12,  # v5p
  'TPU v5p': 459e12,
  'TPU v6 lite': 918e12,  # v6e (Trillium)
  'TPU v6e': 918e12,
  'NVIDIA A100': 312e12,
  'NVIDIA H100': 989e12,
  'NVIDIA H100 PCIe': 756e12,
  'NVIDIA H100 NVL': 835e12,
  'NVIDIA H200': 989e12,
  'NVIDIA GH200': 989e12,
  'NVIDIA B200': 2250e12,
  'NVIDIA L4': 121e12,
  'NVIDIA L40S': 362e12,
}


def bf16_peak(device_kind: str) -> float:
  """The table's peak for a device kind, 0.0 where it has none. A key matches the kind
  itself or its start up to a space or dash ('NVIDIA A100' matches 'NVIDIA A100-SXM4-80GB'
  but 'NVIDIA L4' not 'NVIDIA L40S'); the longest match wins."""
  matches = [
    key for key in BF16_PEAK if device_kind == key or device_kind.startswith((key + ' ', key + '-'))
  ]
  return BF16_PEAK[max(matches, key=len)] if matches else 0.0
