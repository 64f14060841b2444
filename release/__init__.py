"""What users install: the operator's OCI image, its SBOM and the install bundle.

`python -m release image` (`make image`) builds the image without a container engine: a
minimal Debian root filesystem made by Debian's mmdebstrap (cached), the operator's wheel
and its locked dependencies installed into a virtualenv in it by pip run inside a chroot,
packed into an OCI image layout by this package (deterministic tar layers) and copied to a
docker-archive tarball by skopeo. `python -m release bundle` (`make bundle`) renders the
chart into one `kubectl apply -f` file. Progress goes to stderr; stdout carries only what
scripts read (the image digest, the bundle's path).
"""
