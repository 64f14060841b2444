"""Export the sample model as TorchScript for Triton's `pytorch_libtorch` platform.

    python serving_image/export_torchscript.py --out /path/to/repo/claude_code
    # -> /path/to/repo/claude_code/1/model.pt, for spec.model.repository of a
    #    pytorch_libtorch ccs (samples/claude-code.yaml's contract)

Same contract and same numbers as the Python-backend sample model
(serving_image/models/claude_code/1/model.py): input `input_ids` INT32 [batch, seq] ->
output `output` FP32 [batch, seq, 50257], row = TABLE[input_ids % 64] with the same seeded
table, so both backends answer identically. Triton's libtorch backend binds the input by
the forward() argument name (`input_ids`) and the single output by config order, so the
operator's config.pbtxt needs no `INPUT__0`-style names. Unlike the Python sample it has
no simulated device time: on a GPU it costs what the gather costs.

torch is not a dependency of this project: without it the script says so and exits 3.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

TABLE_ROWS = 64
TABLE_SEED = 20240501  # the sample model's seed
VOCAB = 50257


def reference_table(vocab: int = VOCAB) -> np.ndarray:
    """The (64, vocab) float32 table both sample models index (same as model.py)."""
    rng = np.random.default_rng(TABLE_SEED)
    return rng.standard_normal((TABLE_ROWS, vocab), dtype=np.float32).astype(np.float32)


def reference_output(input_ids: np.ndarray, vocab: int = VOCAB) -> np.ndarray:
    return reference_table(vocab)[np.asarray(input_ids, dtype=np.int64) % TABLE_ROWS]


def export(out: Path, vocab: int = VOCAB, version: int = 1) -> Path:
    """Script the model, check it against the numpy reference, save <out>/<version>/model.pt."""
    import torch

    class SampleLM(torch.nn.Module):
        def __init__(self, table: torch.Tensor) -> None:
            super().__init__()
            self.register_buffer("table", table)

        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
            index = torch.remainder(input_ids.to(torch.int64), self.table.shape[0])
            return self.table[index]

    module = torch.jit.script(SampleLM(torch.from_numpy(reference_table(vocab))))
    probe = np.array([[0, 1, 65], [7, 300, 2]], dtype=np.int32)
    got = module(torch.from_numpy(probe)).numpy()
    if got.shape != (2, 3, vocab) or got.dtype != np.float32:
        raise SystemExit(f"exported model returns {got.shape} {got.dtype}, want (2, 3, {vocab})")
    np.testing.assert_array_equal(got, reference_output(probe, vocab))
    target = out / str(version) / "model.pt"
    target.parent.mkdir(parents=True, exist_ok=True)
    module.save(str(target))
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="the model's repository dir")
    parser.add_argument("--vocab", type=int, default=VOCAB)
    parser.add_argument("--version", type=int, default=1)
    args = parser.parse_args(argv)
    try:
        import torch  # noqa: F401
    except ImportError:
        print("export_torchscript: torch is not installed; nothing exported", file=sys.stderr)
        return 3
    print(f"export_torchscript: wrote {export(args.out, args.vocab, args.version)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
