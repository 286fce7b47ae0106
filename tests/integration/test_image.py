"""The container image of scripts/image: its index, configs and layers as skopeo reads
them, its root file system as umoci unpacks it (nothing but the listed files), and the
binary run from that root in an empty environment, as the image's user, with chroot:
`version`, `rules check` and a `once snooze` against the test services (mail delivered
through Mailpit). The arm64 image runs the same way through qemu-user (a copy of its root
with qemu-aarch64-static added beside the listed files).

SUPPORTD_IMAGE names the output folder of scripts/image (scripts/test sets it, after building it);
without it these tests skip. SUPPORTD_IMAGE_ARCHES: the architectures it was built for
(default amd64,arm64). Needs root (chroot, a root-owned unpack)."""
from __future__ import annotations

import glob
import json
import os
import re
import shutil
import ssl
import subprocess
import tarfile
from datetime import timedelta
from pathlib import Path

import pytest

from conftest import REPO
from test_snooze import NOW, NOW_ISO, World

IMAGE = os.environ.get("SUPPORTD_IMAGE")
ARCHES = [a for a in os.environ.get("SUPPORTD_IMAGE_ARCHES", "amd64,arm64").split(",") if a]
ELF_MACHINE = {"amd64": 62, "arm64": 183}  # e_machine: EM_X86_64, EM_AARCH64
UID = 65532  # scripts/image IMAGE_UID

pytestmark = pytest.mark.skipif(not IMAGE, reason="SUPPORTD_IMAGE not set (scripts/test builds the image, then sets it)")


def version() -> str:
    text = (REPO / "src" / "version.h").read_text()
    return re.search(r'#define SUPPORTD_VERSION "([^"]+)"', text).group(1)


def ref() -> str:
    return f"oci:{IMAGE}/oci:{version()}"


def skopeo(*args: str) -> str:
    cp = subprocess.run(["skopeo", *args], capture_output=True, text=True, timeout=120)
    assert cp.returncode == 0, f"skopeo {' '.join(args)}: {cp.stderr}"
    return cp.stdout


def inspect(arch: str, *flags: str) -> dict:
    return json.loads(skopeo("inspect", "--override-os", "linux", "--override-arch", arch, *flags, ref()))


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout


def current_revision() -> str:
    """The revision label scripts/image would write now."""
    dirty = git("status", "--porcelain", "--untracked-files=no").strip()
    return git("rev-parse", "HEAD").strip() + ("-dirty" if dirty else "")


def listed_files() -> set[str]:
    """What the layer may hold: the binary, the committed rules and the CA bundle, and
    the folders on their way."""
    rules = git("ls-files", "rules").split()
    files = {"supportd", "etc/ssl/certs/ca-certificates.crt", *rules}
    dirs = {str(Path(f).parents[i]) for f in files for i in range(len(Path(f).parents) - 1)}
    return files | dirs


def mozilla_bundle() -> bytes:
    certs = sorted(glob.glob("/usr/share/ca-certificates/mozilla/*.crt"))
    return b"".join(Path(c).read_bytes().rstrip(b"\n") + b"\n" for c in certs)


@pytest.fixture(scope="module")
def unpacked(tmp_path_factory):
    """arch -> the root file system of that architecture's image, unpacked by umoci from
    a single-architecture copy that skopeo picks out of the index."""
    if os.geteuid() != 0:
        pytest.skip("unpacking with owners and chroot need root")
    base = tmp_path_factory.mktemp("image")
    roots = {}
    for arch in ARCHES:
        skopeo("copy", "-q", "--override-os", "linux", "--override-arch", arch, ref(),
               f"oci:{base}/oci-{arch}:{arch}")
        cp = subprocess.run(["umoci", "unpack", "--image", f"{base}/oci-{arch}:{arch}",
                             str(base / f"bundle-{arch}")], capture_output=True, text=True)
        assert cp.returncode == 0, cp.stderr
        roots[arch] = base / f"bundle-{arch}" / "rootfs"
    return roots


