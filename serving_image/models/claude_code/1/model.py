"""Sample model for the default ccs contract, for Triton's Python backend (numpy only).

Contract (taken from the config.pbtxt the operator renders, so renamed tensors work too):
first input, integer, dims [-1] (token ids) -> first output, float, dims [-1, V] with
V = 50257 by default. Row b, position t of the output is a fixed pseudo-random row of a
(64, V) table chosen by `input_ids[b, t] % 64`: deterministic, cheap, input-dependent.

Compute time is simulated to look like a GPU: every executed batch costs a fixed time plus
a small per-item time, and the wait is a sleep (a GPU kernel does not burn host CPU). So a
batch of 32 costs far less than 32 batches of 1, which is exactly why dynamic batching
pays. Environment variables of the tritonserver process set it (milliseconds):

  CCS_SAMPLE_BATCH_COST_MS   fixed cost per executed batch   (default 20)
  CCS_SAMPLE_ITEM_COST_MS    extra cost per batch item        (default 1)
  CCS_SAMPLE_TRACE_FILE      if set, one JSON line per execution is appended:
                             {"t_start", "t_end", "batch", "requests", "instance", "pid",
                              "zero_input"}; tests use it to prove warm-up ran before READY.

A config.pbtxt `parameters` entry with the same key in lower case without the prefix
(`batch_cost_ms`, `item_cost_ms`) overrides the environment for that model.
"""

import json
import os
import time

import numpy as np
import triton_python_backend_utils as pb_utils

TABLE_ROWS = 64


def _param(config, key, env, default):
    value = config.get("parameters", {}).get(key, {}).get("string_value")
    if value is None:
        value = os.environ.get(env, default)
    return float(value)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.max_batch_size = int(config.get("max_batch_size", 0))
        self.input_name = config["input"][0]["name"]
        output = config["output"][0]
        self.output_name = output["name"]
        self.output_dims = [int(d) for d in output["dims"]]
        self.output_dtype = pb_utils.triton_string_to_numpy(output["data_type"])
        self.batch_cost_s = _param(config, "batch_cost_ms", "CCS_SAMPLE_BATCH_COST_MS", 20) / 1e3
        self.item_cost_s = _param(config, "item_cost_ms", "CCS_SAMPLE_ITEM_COST_MS", 1) / 1e3
        self.trace_file = os.environ.get("CCS_SAMPLE_TRACE_FILE") or None
        self.instance = args.get("model_instance_name", "")
        width = self.output_dims[-1] if self.output_dims and self.output_dims[-1] > 0 else 1
        rng = np.random.default_rng(20240501)
        self.table = rng.standard_normal((TABLE_ROWS, width), dtype=np.float32).astype(
            self.output_dtype
        )

    def _output_shape(self, ids):
        # ids: [batch, seq] with batching, [seq] without. Output dims [-1, V]: the -1 is seq.
        seq = ids.shape[-1]
        shape = [seq if d == -1 else d for d in self.output_dims]
        return ([ids.shape[0]] if self.max_batch_size > 0 else []) + shape

    def execute(self, requests):
        t_start = time.time()
        inputs = [
            pb_utils.get_input_tensor_by_name(r, self.input_name).as_numpy() for r in requests
        ]
        items = sum(int(x.shape[0]) if self.max_batch_size > 0 else 1 for x in inputs)
        responses = []
        for ids in inputs:
            rows = self.table[np.asarray(ids, dtype=np.int64) % TABLE_ROWS]
            out = np.ascontiguousarray(
                np.broadcast_to(rows, self._output_shape(ids)), dtype=self.output_dtype
            )
            tensor = pb_utils.Tensor(self.output_name, out)
            responses.append(pb_utils.InferenceResponse(output_tensors=[tensor]))
        # The simulated device time; host work above is counted inside it.
        remaining = self.batch_cost_s + self.item_cost_s * items - (time.time() - t_start)
        if remaining > 0:
            time.sleep(remaining)
        if self.trace_file:
            record = {
                "t_start": t_start,
                "t_end": time.time(),
                "batch": items,
                "requests": len(requests),
                "instance": self.instance,
                "pid": os.getpid(),
                "zero_input": all(not np.any(x) for x in inputs),
            }
            with open(self.trace_file, "a") as trace:
                trace.write(json.dumps(record) + "\n")
        return responses
