"""Build a real Kubernetes control plane from the Go module proxy into ``.tools/bin``.

Contract:

* Builds ``kube-apiserver``, ``kube-controller-manager``, ``kube-scheduler``
  (``k8s.io/kubernetes``), ``etcd`` (``go.etcd.io/etcd/server/v3``) and ``kwok``
  (``sigs.k8s.io/kwok``, fake kubelets) at the versions pinned below, each with
  ``CGO_ENABLED=0 -trimpath``, into ``.tools/bin`` (``--dir``).
* A binary is rebuilt only when it is missing or was built from another version
  (read from its embedded build info with ``go version -m``); a second run builds
  nothing and says so. The first run takes minutes (about 7 on two cores, most of
  it kube-apiserver) and needs the Go toolchain (``go``, 1.26 or newer); without
  it the script fails with one line, unless every binary is already there.
* Each source is built from a small wrapper module generated in
  ``.tools/build/<name>``: ``require`` the upstream module, ``tool`` its commands.
  ``k8s.io/kubernetes`` replaces its ``k8s.io/*`` staging modules with
  ``./staging/...`` paths, which Go ignores in a dependency, so the wrapper pins
  each of them to its published ``v0.X.Y`` release matching ``v1.X.Y``.
* The module and build caches live in ``.tools/go`` (``make clean`` removes them
  with the rest of ``.tools``); the build cache is emptied after a successful
  build. Builds run at low CPU priority (``nice 10``).
* The Kubernetes binaries carry their real version (``-X
  k8s.io/component-base/version.gitVersion=...``), so ``kubectl version`` shows the
  server as ``v1.37.2`` rather than ``v0.0.0-master``.

* KEDA's CRDs (``keda.sh_*.yaml`` of ``github.com/kedacore/keda/v2``, from its
  module zip on the proxy) go to ``.tools/crds/keda/``: the tests apply them to
  the control plane and validate the chart's ScaledObjects against them.

``--check`` only reports what is missing (exit 1 if anything is).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

#: Kubernetes release; kubectl in .tools/bin is v1.37 (helm's wheel), so the server matches.
KUBERNETES_VERSION = "v1.37.2"
#: etcd release (the v3.6+ line that Kubernetes 1.37 is tested against).
ETCD_VERSION = "v3.7.3"
#: kwok release: the newest the module proxy serves.
KWOK_VERSION = "v0.8.0"
#: KEDA release whose CRDs (ScaledObject, TriggerAuthentication) the chart is tested against.
KEDA_MODULE = "github.com/kedacore/keda/v2"
KEDA_VERSION = "v2.21.0"
#: Go's module path prefix for Kubernetes' staging modules (k8s.io/api, k8s.io/client-go, ...).
STAGING_PREFIX = "./staging/src/"
#: Packages whose version variables the Kubernetes build stamps (hack/lib/version.sh).
VERSION_PACKAGES = ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version")


@dataclass(frozen=True)
class Source:
    """One upstream Go module and the commands built from it."""

    #: wrapper module directory under .tools/build
    name: str
    #: upstream module path
    module: str
    #: upstream module version
    version: str
    #: binary name in .tools/bin -> Go package path of its main package
    commands: dict[str, str]
    #: k8s.io/kubernetes: pin its staging modules, stamp its version into the binaries
    kubernetes: bool = False


SOURCES: tuple[Source, ...] = (
    Source(
        name="k8s",
        module="k8s.io/kubernetes",
        version=KUBERNETES_VERSION,
        commands={
            "kube-apiserver": "k8s.io/kubernetes/cmd/kube-apiserver",
            "kube-controller-manager": "k8s.io/kubernetes/cmd/kube-controller-manager",
            # kwok plays the kubelets but does not schedule: pods need a real scheduler.
            "kube-scheduler": "k8s.io/kubernetes/cmd/kube-scheduler",
        },
        kubernetes=True,
    ),
    Source(
        name="etcd",
        module="go.etcd.io/etcd/server/v3",
        version=ETCD_VERSION,
        # The server module's root package is etcd's main (it calls etcdmain.Main).
        commands={"etcd": "go.etcd.io/etcd/server/v3"},
    ),
    Source(
        name="kwok",
        module="sigs.k8s.io/kwok",
        version=KWOK_VERSION,
        commands={"kwok": "sigs.k8s.io/kwok/cmd/kwok"},
    ),
)


class BuildError(Exception):
    """A step of a build failed; the message is one line for the user."""


def say(text: str) -> None:
    sys.stdout.write(f"==> {text}\n")
    sys.stdout.flush()


def go_env(tools: Path) -> dict[str, str]:
    """The environment for every go command: caches under .tools/go, static binaries."""
    return {
        **os.environ,
        "GOMODCACHE": str(tools / "go" / "mod"),
        "GOCACHE": str(tools / "go" / "cache"),
        # Writable module cache, so that `make clean` (rm -rf .tools) works without root.
        "GOFLAGS": "-modcacherw -buildvcs=false",
        "CGO_ENABLED": "0",
    }


def run_go(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    """Run ``go ARGS`` at low priority; its stdout, or BuildError with its output's tail."""
    nice = ["nice", "-n", "10"] if shutil.which("nice") else []
    proc = subprocess.run(
        [*nice, "go", *args], cwd=cwd, env=env, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-20:])
        msg = f"go {' '.join(args[:2])} failed in {cwd}:\n{tail}"
        raise BuildError(msg)
    return proc.stdout