def test_one_index_one_manifest_per_architecture():
    index = json.loads(skopeo("inspect", "--raw", ref()))
    assert index["mediaType"] == "application/vnd.oci.image.index.v1+json"
    platforms = sorted((m["platform"]["os"], m["platform"]["architecture"]) for m in index["manifests"])
    assert platforms == sorted(("linux", a) for a in ARCHES)
    assert all(m["mediaType"] == "application/vnd.oci.image.manifest.v1+json" for m in index["manifests"])


@pytest.mark.parametrize("arch", ARCHES)
def test_config(arch):
    cfg = inspect(arch, "--config")
    assert (cfg["os"], cfg["architecture"]) == ("linux", arch)
    c = cfg["config"]
    assert c["Entrypoint"] == ["/supportd"] and c["Cmd"] == ["run"]
    assert c["User"] == f"{UID}:{UID}"  # numeric, not root: there is no /etc/passwd
    assert c["Env"] == ["QM_SUPPORT_RULES_DIR=/rules"]
    labels = c["Labels"]
    assert labels["org.opencontainers.image.version"] == version()
    head = git("rev-parse", "HEAD").strip()
    assert labels["org.opencontainers.image.revision"] in (head, head + "-dirty")
    assert "Apache-2.0" in labels["org.opencontainers.image.licenses"]
    assert labels["org.opencontainers.image.source"]
    # one layer, and its history entry dated like the image (SOURCE_DATE_EPOCH)
    assert len(cfg["rootfs"]["diff_ids"]) == 1
    assert [h["created"] for h in cfg["history"]] == [cfg["created"]]
    assert labels["org.opencontainers.image.created"] == cfg["created"]
    summary = inspect(arch)
    assert len(summary["Layers"]) == 1 and summary["Architecture"] == arch


@pytest.mark.parametrize("arch", ARCHES)
def test_docker_archive(arch):
    """The `docker load` archive holds the same image, tagged supportd:<version>. (No
    Docker daemon here: skopeo reads it back, and the tag is the one docker load uses.)"""
    path = Path(IMAGE) / f"supportd-{version()}-{arch}.docker.tar"
    cfg = json.loads(skopeo("inspect", "--config", f"docker-archive:{path}"))
    oci = inspect(arch, "--config")
    assert (cfg["os"], cfg["architecture"]) == ("linux", arch)
    for key in ("Entrypoint", "Cmd", "User", "Env", "Labels"):
        assert cfg["config"][key] == oci["config"][key], key
    assert cfg["rootfs"]["diff_ids"] == oci["rootfs"]["diff_ids"]  # the same layer, byte for byte
    with tarfile.open(path) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))
    # (skopeo writes the name fully qualified, as docker load reads a short one)
    tags = [t for m in manifest for t in m["RepoTags"]]
    assert len(tags) == 1 and tags[0].rsplit("/", 1)[-1] == f"supportd:{version()}", tags


@pytest.mark.parametrize("arch", ARCHES)
def test_root_holds_only_the_listed_files(unpacked, arch):
    root = unpacked[arch]
    found = {str(p.relative_to(root)) for p in root.rglob("*")}
    assert found == listed_files(), (sorted(found - listed_files()), sorted(listed_files() - found))
    for p in [root, *root.rglob("*")]:
        st = p.lstat()
        assert (st.st_uid, st.st_gid) == (0, 0), p  # the user cannot change what it runs
        assert not p.is_symlink(), p
        assert st.st_mode & 0o022 == 0, p
    binary = (root / "supportd").read_bytes()
    assert binary[:4] == b"\x7fELF" and int.from_bytes(binary[18:20], "little") == ELF_MACHINE[arch]
    assert (root / "supportd").stat().st_mode & 0o111
    for f in git("ls-files", "rules").split():
        assert (root / f).read_bytes() == (REPO / f).read_bytes(), f
    bundle = root / "etc/ssl/certs/ca-certificates.crt"
    assert bundle.read_bytes() == mozilla_bundle()
    ctx = ssl.create_default_context(cafile=str(bundle))
    assert ctx.cert_store_stats()["x509_ca"] > 100


