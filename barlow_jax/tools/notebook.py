"""Helpers of the Colab notebook (`experiments/colab_demo.ipynb`): the compute dtype for the
accelerator the runtime has.

bfloat16 runs on bf16 units: TPUs, and NVIDIA GPUs of compute capability 8.0 or newer (A100, L4,
H100). Older GPUs (T4 7.5, V100 7.0, P100 6.0) have no bf16 arithmetic units (XLA emulates it,
slower than float32), and float16 would need loss scaling, which the train step does not do: they
compute in float32. CPUs compute in float32 too (bfloat16 is slow on them).
"""

from typing import Any

BF16_MIN_COMPUTE_CAPABILITY = (8, 0)  # NVIDIA Ampere: the first GPUs with bf16 tensor cores.


def choose_dtype(device: Any) -> tuple[str, str]:
  """The `config.model.dtype` for a jax device, and why, in words.

  Args:
    device: a `jax.Device` (`jax.devices()[0]`); read: `platform`, `device_kind` and, on GPUs,
      `compute_capability` (a string such as "7.5").

  Returns:
    ("bfloat16" or "float32", a sentence naming the device and the reason).
  """
  platform = str(getattr(device, "platform", "cpu")).lower()
  kind = str(getattr(device, "device_kind", platform))
  if platform == "tpu":
    return "bfloat16", f"{kind}: TPUs compute in bfloat16 natively"
  if platform in ("gpu", "cuda", "rocm"):
    capability = str(getattr(device, "compute_capability", "") or "")
    try:
      major, minor = (int(p) for p in capability.split(".")[:2])
    except ValueError:
      return "float32", f"{kind}: compute capability unknown ({capability!r}), float32 to be safe"
    if (major, minor) >= BF16_MIN_COMPUTE_CAPABILITY:
      return "bfloat16", f"{kind} (compute capability {capability}) has bf16 tensor cores"
    return (
      "float32",
      f"{kind} (compute capability {capability}) has no bf16 tensor cores (bf16 would be "
      "emulated) and float16 would need loss scaling",
    )
  return "float32", f"{kind}: bfloat16 is slow on CPUs"
