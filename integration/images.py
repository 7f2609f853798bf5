"""Build the integration suite's images without a registry, cached by a hash of their
inputs: an image is rebuilt only when something it is made of changed.

    python3 integration/images.py            # build what is missing, print the tags
    python3 integration/images.py --env      # ... as shell assignments (SGIT_*_IMAGE=...)
    python3 integration/images.py --force    # rebuild everything

Images (all local, tag = content hash):

* `sgit-base-hv:<h>`, `sgit-base-inst:<h>` — Debian root file systems made by mmdebstrap
  from the host's apt sources, piped into `docker import`; inputs: the package lists and
  this file's build recipe.
* `sgit-hypervisor:<h>` — base-hv plus the agent installed the way an operator would:
  the Debian package built from this checkout (scripts/build-deb.sh), installed with
  `apt install ./secgroup-agent_<v>_<arch>.deb`, and the suite's config written over the
  conffile `/etc/secgroup-agent/config.yaml`. The image also keeps, in /opt/sgit-debs/,
  that .deb and the same tree built as version `<v>+test1` (the upgrade scenario);
  inputs: the base image, the agent's sources, pyproject.toml, systemd/, debian/, man/,
  the build scripts and integration/images/hypervisor/.
* `sgit-instance:<h>` — base-inst plus the probe tools of integration/tools/.

Only standard-library Python on the host side (the script runs before any virtualenv).
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HERE = ROOT / "integration"
SUITE = "bookworm"
RECIPE_VERSION = "4"      # bump to force a rebuild after changing a recipe below

HV_PACKAGES = ["systemd", "systemd-sysv", "dbus", "nftables", "python3-nftables", "conntrack",
               "iproute2", "python3-venv", "procps", "kmod", "iputils-ping", "tcpdump",
               "python3-yaml", "man-db"]      # the .deb's dependencies; `man secgroup-agent`
INST_PACKAGES = ["python3", "python3-scapy", "iproute2", "tcpdump", "procps", "iputils-ping"]

# systemd units that make no sense in a container and only slow its boot down
HV_MASK = ["systemd-udevd.service", "systemd-udev-trigger.service", "systemd-networkd.service",
           "systemd-resolved.service", "systemd-timesyncd.service", "getty@tty1.service",
           "console-getty.service", "apt-daily.timer", "apt-daily-upgrade.timer",
           "e2scrub_all.timer", "fstrim.timer", "systemd-tmpfiles-clean.timer",
           "dpkg-db-backup.timer", "systemd-logind.service"]


def log(msg: str) -> None:
    print(f"[images] {msg}", file=sys.stderr, flush=True)


def sha(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(len(p).to_bytes(8, "big"))
        h.update(p)
    return h.hexdigest()[:16]


def tree_hash(paths: list[Path]) -> bytes:
    """Content hash of files (directories recursively), by path relative to ROOT."""
    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            files += [f for f in p.rglob("*") if f.is_file() and "__pycache__" not in f.parts
                      and not f.name.endswith(".pyc")]
        elif p.is_file():
            files.append(p)
    h = hashlib.sha256()
    for f in sorted(set(files)):
        h.update(str(f.relative_to(ROOT)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest().encode()


def image_exists(tag: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", tag], capture_output=True).returncode == 0


def run(cmd: list[str], **kw) -> None:
    subprocess.run(cmd, check=True, **kw)


def mmdebstrap_import(tag: str, packages: list[str], hooks: list[str], man: bool = False) -> None:
    """man: keep man pages (the dpkg path-excludes stay in the image for later installs)."""
    log(f"building {tag} with mmdebstrap ({len(packages)} packages)")
    cmd = ["mmdebstrap", "--quiet", "--variant=apt", f"--include={','.join(packages)}",
           "--dpkgopt=path-exclude=/usr/share/doc/*", "--dpkgopt=path-exclude=/usr/share/locale/*"]
    if not man:
        cmd.append("--dpkgopt=path-exclude=/usr/share/man/*")
    cmd += [f"--customize-hook={h}" for h in hooks]
    cmd += [SUITE, "-"]
    mm = subprocess.Popen(cmd, stdout=subprocess.PIPE)
    imp = subprocess.run(["docker", "import", "--change", 'CMD ["/sbin/init"]', "-", tag],
                         stdin=mm.stdout, capture_output=True, text=True)
    mm.stdout.close()
    if mm.wait() != 0 or imp.returncode != 0:
        raise SystemExit(f"building {tag} failed: mmdebstrap exit {mm.returncode}; "
                         f"docker import: {imp.stderr.strip()}")


def docker_build(tag: str, context: Path) -> None:
    """A one-stage build on a local base image (no registry, no BuildKit needed)."""
    log(f"building {tag}")
    env = dict(os.environ, DOCKER_BUILDKIT="0")
    run(["docker", "build", "-q", "-t", tag, str(context)], env=env, stdout=subprocess.DEVNULL)


def base_hv() -> str:
    tag = "sgit-base-hv:" + sha(RECIPE_VERSION.encode(), " ".join(HV_PACKAGES).encode(),
                                " ".join(HV_MASK).encode(), SUITE.encode())
    if not image_exists(tag):
        hooks = ['chroot "$1" systemctl mask ' + " ".join(HV_MASK),
                 'rm -f "$1"/etc/machine-id && touch "$1"/etc/machine-id',
                 'mkdir -p "$1"/etc/systemd/journald.conf.d && printf "[Journal]\\nStorage=volatile\\n"'
                 ' > "$1"/etc/systemd/journald.conf.d/volatile.conf',
                 'rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*']
        mmdebstrap_import(tag, HV_PACKAGES, hooks, man=True)
    return tag


def base_inst() -> str:
    tag = "sgit-base-inst:" + sha(RECIPE_VERSION.encode(), " ".join(INST_PACKAGES).encode(), SUITE.encode())
    if not image_exists(tag):
        mmdebstrap_import(tag, INST_PACKAGES, ['rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*'])
    return tag


def agent_inputs() -> list[Path]:
    return [ROOT / "agent", ROOT / "pyproject.toml", ROOT / "README.md", ROOT / "systemd",
            ROOT / "docs", ROOT / "debian", ROOT / "man", ROOT / "examples",
            ROOT / "scripts" / "build-deb.sh", ROOT / "scripts" / "fetch-wheels.sh",
            HERE / "images" / "hypervisor"]


UPGRADE_SUFFIX = "+test1"


def build_debs(dest: Path) -> None:
    """The package of this checkout, and the same tree as a newer version (UPGRADE_SUFFIX)."""
    for suffix in ("", UPGRADE_SUFFIX):
        env = dict(os.environ, OUT=str(dest), DEB_VERSION_SUFFIX=suffix)
        run(["sh", str(ROOT / "scripts" / "build-deb.sh")], env=env, stdout=subprocess.DEVNULL)


def hypervisor(base: str) -> str:
    tag = "sgit-hypervisor:" + sha(RECIPE_VERSION.encode(), base.encode(), tree_hash(agent_inputs()))
    if image_exists(tag):
        return tag
    with tempfile.TemporaryDirectory(prefix="sgit-hv-") as ctx:
        c = Path(ctx)
        build_debs(c / "debs")
        shutil.copytree(HERE / "images" / "hypervisor", c / "files")
        (c / "Dockerfile").write_text(f"""FROM {base}
