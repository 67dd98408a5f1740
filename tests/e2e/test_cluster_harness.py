"""The harness's own pure parts and the localcluster command line: environment and mount mapping for commands
run by the kubelet stand-in, and clear errors for bad localcluster flags."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from e2e_harness.cluster import DEFAULT_BINARY
from e2e_harness.kubelet_standin import ContainerAllocation, MountSpec, container_environment, namespace_argv


def allocation(envs: dict[str, str], mounts: list[tuple[str, str]]) -> ContainerAllocation:
    return ContainerAllocation(
        container="main",
        init_container=False,
        resource="e2e.example.com/widget",
        device_ids=("w0",),
        envs=envs,
        mounts=tuple(MountSpec(c, h, True) for c, h in mounts),
        device_specs=(("/dev/widget0", "/dev/null", "rw"),),
        annotations={},
    )


def test_spec_env_wins_over_allocate_env_and_paths_are_mapped(tmp_path: Path) -> None:
    env = container_environment(
        {"PATH": "/usr/bin"},
        [
            allocation(
                {"LIB": "/usr/local/vgpu/libvgpu.so", "MODE": "plugin", "LIST": "/usr/local/vgpu:/opt"},
                [("/usr/local/vgpu", str(tmp_path / "vgpu"))],
            )
        ],
        [{"name": "MODE", "value": "spec"}, {"name": "FROM_FIELD", "valueFrom": {"fieldRef": {}}}],
    )
    assert env["PATH"] == "/usr/bin"
    assert env["MODE"] == "spec"
    assert env["LIB"] == f"{tmp_path}/vgpu/libvgpu.so"
    assert env["LIST"] == f"{tmp_path}/vgpu:/opt"
    assert "FROM_FIELD" not in env
    assert json.loads(env["HAMI_E2E_MOUNTS"]) == {"/usr/local/vgpu": str(tmp_path / "vgpu")}
    assert json.loads(env["HAMI_E2E_DEVICES"])[0]["container_path"] == "/dev/widget0"


def test_ld_so_preload_mount_becomes_ld_preload(tmp_path: Path) -> None:
    preload = tmp_path / "ld.so.preload"
    preload.write_text("/usr/local/vgpu/libvgpu.so\n")
    env = container_environment(
        {},
        [allocation({}, [("/etc/ld.so.preload", str(preload)), ("/usr/local/vgpu", str(tmp_path / "lib"))])],
        [],
    )
    assert env["LD_PRELOAD"] == f"{tmp_path}/lib/libvgpu.so"


def test_the_longest_mount_prefix_wins() -> None:
    env = container_environment({}, [allocation({"P": "/a/b/c"}, [("/a", "/host-a"), ("/a/b", "/host-ab")])], [])
    assert env["P"] == "/host-ab/c"


def binary() -> str:
    return os.environ.get("LOCALCLUSTER_BIN", str(DEFAULT_BINARY))


def test_a_spec_mount_is_real_and_read_only_in_a_private_mount_namespace(tmp_path: Path) -> None:
    """hamicore reads its spec at a fixed path, so the stand-in mounts it for real (with the directory mounts the
    spec names), read-only, visible to the container's process only."""
    spec, cache = tmp_path / "c.spec", tmp_path / "c"
    spec.write_text("spec")
    cache.mkdir()
    (cache / "region.cache").write_text("counters")
    container_dir = tmp_path / "in-container"
    mounts = (MountSpec(str(container_dir), str(cache), False), MountSpec("/etc/hami/vgpu.spec", str(spec), True))
    script = (f"cat /etc/hami/vgpu.spec {container_dir}/region.cache; echo; "
              "echo x > /etc/hami/vgpu.spec 2>/dev/null && echo writable; echo \"$LD_PRELOAD\"")
    argv, env = namespace_argv(["sh", "-c", script], {"PATH": os.environ["PATH"], "LD_PRELOAD": ""}, mounts)
    out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.splitlines() == ["speccounters", ""]  # read, not writable, no preload for mount itself
    assert spec.read_text() == "spec"
    assert not any(container_dir.iterdir())  # the host's mount point stays empty
    # Without a spec mount nothing changes: env-mapped paths as before.
    assert namespace_argv(["true"], {"A": "b"}, mounts[:1]) == (["true"], {"A": "b"})


def test_localcluster_requires_a_data_dir() -> None:
    result = subprocess.run([binary()], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    assert "--data-dir is required" in result.stderr


def test_localcluster_names_a_missing_scheduler_config(tmp_path: Path) -> None:
    result = subprocess.run(
        [binary(), f"--data-dir={tmp_path}", f"--scheduler-config={tmp_path / 'nope.yaml'}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "--scheduler-config" in result.stderr
    assert "nope.yaml" in result.stderr


def test_localcluster_stops_cleanly_on_sigterm_during_start_up(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [binary(), f"--data-dir={tmp_path}"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        # Wait until it is inside start-up (keys generated), not yet ready.
        while not (tmp_path / "pki" / "tokens.csv").exists() and proc.poll() is None:
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out
    assert "stop" in out
    assert not (tmp_path / "ready.json").exists()
