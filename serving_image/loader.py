"""`ccs-model-loader`: assemble the Triton model repository before tritonserver starts.

Runs as the `model-loader` init container of every ClaudeCodeService pod:

    ccs-model-loader --repository <spec.model.repository> --model-name <name> \
        --config /etc/ccs/model-config/config.pbtxt --model-store /models

and produces `<model-store>/<name>/{config.pbtxt, <version>/...}`, the layout Triton reads.

Repositories:
- an absolute path or `file:///path`: a directory baked into the image or mounted; version
  directories are *copied*, because the triton container may run a different image
  (the stock NVIDIA one) where the path does not exist.
- `pvc://<claim>/<path>`: the claim is mounted at /mnt/pvc/<claim> in both containers
  (render.py does that), so version directories are *symlinked*, never copied: large
  weights are not duplicated into the pod's emptyDir.
- `s3://`, `gs://`, `az://`: not supported by this loader (yet); it fails with a message
  that says so and what to use instead. (Triton can read s3:// repositories itself, but
  then the operator's config.pbtxt would not be the one served.)

The repository directory holds numbered version directories (`1/`, `2/`, ...) and, if
present, a config.pbtxt of its own, which is ignored: the operator's config wins. The result
is validated: the config parses with Triton's own protobuf schema (model_config_pb2), its
name matches --model-name, at least one version directory exists, versions a Specific
version policy names exist, and a Python-backend model has model.py. Any failure exits 2
with a message naming the argument, field or path. Exit 0 prints what was assembled.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb

PVC_MOUNT_ROOT = Path("/mnt/pvc")
OBJECT_STORE_SCHEMES = ("s3://", "gs://", "az://")
# The file each platform loads from a version directory when config.pbtxt names none.
DEFAULT_MODEL_FILENAMES = {
    "pytorch_libtorch": "model.pt",
    "onnxruntime_onnx": "model.onnx",
    "tensorrt_plan": "model.plan",
    "tensorflow_savedmodel": "model.savedmodel",
    "tensorflow_graphdef": "model.graphdef",
}


class LoaderError(Exception):
    """The model repository cannot be assembled; the message names the field or path."""


@dataclass(frozen=True)
class Source:
    """Where the model's version directories come from, and how they reach the store."""

    path: Path
    link: bool  # symlink (shared mount) rather than copy

    @classmethod
    def resolve(cls, repository: str, pvc_root: Path = PVC_MOUNT_ROOT) -> Source:
        if repository.startswith(OBJECT_STORE_SCHEMES):
            scheme = repository.split("://", 1)[0]
            raise LoaderError(
                f"--repository {repository!r}: {scheme}:// repositories are not supported by "
                "ccs-model-loader yet; put the model on a PersistentVolumeClaim "
                "(pvc://<claim>/<path>) or bake it into the image (an absolute path)"
            )
        if repository.startswith("pvc://"):
            rest = repository.removeprefix("pvc://")
            claim, _, sub = rest.partition("/")
            if not claim:
                raise LoaderError(f"--repository {repository!r}: pvc:// needs a claim name")
            base = pvc_root / claim
            path = (base / sub).resolve() if sub else base.resolve()
            if not path.is_relative_to(base.resolve()):
                raise LoaderError(f"--repository {repository!r}: path escapes the claim {claim}")
            return cls(path, link=True)
        if repository.startswith("file://"):
            path = Path(repository.removeprefix("file://"))
            if not path.is_absolute():
                raise LoaderError(f"--repository {repository!r}: file:// needs an absolute path")
            return cls(path, link=False)
        if repository.startswith("/"):
            return cls(Path(repository), link=False)
        raise LoaderError(
            f"--repository {repository!r}: expected an absolute path, file:///path or "
            "pvc://<claim>/<path>"
        )


def parse_config(text: str, origin: str) -> pb.ModelConfig:
    try:
        return text_format.Parse(text, pb.ModelConfig())
    except text_format.ParseError as exc:
        raise LoaderError(f"{origin}: not a valid Triton model config: {exc}") from None


def version_dirs(path: Path) -> list[Path]:
    return sorted(
        (p for p in path.iterdir() if p.is_dir() and p.name.isdigit()),
        key=lambda p: int(p.name),
    )