def test_reproducible(tmp_path):
    """The same inputs give the same digests: a second build from the binaries in place."""
    first = json.loads((Path(IMAGE) / "oci" / "index.json").read_text())
    labels = inspect(ARCHES[0], "--config")["config"]["Labels"]
    if labels["org.opencontainers.image.revision"] != current_revision():
        pytest.skip("the work tree changed since the image was built (its revision label differs)")
    env = dict(os.environ, IMAGE_SOURCE=labels["org.opencontainers.image.source"],
               IMAGE_LICENSES=labels["org.opencontainers.image.licenses"])
    cp = subprocess.run([str(REPO / "scripts" / "image"), "--no-build", "--arch", ",".join(ARCHES),
                         "--out", str(tmp_path)], cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=300)
    assert cp.returncode == 0, cp.stderr
    second = json.loads((tmp_path / "oci" / "index.json").read_text())
    assert second == first
    for arch in ARCHES:
        name = f"supportd-{version()}-{arch}.docker.tar"
        assert (tmp_path / name).read_bytes() == (Path(IMAGE) / name).read_bytes(), name


def run_root(root: Path, arch: str, cfg: dict, *args: str, **env) -> subprocess.CompletedProcess:
    """`/supportd ARGS` chrooted into root as the image's user, with the image's Env and
    `env`, nothing else (no PATH, HOME, locale)."""
    full = dict(e.split("=", 1) for e in cfg["config"]["Env"])
    full.update(env)
    user = cfg["config"]["User"]
    cmd = ["/supportd", *args]
    if arch == "arm64":
        cmd = ["/qemu-aarch64-static", *cmd]
    return subprocess.run([shutil.which("chroot") or "/usr/sbin/chroot", f"--userspec={user}",
                           str(root), *cmd], env=full, cwd="/", capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL)


@pytest.fixture
def runnable(unpacked, tmp_path):
    """arch -> a root to run: the unpacked one for amd64; for arm64 a copy with the
    (static) qemu-aarch64-static beside the listed files."""
    def get(arch):
        if arch != "arm64":
            return unpacked[arch]
        qemu = shutil.which("qemu-aarch64-static")
        assert qemu, "qemu-aarch64-static not found (scripts/setup installs qemu-user-static)"
        root = tmp_path / "root-arm64"
        shutil.copytree(unpacked[arch], root, symlinks=True)
        shutil.copy2(qemu, root / "qemu-aarch64-static")
        return root
    return get


@pytest.mark.parametrize("arch", ARCHES)
def test_runs_from_its_root(sd, runnable, arch):
    cfg = inspect(arch, "--config")
    root = runnable(arch)
    cp = run_root(root, arch, cfg, "version")
    assert cp.returncode == 0, cp.stderr
    assert cp.stdout.splitlines()[0] == f"supportd {version()}"
    assert "time zones: embedded tzdata" in cp.stdout

    cp = run_root(root, arch, cfg, "rules", "check")  # the rules of QM_SUPPORT_RULES_DIR
    assert cp.returncode == 0, cp.stdout + cp.stderr
    assert "in /rules: ok" in cp.stdout

    world = World(sd)
    try:
        due = world.ticket(NOW - timedelta(minutes=1), assignee=world.anna, subject=f"image {world.tag}")
        later = world.ticket(NOW + timedelta(minutes=1), assignee=world.anna)
        # 127.0.0.1, not localhost: there is no /etc/hosts in the image
        local = {k: v.replace("localhost", "127.0.0.1") for k, v in world.env().items()}
        cp = run_root(root, arch, cfg, "once", "snooze", "--now", NOW_ISO,
                      MONGO_DB_URL=sd.mongo_url.replace("localhost", "127.0.0.1"),
                      REDIS_HOST="127.0.0.1", REDIS_PORT=sd.services["REDIS_PORT"],
                      QM_SUPPORT_REDIS_PREFIX=sd.prefix, **local)
        assert cp.returncode == 0, cp.stderr
        c = world.conv(due)
        assert (c["status"], c["priority"]) == ("open", "high") and "snooze" not in c
        assert world.conv(later)["status"] == "snoozed"
        assert set(world.queue()) == {str(due)}
        assert [e["status"] for e in world.outbox(due)] == ["sent"]
        assert [m["Subject"] for m in world.mails_to(world.anna["email"])] == [f"Back from snooze: image {world.tag}"]
    finally:
        world.client.close()
