"""The NVIDIA container toolkit's test double (e2e_harness/nvidia_toolkit_double.py) on its own: the real
toolkit's device-list rules, what a GPU container's spec gains, and that it hands runc exactly the arguments
it got (no cluster needed; the real-node tests run it under containerd)."""

from __future__ import annotations

import copy
import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from e2e_harness import nvidia_toolkit_double as double

ROOT = Path(__file__).resolve().parents[2]

GPU_A = "GPU-aaaaaaaa-0000-4000-8000-000000000000"
GPU_B = "GPU-aaaaaaaa-0000-4000-8000-000000000001"


def spec(
    env: dict[str, str] | None = None, *, privileged: bool = False, mounts: tuple[str, ...] = ()
) -> dict[str, Any]:
    bounding = ["CAP_CHOWN", "CAP_KILL"] + (["CAP_SYS_ADMIN"] if privileged else [])
    return {
        "ociVersion": "1.0.2",
        "process": {
            "args": ["/bin/true"],
            "env": [f"{k}={v}" for k, v in (env or {}).items()],
            "capabilities": {"bounding": bounding},
        },
        "mounts": [{"destination": d, "type": "bind", "source": "/dev/null", "options": ["ro"]} for d in mounts],
    }


@pytest.mark.parametrize(
    ("value", "devices"),
    [
        (None, None),
        ("", None),
        ("void", None),
        ("none", ()),
        ("all", ("all",)),
        (GPU_A, (GPU_A,)),
        (f"{GPU_A}, {GPU_B}", (GPU_A, GPU_B)),
        ("0,1", ("0", "1")),
    ],
)
def test_visible_devices_envvar(value: str | None, devices: tuple[str, ...] | None) -> None:
    env = {} if value is None else {"NVIDIA_VISIBLE_DEVICES": value}
    assert double.decide(spec(env), double.ToolkitConfig()).devices == devices


def test_envvar_of_unprivileged_containers_is_ignored_unless_accepted() -> None:
    strict = double.ToolkitConfig(accept_envvar_unprivileged=False)
    env = {"NVIDIA_VISIBLE_DEVICES": GPU_A}
    assert double.decide(spec(env), strict).devices is None
    assert double.decide(spec(env, privileged=True), strict).devices == (GPU_A,)
    assert double.decide(spec(env), double.ToolkitConfig()).devices == (GPU_A,)  # default: accepted


def test_volume_mount_device_list_wins_when_enabled() -> None:
    mounts = (f"/var/run/nvidia-container-devices/{GPU_B}", "/etc/hosts")
    s = spec({"NVIDIA_VISIBLE_DEVICES": GPU_A}, mounts=mounts)
    assert double.decide(s, double.ToolkitConfig(accept_volume_mounts=True)) == double.Decision(
        (GPU_B,), "volume-mounts"
    )
    assert double.decide(s, double.ToolkitConfig()).devices == (GPU_A,)
    # Enabled, but the container has no such mount: the env var decides.
    s = spec({"NVIDIA_VISIBLE_DEVICES": GPU_A}, mounts=("/etc/hosts",))
    assert double.decide(s, double.ToolkitConfig(accept_volume_mounts=True)).devices == (GPU_A,)


def config(tmp_path: Path) -> double.ToolkitConfig:
    return double.ToolkitConfig(
        libraries=("/opt/fake/libcuda.so.1", "/opt/fake/libnvidia-ml.so.1"),
        fake_config=str(tmp_path / "node.conf"),
        state_file=str(tmp_path / "gpu.state"),
    )


def test_gpu_container_gets_the_fake_driver(tmp_path: Path) -> None:
    s = spec({"NVIDIA_VISIBLE_DEVICES": GPU_A, "PATH": "/bin"})
    decision = double.modify_spec(s, config(tmp_path), "/bundle/hami-fake-gpus.conf")
    assert decision.devices == (GPU_A,)
    mounts = {m["destination"]: m for m in s["mounts"]}
    assert mounts["/usr/lib/x86_64-linux-gnu/libcuda.so.1"]["source"] == "/opt/fake/libcuda.so.1"
    assert "ro" in mounts["/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1"]["options"]
    assert mounts["/run/hami-fake-driver/gpus.conf"]["source"] == "/bundle/hami-fake-gpus.conf"
    assert mounts["/run/hami-fake-driver/gpu.state"]["source"] == str(tmp_path / "gpu.state")
    assert "rw" in mounts["/run/hami-fake-driver/gpu.state"]["options"]
    assert mounts["/run/hami-fake-driver/host-proc"]["source"] == "/proc"
    assert "ro" in mounts["/run/hami-fake-driver/host-proc"]["options"]
    assert s["process"]["env"] == [
        f"NVIDIA_VISIBLE_DEVICES={GPU_A}",
        "PATH=/bin",
        "FAKE_NVML_CONFIG=/run/hami-fake-driver/gpus.conf",
    ]
    assert s["annotations"][double.DEVICES_ANNOTATION] == GPU_A