def validate(config: pb.ModelConfig, model_dir: Path, model_name: str, origin: str) -> list[int]:
    """Check an assembled model directory; return its versions."""
    if config.name and config.name != model_name:
        raise LoaderError(
            f"{origin}: name {config.name!r} does not match --model-name {model_name!r}"
        )
    if not config.platform and not config.backend:
        raise LoaderError(f"{origin}: neither platform nor backend is set")
    if not config.input or not config.output:
        raise LoaderError(f"{origin}: the model declares no input or no output")
    versions = [int(p.name) for p in version_dirs(model_dir)]
    if not versions:
        raise LoaderError(f"{model_dir}: no version directory (1/, 2/, ...) in the repository")
    policy = config.version_policy
    if policy.WhichOneof("policy_choice") == "specific":
        missing = sorted(set(policy.specific.versions) - set(versions))
        if missing:
            raise LoaderError(
                f"{origin}: version_policy.specific.versions {missing} not found in "
                f"{model_dir} (has {versions})"
            )
    wanted = config.default_model_filename
    if not wanted:
        if config.backend == "python":
            wanted = "model.py"
        else:
            wanted = DEFAULT_MODEL_FILENAMES.get(config.platform, "")
    if wanted:
        for version in versions:
            if not (model_dir / str(version) / wanted).exists():
                raise LoaderError(
                    f"{model_dir / str(version)}: missing {wanted} "
                    f"(needed by {config.backend or config.platform})"
                )
    return versions


def assemble(
    repository: str,
    model_name: str,
    config_path: Path,
    model_store: Path,
    pvc_root: Path = PVC_MOUNT_ROOT,
) -> Path:
    """Build <model_store>/<model_name>; return that directory. Raises LoaderError."""
    if not model_name or "/" in model_name or model_name in (".", ".."):
        raise LoaderError(f"--model-name {model_name!r}: not a valid model directory name")
    try:
        config_text = config_path.read_text()
    except OSError as exc:
        raise LoaderError(f"--config {config_path}: cannot read: {exc.strerror}") from None
    config = parse_config(config_text, f"--config {config_path}")
    source = Source.resolve(repository, pvc_root)
    if not source.path.is_dir():
        raise LoaderError(
            f"--repository {repository!r}: {source.path} is not a directory (not mounted?)"
        )
    sources = version_dirs(source.path)
    if not sources:
        raise LoaderError(
            f"--repository {repository!r}: no version directory (1/, 2/, ...) in {source.path}"
        )
    model_store.mkdir(parents=True, exist_ok=True)
    model_dir = model_store / model_name
    staging = model_store / f".{model_name}.staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        for version in sources:
            target = staging / version.name
            if source.link:
                target.symlink_to(version.resolve(), target_is_directory=True)
            else:
                shutil.copytree(version, target, symlinks=False)
        (staging / "config.pbtxt").write_text(config_text)
        validate(config, staging, model_name, f"--config {config_path}")
    except BaseException:
        # Triton would take a leftover directory in its repository for a model.
        shutil.rmtree(staging, ignore_errors=True)
        raise
    # Replace any previous assembly only once the new one is complete and valid.
    if model_dir.exists():
        shutil.rmtree(model_dir)
    os.replace(staging, model_dir)
    return model_dir


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ccs-model-loader",
        description="Assemble the Triton model repository of a ClaudeCodeService pod.",
    )
    parser.add_argument("--repository", required=True, help="spec.model.repository")
    parser.add_argument("--model-name", required=True, help="spec.model.name")
    parser.add_argument("--config", required=True, type=Path, help="config.pbtxt to serve")
    parser.add_argument("--model-store", required=True, type=Path, help="Triton's repository")
    parser.add_argument("--pvc-root", type=Path, default=PVC_MOUNT_ROOT, help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        model_dir = assemble(
            args.repository, args.model_name, args.config, args.model_store, args.pvc_root
        )
    except LoaderError as exc:
        print(f"ccs-model-loader: error: {exc}", file=sys.stderr)
        return 2
    versions = ", ".join(p.name for p in version_dirs(model_dir))
    print(f"ccs-model-loader: {model_dir} ready (versions {versions}) from {args.repository}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
