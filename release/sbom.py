"""The image's SBOM: an SPDX 2.3 JSON document made from the image's own package lists.

Every Debian package dpkg's status file says is installed, and every Python distribution
in the operator's virtualenv (its .dist-info METADATA), each with a package URL (purl);
the image itself is the document's subject, identified by its manifest digest. Licenses
are declared where the distribution states an SPDX expression (License-Expression) and
are NOASSERTION elsewhere (Debian's copyright files are not machine-parsed here). The
creation time is SOURCE_DATE_EPOCH, so the same image gives the same SBOM.
"""

from __future__ import annotations

import re
import urllib.parse
from email.parser import Parser
from pathlib import Path
from typing import Any

from release.oci import canonical_json, iso_time

SITE_PACKAGES = "opt/ccs/lib/python3.11/site-packages"
DEBIAN_RELEASE = "debian-12"


def dpkg_packages(rootfs: Path) -> list[dict[str, str]]:
    """The installed packages of dpkg's status file: name, version, architecture, source."""
    packages = []
    for paragraph in (rootfs / "var/lib/dpkg/status").read_text().split("\n\n"):
        fields: dict[str, str] = {}
        for line in paragraph.splitlines():
            if line[:1] in (" ", "\t") or ":" not in line:
                continue
            key, _, value = line.partition(":")
            fields[key] = value.strip()
        if fields.get("Status", "").endswith(" installed"):
            packages.append(fields)
    return sorted(packages, key=lambda p: (p["Package"], p.get("Architecture", "")))


def python_distributions(rootfs: Path) -> list[dict[str, str]]:
    """Name, version and license expression of each distribution in the virtualenv."""
    found = []
    for metadata in sorted((rootfs / SITE_PACKAGES).glob("*.dist-info/METADATA")):
        message = Parser().parsestr(metadata.read_text(errors="replace"), headersonly=True)
        found.append(
            {
                "name": str(message["Name"]),
                "version": str(message["Version"]),
                "license": str(message.get("License-Expression") or ""),
            }
        )
    return sorted(found, key=lambda d: d["name"].lower())


def _spdx_id(kind: str, name: str, version: str) -> str:
    return "SPDXRef-" + re.sub(r"[^A-Za-z0-9.-]", "-", f"{kind}-{name}-{version}")


def _quote(value: str) -> str:
    return urllib.parse.quote(value, safe="")


def sbom(
    rootfs: Path, image_name: str, version: str, digest: str, arch: str, epoch: int
) -> bytes:
    image_id = "SPDXRef-image"
    packages: list[dict[str, Any]] = [
        {
            "SPDXID": image_id,
            "name": image_name,
            "versionInfo": version,
            "primaryPackagePurpose": "CONTAINER",
            "downloadLocation": "NOASSERTION",
            "filesAnalyzed": False,
            "licenseDeclared": "Apache-2.0",
            "checksums": [{"algorithm": "SHA256", "checksumValue": digest.split(":", 1)[1]}],
            "externalRefs": [
                {
                    "referenceCategory": "PACKAGE-MANAGER",
                    "referenceType": "purl",
                    "referenceLocator": (
                        f"pkg:oci/{image_name.rsplit('/', 1)[-1]}@{_quote(digest)}"
                        f"?arch={arch}&repository_url={_quote(image_name)}&tag={version}"
                    ),
                }
            ],
        }
    ]
    for deb in dpkg_packages(rootfs):
        name, deb_version, deb_arch = deb["Package"], deb["Version"], deb.get("Architecture", "")
        purl = (
            f"pkg:deb/debian/{name}@{_quote(deb_version)}"
            f"?arch={deb_arch}&distro={DEBIAN_RELEASE}"
        )
        source = deb.get("Source", "").split(" ")[0]
        if source and source != name:
            purl += f"&upstream={_quote(source)}"
        maintainer = deb.get("Maintainer")
        package = _package("deb", name, f"{deb_version}-{deb_arch}", purl, "", maintainer)
        package["versionInfo"] = deb_version
        packages.append(package)
    for dist in python_distributions(rootfs):
        normalized = re.sub(r"[-_.]+", "-", dist["name"]).lower()
        purl = f"pkg:pypi/{normalized}@{_quote(dist['version'])}"
        packages.append(_package("pypi", dist["name"], dist["version"], purl, dist["license"]))
    relationships = [
        {"spdxElementId": "SPDXRef-DOCUMENT", "relationshipType": "DESCRIBES",
         "relatedSpdxElement": image_id},
    ] + [
        {"spdxElementId": image_id, "relationshipType": "CONTAINS",
         "relatedSpdxElement": package["SPDXID"]}
        for package in packages[1:]
    ]
    document = {
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": f"{image_name}:{version} ({arch})",
        "documentNamespace": (
            f"https://github.com/claudecode/ccs-operator/spdx/{version}/{arch}/"
            f"{digest.split(':', 1)[1]}"
        ),
        "creationInfo": {
            "created": iso_time(epoch),
            "creators": ["Tool: ccs-operator-release", "Organization: claudecode"],
        },
        "packages": packages,
        "relationships": relationships,
    }
    return canonical_json(document) + b"\n"


def _package(
    kind: str, name: str, version: str, purl: str, license_: str, supplier: str | None = None
) -> dict[str, Any]:
    package: dict[str, Any] = {
        "SPDXID": _spdx_id(kind, name, version),
        "name": name,
        "versionInfo": version,
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": False,
        "licenseConcluded": "NOASSERTION",
        "licenseDeclared": license_ or "NOASSERTION",
        "copyrightText": "NOASSERTION",
        "externalRefs": [
            {"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl",
             "referenceLocator": purl}
        ],
    }
    if supplier:
        package["supplier"] = f"Organization: {supplier}"
    return package