def test_other_containers_are_left_alone(tmp_path: Path) -> None:
    for env in ({}, {"NVIDIA_VISIBLE_DEVICES": "void"}):
        s = spec(env)
        before = copy.deepcopy(s)
        assert double.modify_spec(s, config(tmp_path), None).devices is None
        assert s == before


GPU_C = "GPU-aaaaaaaa-0000-4000-8000-000000000002"
NODE_CONFIG = (
    "# the node's three GPUs\n"
    f"FAKE_GPU_COUNT=3\nFAKE_GPU_UUIDS={GPU_A},{GPU_B},{GPU_C}\nFAKE_GPU_MEMORY_MIB=8192,16384,4096\n"
    "FAKE_GPU_NAMES=NVIDIA A100\nFAKE_GPU_STATE_FILE=/host/node/gpu.state\nFAKE_GPU_HOST_PROC=/x\n"
)


def test_container_sees_only_its_visible_gpus_each_at_its_node_state_slot(tmp_path: Path) -> None:
    text = double.container_fake_config(NODE_CONFIG, config(tmp_path), (GPU_C, "0"))
    assert double.parse_fake_config(text) == {
        "FAKE_GPU_COUNT": "2",
        "FAKE_GPU_UUIDS": f"{GPU_A},{GPU_C}",
        "FAKE_GPU_MEMORY_MIB": "8192,4096",
        "FAKE_GPU_NAMES": "NVIDIA A100",  # one item applies to every GPU
        "FAKE_GPU_MINOR_NUMBERS": "0,2",  # index defaults made explicit: they must not shift
        "FAKE_GPU_SERIALS": "FAKE00000000,FAKE00000002",
        "FAKE_GPU_PCI_BUS_IDS": "00000000:10:00,00000000:12:00",
        "FAKE_GPU_STATE_SLOTS": "0,2",
        "FAKE_GPU_STATE_FILE": "/run/hami-fake-driver/gpu.state",
        "FAKE_GPU_HOST_PROC": "/run/hami-fake-driver/host-proc",
    }


@pytest.mark.parametrize(
    ("devices", "count", "slots"),
    [(("all",), "3", "0,1,2"), (("none",), "0", ""), (("GPU-aaaaaaaa-0000-4000-8000-000000000001",), "1", "1")],
)
def test_device_lists(devices: tuple[str, ...], count: str, slots: str, tmp_path: Path) -> None:
    chosen = () if devices == ("none",) else devices
    parsed = double.parse_fake_config(double.container_fake_config(NODE_CONFIG, config(tmp_path), chosen))
    assert (parsed["FAKE_GPU_COUNT"], parsed["FAKE_GPU_STATE_SLOTS"]) == (count, slots)


def test_unknown_or_ambiguous_device_fails_the_create(tmp_path: Path) -> None:
    for device in ("GPU-ffff", "GPU-aaaaaaaa", "7"):
        with pytest.raises(double.UnknownDeviceError):
            double.container_fake_config(NODE_CONFIG, config(tmp_path), (device,))


def test_a_mig_device_gives_the_container_its_parent_gpu(tmp_path: Path) -> None:
    # the fake NVML's MIG UUID of GPU C's GPU instance 1, compute instance 0 (hamicore/tests/README.md)
    mig = "MIG-aaaaaaaa-0100-4000-8000-000000000002"
    parsed = double.parse_fake_config(double.container_fake_config(NODE_CONFIG, config(tmp_path), (mig,)))
    assert (parsed["FAKE_GPU_COUNT"], parsed["FAKE_GPU_STATE_SLOTS"], parsed["FAKE_GPU_UUIDS"]) == ("1", "2", GPU_C)
    with pytest.raises(double.UnknownDeviceError):
        double.container_fake_config(NODE_CONFIG, config(tmp_path), ("MIG-bbbbbbbb-0100-4000-8000-000000000002",))


def test_default_uuids_are_the_fake_drivers(tmp_path: Path) -> None:
    text = double.container_fake_config("FAKE_GPU_COUNT=2\n", config(tmp_path), ("1",))
    assert double.parse_fake_config(text)["FAKE_GPU_UUIDS"] == "GPU-fa4e0000-0000-4000-8000-000000000001"


