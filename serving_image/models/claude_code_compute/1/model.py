"""Real-compute model for the default ccs contract, for Triton's Python backend (numpy only).

Where the sample model (models/claude_code) *sleeps* a GPU-like cost, this one computes: a
small decoder block in numpy whose cost is real host computation that grows with the batch.

    token embedding E [V, d]  ->  causal self-attention (one head, Wqkv, Wo) + residual
                              ->  MLP (d -> 4d -> d, ReLU) + residual
                              ->  output projection to V logits (tied: h @ E.T)

V = the output's last dim (50257 for the default contract), d = `d_model` (default 256).
Weights are deterministic (a fixed seed) and generated at load, so nothing is downloaded and
load takes well under a second per instance. The output projection, a [rows, d] x [d, V]
matmul, dominates: at one row it is a matrix-vector product bound by reading E (51 MB at
d=256), at many rows a matrix-matrix product that reads E once for all of them, which is
what batching amortises (on a GPU the same holds, with far larger constants).

All requests of one `execute` call that share a shape are stacked and computed as one batch
(Triton's dynamic batcher only groups requests of equal shape), then split again.

Contract (taken from the config.pbtxt the operator renders): first input, integer, dims [-1]
(token ids) -> first output, float, dims [-1, V]. Row b, position t of the output are the
logits after tokens 0..t of row b; ids are taken modulo V.

Settings, a config.pbtxt `parameters` entry or else the environment of tritonserver:

  d_model   CCS_COMPUTE_D_MODEL   model width (default 256)
  seed      CCS_COMPUTE_SEED      weight seed (default 20240501)

numpy's BLAS threads follow OPENBLAS_NUM_THREADS / OMP_NUM_THREADS of the server process;
pin them (e.g. to 1) so several instances do not oversubscribe the cores.

`Block` needs only numpy: benchmarks and tests import this file to measure or check the
computation in process, without Triton.
"""

import json
import os

import numpy as np

try:
    import triton_python_backend_utils as pb_utils
except ImportError:  # imported outside Triton (benchmarks, tests): only Block is used
    pb_utils = None

DEFAULT_D_MODEL = 256
DEFAULT_SEED = 20240501
DEFAULT_VOCAB = 50257


class Block:
    """One decoder block with tied embedding / output projection, in float32 numpy."""

    def __init__(self, vocab=DEFAULT_VOCAB, d_model=DEFAULT_D_MODEL, seed=DEFAULT_SEED):
        self.vocab = int(vocab)
        self.d_model = d = int(d_model)
        rng = np.random.default_rng(int(seed))

        def weight(*shape, scale):
            return rng.standard_normal(shape, dtype=np.float32) * np.float32(scale)

        self.embedding = weight(self.vocab, d, scale=0.02)
        self.w_qkv = weight(d, 3 * d, scale=d**-0.5)
        self.w_o = weight(d, d, scale=d**-0.5)
        self.w_1 = weight(d, 4 * d, scale=d**-0.5)
        self.w_2 = weight(4 * d, d, scale=(4 * d) ** -0.5)

    @staticmethod
    def _norm(x):
        mean = x.mean(axis=-1, keepdims=True)
        var = x.var(axis=-1, keepdims=True)
        return (x - mean) / np.sqrt(var + np.float32(1e-5))

    def forward(self, ids):
        """ids [batch, seq] (integers) -> logits [batch, seq, vocab] float32."""
        ids = np.asarray(ids)
        if ids.ndim != 2:
            raise ValueError(f"ids must be [batch, seq], got shape {ids.shape}")
        batch, seq = ids.shape
        d = self.d_model
        x = self.embedding[np.mod(ids.astype(np.int64), self.vocab)]  # [B, T, d]
        q, k, v = np.split(self._norm(x) @ self.w_qkv, 3, axis=-1)
        scores = (q @ k.transpose(0, 2, 1)) * np.float32(d**-0.5)  # [B, T, T]
        future = np.triu(np.ones((seq, seq), dtype=bool), 1)
        scores = np.where(future, np.float32(-1e9), scores)
        scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
        scores /= scores.sum(axis=-1, keepdims=True)
        x = x + (scores @ v) @ self.w_o
        x = x + np.maximum(self._norm(x) @ self.w_1, 0) @ self.w_2
        logits = self._norm(x).reshape(batch * seq, d) @ self.embedding.T
        return logits.reshape(batch, seq, self.vocab)


def _param(config, key, env, default):
    value = config.get("parameters", {}).get(key, {}).get("string_value")
    if value is None:
        value = os.environ.get(env, default)
    return int(value)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.max_batch_size = int(config.get("max_batch_size", 0))
        self.input_name = config["input"][0]["name"]
        output = config["output"][0]
        self.output_name = output["name"]
        dims = [int(d) for d in output["dims"]]
        self.output_dtype = pb_utils.triton_string_to_numpy(output["data_type"])
        vocab = dims[-1] if dims and dims[-1] > 0 else DEFAULT_VOCAB
        self.block = Block(
            vocab=vocab,
            d_model=_param(config, "d_model", "CCS_COMPUTE_D_MODEL", DEFAULT_D_MODEL),
            seed=_param(config, "seed", "CCS_COMPUTE_SEED", DEFAULT_SEED),
        )

    def execute(self, requests):
        inputs = [
            pb_utils.get_input_tensor_by_name(r, self.input_name).as_numpy() for r in requests
        ]
        if self.max_batch_size == 0:  # no batch dimension: each request is one row
            inputs = [x.reshape(1, -1) for x in inputs]
        outputs = [None] * len(inputs)
        by_shape = {}
        for index, ids in enumerate(inputs):
            by_shape.setdefault(ids.shape[1:], []).append(index)
        for indices in by_shape.values():
            stacked = np.concatenate([inputs[i] for i in indices], axis=0)
            logits = self.block.forward(stacked)
            start = 0
            for i in indices:
                rows = inputs[i].shape[0]
                outputs[i] = logits[start : start + rows]
                start += rows
        responses = []
        for out in outputs:
            if self.max_batch_size == 0:
                out = out[0]
            tensor = pb_utils.Tensor(
                self.output_name, np.ascontiguousarray(out, dtype=self.output_dtype)
            )
            responses.append(pb_utils.InferenceResponse(output_tensors=[tensor]))
        return responses
