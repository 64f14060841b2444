"""`python -m release image|lock|bundle|merge`: what users install, built here.

stdout carries only what scripts read (the image digest, the bundle's path); progress and
errors go to stderr.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from e2e.toolchain import BuildError
from release.steps import ReleaseError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m release", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    image = sub.add_parser("image", help="build the operator's OCI image (needs root)")
    image.add_argument("--arch", help="amd64 or arm64 (default: this machine's)")
    image.add_argument("--out", type=Path, help="output directory (default build/image/<arch>)")
    image.add_argument(
        "--refresh-base", action="store_true", help="build the cached Debian base anew"
    )
    lock = sub.add_parser("lock", help="resolve release/locks/*.txt anew")
    lock.add_argument("--arch", action="append", help="only this architecture (repeatable)")
    bundle = sub.add_parser("bundle", help="render the install bundle and the CRD")
    bundle.add_argument("--out", type=Path, help="output directory (default build/bundle)")
    bundle.add_argument("--digest", help="pin the operator image by this digest (sha256:...)")
    merge = sub.add_parser("merge", help="one multi-architecture layout from per-arch layouts")
    merge.add_argument("--out", type=Path, required=True)
    merge.add_argument("--ref", required=True, help="the tag in the merged layout")
    merge.add_argument("layouts", type=Path, nargs="+")
    args = parser.parse_args(argv)
    try:
        if args.command == "image":
            from release.image import build

            print(build(args.out, args.arch, refresh_base=args.refresh_base).digest)
        elif args.command == "lock":
            from release.wheels import write_locks

            for path in write_locks(tuple(args.arch or ("amd64", "arm64"))):
                print(path)
        elif args.command == "bundle":
            from release.bundle import write_bundle

            for path in write_bundle(args.out, digest=args.digest):
                print(path)
        elif args.command == "merge":
            from release.oci import merge_layouts

            print(merge_layouts(args.out, args.layouts, args.ref))
    except (ReleaseError, BuildError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