def built_version(binary: Path, module: str, env: dict[str, str]) -> str | None:
    """The version of ``module`` that ``binary`` was built from (its Go build info)."""
    if not binary.exists():
        return None
    proc = subprocess.run(
        ["go", "version", "-m", str(binary)], env=env, capture_output=True, text=True, check=False
    )
    for line in proc.stdout.splitlines():
        fields = line.split()
        # Built as a tool of the wrapper, the upstream module is the binary's "mod".
        if len(fields) >= 3 and fields[0] in ("mod", "dep") and fields[1] == module:
            return fields[2]
    return None


def staging_modules(source: Source, build_dir: Path, env: dict[str, str]) -> list[str]:
    """Module paths that k8s.io/kubernetes's go.mod replaces with its ./staging tree."""
    info = json.loads(
        run_go(["mod", "download", "-json", f"{source.module}@{source.version}"], build_dir, env)
    )
    gomod = Path(info["GoMod"]).read_text()
    return sorted(
        line.split()[0]
        for line in gomod.splitlines()
        if "=>" in line and line.split("=>")[1].strip().startswith(STAGING_PREFIX)
    )


def write_wrapper(source: Source, build_dir: Path, env: dict[str, str]) -> None:
    """Generate the wrapper module (go.mod, go.sum) that builds ``source``'s commands."""
    build_dir.mkdir(parents=True, exist_ok=True)
    (build_dir / "go.sum").unlink(missing_ok=True)
    # A bare module first: `go mod download` must not pick up a stale go.mod.
    header = f"module resonate-patterns/tools/{source.name}\n\ngo 1.24\n"
    (build_dir / "go.mod").write_text(header)
    lines = [header, f"require {source.module} {source.version}\n"]
    if source.kubernetes:
        staging_version = "v0" + source.version[source.version.index(".") :]
        lines.append("replace (")
        lines += [
            f"\t{m} => {m} {staging_version}" for m in staging_modules(source, build_dir, env)
        ]
        lines.append(")\n")
    lines += ["tool (", *(f"\t{pkg}" for pkg in source.commands.values()), ")"]
    (build_dir / "go.mod").write_text("\n".join(lines) + "\n")
    run_go(["mod", "tidy"], build_dir, env)


def ldflags(source: Source) -> str:
    """Linker flags: strip symbols; stamp the Kubernetes version into its version packages."""
    flags = ["-s", "-w"]
    if source.kubernetes:
        major, minor = source.version.removeprefix("v").split(".")[:2]
        stamps = {"gitVersion": source.version, "gitMajor": major, "gitMinor": minor}
        stamps["gitTreeState"] = "clean"
        flags += [f"-X {pkg}.{k}={v}" for pkg in VERSION_PACKAGES for k, v in stamps.items()]
    return " ".join(flags)