def test_a_container_allocation_shows_on_its_node_gpu(tmp_path: Path) -> None:
    """The fake driver with the container's description (only node GPU 2, as its device 0) and the node's shared
    state: memory a container process holds is used memory of node GPU 2 for the node's other processes."""
    probe = ROOT / "hamicore" / "build" / "tests" / "cuda_probe"
    state = tmp_path / "gpu.state"
    node_text = NODE_CONFIG.replace("/host/node/gpu.state", str(state)).replace("FAKE_GPU_HOST_PROC=/x\n", "")
    (tmp_path / "node.conf").write_text(node_text)
    toolkit = double.ToolkitConfig(state_file=str(state), host_proc=False)
    container_text = double.container_fake_config(node_text, toolkit, (GPU_C,)).replace(
        "/run/hami-fake-driver/gpu.state", str(state)
    )
    (tmp_path / "container.conf").write_text(container_text)
    fake_env = {"LD_LIBRARY_PATH": str(ROOT / "hamicore" / "build" / "fake"), "PATH": os.environ["PATH"]}
    holder = subprocess.Popen(
        [str(probe), "init", "ctx", "0", "total", "0", "alloc", "3000m", "hold"],
        env=fake_env | {"FAKE_NVML_CONFIG": str(tmp_path / "container.conf")},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        lines = [json.loads(holder.stdout.readline()) for _ in range(4)]
        assert lines[2] == {"cmd": "total", "rc": 0, "total": 4096 << 20}  # its device 0 is node GPU 2
        assert lines[3] == {"cmd": "alloc", "rc": 0, "id": 0}
        node_view = subprocess.run(
            [str(probe), "init", "ctx", "2", "info", "ctx", "0", "info"],
            env=fake_env | {"FAKE_NVML_CONFIG": str(tmp_path / "node.conf")},
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        infos = [json.loads(line) for line in node_view.stdout.splitlines() if '"info"' in line]
        # Each context costs device memory, as on a real card (the double's default, FAKE_GPU_CONTEXT_MIB): on node
        # GPU 2 the holder's context and 3000 MiB plus the viewer's own context; on GPU 0 the viewer's context.
        context = 300
        assert [(i["total"] - i["free"]) >> 20 for i in infos] == [3000 + 2 * context, context]
    finally:
        holder.kill()
        holder.wait()
        assert holder.stdout is not None
        holder.stdout.close()


@pytest.mark.parametrize(
    ("argv", "command", "bundle"),
    [
        (["--root", "/r", "--log", "/l", "--log-format", "json", "create", "--bundle", "/b", "--pid-file", "p", "id"],
         "create", "/b"),
        (["create", "--bundle=/b2", "id"], "create", "/b2"),
        (["--systemd-cgroup", "create", "-b", "/b3", "id"], "create", "/b3"),
        (["create", "id"], "create", "."),
        (["--root", "/r", "state", "id"], "state", "."),
        (["--version"], None, "."),
    ],
)  # fmt: skip
def test_runc_argv(argv: list[str], command: str | None, bundle: str) -> None:
    assert double.runc_command(argv) == (command, bundle)


def test_create_edits_the_bundle_then_execs_runc_with_the_same_arguments(tmp_path: Path) -> None:
    fake_runc = tmp_path / "runc"
    record = tmp_path / "runc-saw.json"
    fake_runc.write_text(
        f"#!{sys.executable}\nimport json, sys\n"
        f"spec = json.load(open('{tmp_path}/bundle/config.json'))\n"
        f"json.dump({{'argv': sys.argv[1:], 'spec': spec}}, open('{record}', 'w'))\n"
    )
    fake_runc.chmod(fake_runc.stat().st_mode | stat.S_IXUSR)
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "config.json").write_text(json.dumps(spec({"NVIDIA_VISIBLE_DEVICES": GPU_A})))
    (tmp_path / "node.conf").write_text(f"FAKE_GPU_COUNT=1\nFAKE_GPU_UUIDS={GPU_A}\n")
    config_dir = tmp_path / "xdg" / "nvidia-container-runtime"
    config_dir.mkdir(parents=True)
    (config_dir / "config.toml").write_text(
        f'[nvidia-container-runtime]\nruntimes = ["{fake_runc}"]\ndebug = "{tmp_path}/double.log"\n'
        f'[fake-driver]\nlibraries = ["/opt/fake/libcuda.so.1"]\nconfig = "{tmp_path}/node.conf"\n'
    )
    argv = ["--root", "/run/runc", "--log", "/l.json", "create", "--bundle", str(bundle), "ctr-1"]
    env = {"PATH": os.environ["PATH"], "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    subprocess.run([sys.executable, double.__file__, *argv], env=env, check=True, timeout=30)
    saw = json.loads(record.read_text())
    assert saw["argv"] == argv
    destinations = {m["destination"] for m in saw["spec"]["mounts"]}
    assert "/usr/lib/x86_64-linux-gnu/libcuda.so.1" in destinations
    assert (bundle / "hami-fake-gpus.conf").read_text().startswith("FAKE_GPU_COUNT=1\n")
    [logged] = [json.loads(line) for line in (tmp_path / "double.log").read_text().splitlines()]
    assert (logged["event"], logged["devices"]) == ("create", [GPU_A])

    # Any other command reaches runc untouched.
    subprocess.run([sys.executable, double.__file__, "state", "ctr-1"], env=env, check=True, timeout=30)
    assert json.loads(record.read_text())["argv"] == ["state", "ctr-1"]
