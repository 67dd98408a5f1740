"""The product's own images for real nodes: the four service images (``make images``) and the kube-scheduler image
built from the control plane's k8s.io/kubernetes module (``make e2e-images``), exported from buildah's storage and
imported into a real node's containerd with ``ctr``, so that the stack runs from the images an operator would
deploy (no registry is reachable here; pods name them with ``imagePullPolicy: Never`` or ``IfNotPresent``).

``make e2e-images`` writes the references and the buildah storage that holds them to a manifest
(``.work/images/e2e-images.json``). :func:`export_stack_images` reads it, resolves each reference to its image ID
and pushes the five images into one OCI layout directory, kept between sessions: the layers the images share (the
Debian base, the Python runtime) are stored once, a later session with the same image IDs reuses the layout as it
is, and one after a source change pushes only the images whose ID changed (and of those only the new layers get
compressed).

Two ways into a node, both sending only the images asked for (their manifests, configs and layers):

* :func:`build_node_root_template` imports them once into a private containerd and keeps its root; a node
  started with ``RealNode(seed_root=...)`` gets a copy made of hard links before its containerd starts (about
  0.5 s, against seconds per image for an import: containerd unpacks every layer on import).
* :func:`import_stack_images` streams them into a running node's ``ctr images import`` (e.g. a new version
  during a rollout test).
"""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from e2e_harness.real_node import RealNode

# The components in the manifest, keyed as `make e2e-images` writes them.
COMPONENTS = ("webhook", "scheduler-extender", "device-plugin", "lib-installer", "kube-scheduler")
MANIFEST_DEFAULT = Path(__file__).resolve().parents[3] / ".work" / "images" / "e2e-images.json"
# Bounds on what the manifest may hold (make writes it, but a file is read as untrusted input).
_MAX_MANIFEST_BYTES = 64 * 1024
_MAX_REFERENCE_CHARS = 255
_REF_NAME = "org.opencontainers.image.ref.name"


class StackImageError(RuntimeError):
    """The images could not be found, exported or imported; the message says which command failed and how."""


@dataclass(frozen=True)
class StackImage:
    """One image of the stack: the reference pods name, buildah's ID of the image it resolved to, and the
    digest of its manifest in the layout."""

    component: str
    reference: str
    image_id: str
    manifest_digest: str


@dataclass(frozen=True)
class StackImages:
    """The five images and the OCI layout directory that holds them (and, after pushes, nothing else)."""

    images: tuple[StackImage, ...]
    layout: Path

    def image(self, component: str) -> StackImage:
        for image in self.images:
            if image.component == component:
                return image
        raise KeyError(f"no stack image for {component!r}; known: {', '.join(i.component for i in self.images)}")

    def reference(self, component: str) -> str:
        """The image reference of ``component`` (one of :data:`COMPONENTS`), as pods must name it."""
        return self.image(component).reference

    @property
    def references(self) -> dict[str, str]:
        """Component -> reference, e.g. for a kustomize ``images:`` list."""
        return {i.component: i.reference for i in self.images}

    def blobs(self, components: Iterable[str]) -> list[str]:
        """Digests (``sha256:...``) of every blob the components' images consist of, each once."""
        out: dict[str, None] = {}
        for component in components:
            manifest_digest = self.image(component).manifest_digest
            manifest = json.loads(_blob_path(self.layout, manifest_digest).read_bytes())
            out[manifest_digest] = None
            out[manifest["config"]["digest"]] = None
            for layer in manifest["layers"]:
                out[layer["digest"]] = None
        return list(out)


@dataclass(frozen=True)
class Manifest:
    """What ``make e2e-images`` wrote: the buildah storage flags and component -> image reference."""

    storage_flags: tuple[str, ...]
    references: dict[str, str]