COPY debs/ /opt/sgit-debs/
COPY files/ /tmp/files/
RUN sh /tmp/files/install.sh && rm -rf /tmp/files
""")
        docker_build(tag, c)
    return tag


def instance(base: str) -> str:
    inputs = [HERE / "tools", ROOT / "sandbox" / "probe.py", ROOT / "sandbox" / "hypervisor.py"]
    tag = "sgit-instance:" + sha(RECIPE_VERSION.encode(), base.encode(), tree_hash(inputs))
    if image_exists(tag):
        return tag
    with tempfile.TemporaryDirectory(prefix="sgit-inst-") as ctx:
        c = Path(ctx)
        (c / "opt" / "sandbox").mkdir(parents=True)
        # sandbox.probe (its `serve` and `hold` are stdlib only) for real TCP connections
        (c / "opt" / "sandbox" / "__init__.py").write_text("")
        for name in ("probe.py", "hypervisor.py"):
            shutil.copy2(ROOT / "sandbox" / name, c / "opt" / "sandbox" / name)
        shutil.copytree(HERE / "tools", c / "opt" / "tools", ignore=shutil.ignore_patterns("__pycache__"))
        (c / "Dockerfile").write_text(f"""FROM {base}
COPY opt/ /opt/sgit/
ENV PYTHONPATH=/opt/sgit PYTHONDONTWRITEBYTECODE=1
CMD ["python3", "/opt/sgit/tools/sgpkt.py", "daemon"]
""")
        docker_build(tag, c)
    return tag


def ensure_all(force: bool = False) -> dict[str, str]:
    if force:
        for repo in ("sgit-base-hv", "sgit-base-inst", "sgit-hypervisor", "sgit-instance"):
            out = subprocess.run(["docker", "images", "-q", repo], capture_output=True, text=True).stdout.split()
            if out:
                subprocess.run(["docker", "rmi", "-f", *set(out)], capture_output=True)
    tags = {"SGIT_HV_IMAGE": hypervisor(base_hv()), "SGIT_INST_IMAGE": instance(base_inst())}
    prune_stale(tags.values())
    return tags


def prune_stale(current) -> None:
    """Drop older builds of the two top images (every agent edit makes a new one)."""
    keep = set(current)
    for repo in ("sgit-hypervisor", "sgit-instance"):
        out = subprocess.run(["docker", "images", "--format", "{{.Repository}}:{{.Tag}}", repo],
                             capture_output=True, text=True).stdout.split()
        stale = [t for t in out if t not in keep]
        if stale:
            subprocess.run(["docker", "rmi", *stale], capture_output=True)   # in use: kept


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", action="store_true", help="print NAME=tag lines")
    p.add_argument("--force", action="store_true", help="rebuild every image")
    a = p.parse_args()
    tags = ensure_all(a.force)
    for k, v in tags.items():
        print(f"{k}={v}" if a.env else v)
    return 0


if __name__ == "__main__":
    sys.exit(main())
