"""The Triton serving image: model loader, sample model, local runner and client.

- `serving_image.loader`: `ccs-model-loader`, the init container that assembles the Triton
  model repository from `spec.model.repository` and the operator's config.pbtxt.
- `serving_image.local`: `LocalTriton`, the real `tritonserver` from PyPI's nvidia-pytriton
  on CPU, for tests, benchmarks and `serving_image/run-local`.
- `serving_image.client`: a tritonclient-based gRPC client with deadlines and retries.
- `serving_image/models/claude_code`: the deterministic Python-backend sample model.
"""

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
SAMPLE_MODEL_DIR = PACKAGE_DIR / "models" / "claude_code"