def build(source: Source, names: list[str], tools: Path, env: dict[str, str]) -> dict[str, float]:
    """Build ``names`` (commands of ``source``) into .tools/bin; seconds each build took."""
    build_dir = tools / "build" / source.name
    bin_dir = tools / "bin"
    say(f"resolving {source.module} {source.version} in {build_dir}")
    write_wrapper(source, build_dir, env)
    took: dict[str, float] = {}
    for name in names:
        say(f"building {name} {source.version} (first time: several minutes)")
        started = time.monotonic()
        # Link to a temporary name: an interrupted build leaves no half-written binary.
        partial = bin_dir / f".{name}.partial"
        run_go(
            [
                "build",
                "-trimpath",
                "-ldflags",
                ldflags(source),
                "-o",
                str(partial),
                source.commands[name],
            ],
            build_dir,
            env,
        )
        partial.replace(bin_dir / name)
        took[name] = time.monotonic() - started
        say(f"built {name} {source.version} in {took[name]:.0f} s")
    return took


def missing(tools: Path, env: dict[str, str] | None) -> list[tuple[Source, str]]:
    """(source, binary) pairs that are absent or, when ``env`` (go) is given, outdated."""
    out: list[tuple[Source, str]] = []
    for source in SOURCES:
        for name in source.commands:
            binary = tools / "bin" / name
            # Without go, an existing binary is trusted: nothing could rebuild it anyway.
            current = binary.exists() and (
                env is None or built_version(binary, source.module, env) == source.version
            )
            if not current:
                out.append((source, name))
    return out


def keda_crds(tools: Path, env: dict[str, str] | None) -> bool:
    """Put KEDA's CRDs in ``tools/crds/keda`` (once per version); False if that failed."""
    target = tools / "crds" / "keda"
    stamp = target / "VERSION"
    if stamp.exists() and stamp.read_text().strip() == KEDA_VERSION:
        return True
    if env is None:
        sys.stderr.write(f"error: go is not installed; it fetches KEDA {KEDA_VERSION}'s CRDs\n")
        return False
    say(f"fetching KEDA {KEDA_VERSION}'s CRDs from the Go module proxy")
    try:
        info = json.loads(
            run_go(["mod", "download", "-json", f"{KEDA_MODULE}@{KEDA_VERSION}"], tools, env)
        )
    except (BuildError, ValueError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return False
    bases = Path(info["Dir"]) / "config" / "crd" / "bases"
    crds = sorted(bases.glob("keda.sh_*.yaml"))
    if not crds:
        sys.stderr.write(f"error: no keda.sh CRDs under {bases}\n")
        return False
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    for crd in crds:
        shutil.copyfile(crd, target / crd.name)
    stamp.write_text(KEDA_VERSION + "\n")
    return True


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dir", default=".tools", help="tool directory (.tools)")
    parser.add_argument("--check", action="store_true", help="only report missing binaries")
    args = parser.parse_args()
    tools = Path(args.dir).resolve()
    have_go = shutil.which("go") is not None
    env = go_env(tools) if have_go else None
    todo = missing(tools, env)
    if not args.check and not keda_crds(tools, env):
        return 1
    if args.check or not todo:
        for source, name in todo:
            say(f"{name} {source.version} is missing or outdated")
        if not todo:
            say(f"control plane binaries are up to date in {tools / 'bin'}; nothing to build")
        return 1 if todo else 0
    if env is None:
        listed = ", ".join(name for _, name in todo)
        sys.stderr.write(f"error: go is not installed; Go 1.26+ is needed to build {listed}\n")
        return 1
    (tools / "bin").mkdir(parents=True, exist_ok=True)
    took: dict[str, float] = {}
    try:
        for source in SOURCES:
            names = [name for s, name in todo if s == source]
            if names:
                took |= build(source, names, tools, env)
    except BuildError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1
    say(f"control plane built in {sum(took.values()):.0f} s: {', '.join(took)}")
    # The build cache (~4 GB) would only speed up rebuilding these very versions; a
    # version bump recompiles nearly everything. The module cache stays (~1.3 GB).
    run_go(["clean", "-cache"], tools, env)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
