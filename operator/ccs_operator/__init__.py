"""ccs-operator: runs NVIDIA Triton inference services on Kubernetes and keeps them warm."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ccs-operator")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+local"