def _run(argv: list[str], *, timeout: float = 300.0) -> str:
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise StackImageError(f"{' '.join(argv)} did not finish within {timeout:.0f} s") from exc
    if result.returncode != 0:
        raise StackImageError(f"{' '.join(argv)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result.stdout


def _blob_path(layout: Path, digest: str) -> Path:
    algorithm, _, hexdigest = digest.partition(":")
    if algorithm != "sha256" or len(hexdigest) != 64 or not all(c in "0123456789abcdef" for c in hexdigest):
        raise StackImageError(f"{layout}: {digest!r} is not a sha256 digest")
    return layout / "blobs" / "sha256" / hexdigest


def read_manifest(path: Path = MANIFEST_DEFAULT) -> Manifest:
    """Parse and validate the manifest; a missing one means the images were never built."""
    if not path.is_file():
        raise StackImageError(f"{path} does not exist: build the images with `make e2e-images`")
    raw = path.read_bytes()
    if len(raw) > _MAX_MANIFEST_BYTES:
        raise StackImageError(f"{path}: {len(raw)} bytes, more than a manifest of five images can be")
    data = json.loads(raw)
    if not isinstance(data, dict):
        raise StackImageError(f"{path}: not a JSON object")
    flags = data.get("storage_flags")
    images = data.get("images")
    if not isinstance(flags, list) or not all(isinstance(f, str) for f in flags):
        raise StackImageError(f"{path}: storage_flags must be a list of buildah options")
    if not isinstance(images, dict) or set(images) != set(COMPONENTS):
        raise StackImageError(f"{path}: images must name exactly {', '.join(COMPONENTS)}")
    for component, reference in images.items():
        valid = isinstance(reference, str) and 0 < len(reference) <= _MAX_REFERENCE_CHARS
        if not valid or any(c.isspace() for c in reference) or ":" not in reference.rsplit("/", 1)[-1]:
            raise StackImageError(f"{path}: {component}: {reference!r} is not a name:tag reference")
    return Manifest(tuple(flags), dict(images))


def _referenced_blobs(layout: Path) -> set[str]:
    """Hex digests of every blob the layout's index reaches (manifests, configs, layers)."""
    out = set()
    for entry in json.loads((layout / "index.json").read_bytes())["manifests"]:
        manifest_path = _blob_path(layout, entry["digest"])
        manifest = json.loads(manifest_path.read_bytes())
        out.add(manifest_path.name)
        for descriptor in (manifest["config"], *manifest["layers"]):
            out.add(_blob_path(layout, descriptor["digest"]).name)
    return out


def _prune_index(layout: Path, references: set[str]) -> None:
    """Keep in the layout's index only the newest entry of each of ``references`` (a push into an OCI layout
    appends an entry even when the reference is already there)."""
    index_path = layout / "index.json"
    index = json.loads(index_path.read_bytes())
    newest: dict[str, object] = {}
    for entry in index["manifests"]:
        reference = entry.get("annotations", {}).get(_REF_NAME)
        if reference in references:
            newest[reference] = entry
    index["manifests"] = list(newest.values())
    partial = index_path.with_suffix(".partial")
    partial.write_text(json.dumps(index))
    partial.replace(index_path)


def export_stack_images(cache_dir: Path, manifest: Path = MANIFEST_DEFAULT) -> StackImages:
    """Resolve the manifest's references in buildah's storage and return them with their OCI layout.

    One layout lives in ``cache_dir/layout``, with the image ID last pushed for each component
    (``cache_dir/layout-ids.json``). Only images whose ID changed are pushed again (``buildah push`` by ID, named
    by reference, replacing the reference's entry); layers already in the layout are not compressed again, so a
    source change costs the push of the changed layers. Blobs no image reaches any more are removed.
    """
    parsed = read_manifest(manifest)
    buildah = ["buildah", *parsed.storage_flags]
    image_ids = {}
    for component in COMPONENTS:
        reference = parsed.references[component]
        try:
            inspect = [*buildah, "inspect", "--type", "image", "--format", "{{.FromImageID}}", reference]
            image_ids[component] = _run(inspect).strip()
        except StackImageError as exc:
            raise StackImageError(f"{reference} is not in buildah's storage: run `make e2e-images`\n{exc}") from exc
    cache_dir.mkdir(parents=True, exist_ok=True)
    layout = cache_dir / "layout"
    record = cache_dir / "layout-ids.json"
    pushed: dict[str, str] = {}
    if record.is_file() and (layout / "index.json").is_file():
        loaded = json.loads(record.read_bytes())
        if isinstance(loaded, dict):
            pushed = {str(k): str(v) for k, v in loaded.items()}
    stale = [c for c in COMPONENTS if pushed.get(c) != f"{parsed.references[c]}@{image_ids[c]}"]
    if stale:
        # The record says what the layout holds; it is rewritten only once the pushes succeeded.
        record.unlink(missing_ok=True)
        for component in stale:
            reference = parsed.references[component]
            _run([*buildah, "push", "--quiet", image_ids[component], f"oci:{layout}:{reference}"])
        _prune_index(layout, set(parsed.references.values()))
        keep = _referenced_blobs(layout)
        for blob in (layout / "blobs" / "sha256").iterdir():
            if blob.name not in keep:
                blob.unlink()
        record.write_text(json.dumps({c: f"{parsed.references[c]}@{image_ids[c]}" for c in COMPONENTS}, indent=2))
    index = json.loads((layout / "index.json").read_bytes())
    digests = {
        m["annotations"][_REF_NAME]: m["digest"] for m in index["manifests"] if _REF_NAME in m.get("annotations", {})
    }
    images = []
    for component in COMPONENTS:
        reference = parsed.references[component]
        if reference not in digests:
            raise StackImageError(f"{layout}/index.json has no image named {reference}")
        images.append(StackImage(component, reference, image_ids[component], digests[reference]))
    return StackImages(tuple(images), layout)


def _index_for(images: StackImages, components: list[str]) -> bytes:
    index = json.loads((images.layout / "index.json").read_bytes())
    wanted = {images.image(c).manifest_digest for c in components}
    index["manifests"] = [m for m in index["manifests"] if m["digest"] in wanted]
    return json.dumps(index).encode()


def _write_archive(out: IO[bytes], images: StackImages, components: list[str]) -> None:
    """An OCI archive of just ``components`` onto ``out`` (a stream: tar mode ``w|``)."""
    with tarfile.open(fileobj=out, mode="w|") as tar:
        for name, data in (
            ("oci-layout", (images.layout / "oci-layout").read_bytes()),
            ("index.json", _index_for(images, components)),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for digest in images.blobs(components):
            path = _blob_path(images.layout, digest)
            tar.add(path, arcname=f"blobs/sha256/{path.name}")


def _import(argv: list[str], images: StackImages, components: list[str]) -> None:
    """Stream an archive of ``components`` into ``argv`` (a ``ctr images import -`` command line)."""
    # Output to a file, not a pipe: nothing has to be read while the archive is being written.
    with tempfile.TemporaryFile() as output:
        with subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=output, stderr=subprocess.STDOUT) as proc:
            assert proc.stdin is not None
            try:
                _write_archive(proc.stdin, images, components)
                proc.stdin.close()
            except BrokenPipeError:
                pass  # ctr ended early: its exit status and output say why
            returncode = proc.wait(timeout=300)
        if returncode != 0:
            output.seek(0)
            raise StackImageError(f"{' '.join(argv)} failed ({returncode}):\n{output.read().decode(errors='replace')}")


def _wanted(components: Iterable[str]) -> list[str]:
    wanted = list(dict.fromkeys(components))
    unknown = set(wanted) - set(COMPONENTS)
    if unknown or not wanted:
        raise ValueError(f"components must be some of {', '.join(COMPONENTS)}; got {wanted}")
    return wanted


async def import_stack_images(node: RealNode, images: StackImages, components: Iterable[str] = COMPONENTS) -> float:
    """Import ``components`` (default: all five) into the running containerd of ``node``; returns the seconds it
    took. Only those images' blobs are sent. containerd unpacks every layer it has not got yet (seconds per image
    here): to start nodes with images, seed them from a :func:`build_node_root_template` instead."""
    wanted = _wanted(components)
    start = time.monotonic()
    await asyncio.to_thread(_import, node.ctr_argv("images", "import", "-"), images, wanted)
    return time.monotonic() - start


@dataclass(frozen=True)
class NodeRootTemplate:
    """A containerd root in which ``components`` are imported and unpacked (namespace k8s.io, overlayfs), to seed
    real nodes' roots from (``RealNode(seed_root=template.root)``); ``import_s`` is what making it took."""

    root: Path
    components: tuple[str, ...]
    import_s: float


_TEMPLATE_CONFIG = """version = 2
root = "{root}"
state = "{state}"
# Only the content store, the metadata and the overlayfs snapshotter are used: no CRI, no network, no containers.
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "{socket}"

[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = "{opt}"
"""


def build_node_root_template(images: StackImages, components: Iterable[str], work_dir: Path) -> NodeRootTemplate:
    """Import ``components`` once into a private containerd (no CRI: it runs nothing) under ``work_dir`` and
    stop it; its root is the template. Real nodes seeded from it start with the images unpacked, by hard links."""
    wanted = _wanted(components)
    work_dir.mkdir(parents=True, exist_ok=True)
    # Unix socket paths are limited to 107 bytes: the socket goes into a short directory of its own.
    run_dir = Path(tempfile.mkdtemp(prefix="hami-tmpl-", dir="/tmp"))
    root = work_dir / "root"
    config = work_dir / "config.toml"
    socket = run_dir / "containerd.sock"
    config.write_text(_TEMPLATE_CONFIG.format(root=root, state=run_dir / "state", socket=socket, opt=work_dir / "opt"))
    ctr = ["ctr", f"--address={socket}", "--namespace=k8s.io"]
    start = time.monotonic()
    with (work_dir / "containerd.log").open("wb") as log:
        containerd = subprocess.Popen(["containerd", "--config", str(config)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while subprocess.run([*ctr, "version"], capture_output=True, check=False).returncode != 0:
            if containerd.poll() is not None or time.monotonic() > deadline:
                raise StackImageError(f"the template's containerd did not start; see {work_dir / 'containerd.log'}")
            time.sleep(0.05)
        _import([*ctr, "images", "import", "-"], images, wanted)
    finally:
        containerd.terminate()
        try:
            containerd.wait(timeout=30)
        except subprocess.TimeoutExpired:
            containerd.kill()
            containerd.wait()
        shutil.rmtree(run_dir, ignore_errors=True)
    return NodeRootTemplate(root, tuple(wanted), time.monotonic() - start)


def layout_size(images: StackImages, components: Iterable[str] = COMPONENTS) -> int:
    """Bytes of the blobs ``components`` consist of (shared layers counted once): what an import sends."""
    return sum(_blob_path(images.layout, d).stat().st_size for d in images.blobs(components))
