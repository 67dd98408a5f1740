"""Where the plugin asks kubelet which pod it is admitting: ``--pod-resources-socket`` (flag, env, config file),
``--pod-resources-timeout``, and ``--no-pod-resources`` (never ask)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hami_device_plugin.app.settings import PROGRAM
from hami_shared.config import ConfigError

BASE = ["--node-name=n"]


def test_default_is_the_kubelets_own_path_and_flag_env_and_file_move_it(tmp_path: Path) -> None:
    default = PROGRAM.load_settings(BASE, environ={})
    assert default.pod_resources_socket == Path("/var/lib/kubelet/pod-resources/kubelet.sock")
    assert default.pod_resources_timeout == 1.0
    flag = PROGRAM.load_settings([*BASE, "--pod-resources-socket=/srv/kubelet/pod-resources/kubelet.sock"], {})
    assert flag.pod_resources_socket == Path("/srv/kubelet/pod-resources/kubelet.sock")
    env = PROGRAM.load_settings(BASE, {"HAMI_DEVICE_PLUGIN_POD_RESOURCES_SOCKET": "/k/pod-resources/kubelet.sock"})
    assert env.pod_resources_socket == Path("/k/pod-resources/kubelet.sock")
    config = tmp_path / "config.yaml"
    config.write_text("version: v1\npod-resources-socket: /f/kubelet.sock\npod-resources-timeout: 0.5\n")
    from_file = PROGRAM.load_settings([*BASE, f"--config={config}"], environ={})
    assert (from_file.pod_resources_socket, from_file.pod_resources_timeout) == (Path("/f/kubelet.sock"), 0.5)


def test_asking_is_the_default_and_can_be_turned_off() -> None:
    assert PROGRAM.load_settings(BASE, environ={}).pod_resources
    assert not PROGRAM.load_settings([*BASE, "--no-pod-resources"], environ={}).pod_resources
    assert not PROGRAM.load_settings(BASE, {"HAMI_DEVICE_PLUGIN_POD_RESOURCES": "false"}).pod_resources


@pytest.mark.parametrize("socket", ["", "kubelet.sock"])
def test_a_socket_path_that_is_not_absolute_is_refused(socket: str) -> None:
    with pytest.raises(ConfigError, match="must be an absolute path"):
        PROGRAM.load_settings([*BASE, f"--pod-resources-socket={socket}"], environ={})


@pytest.mark.parametrize("timeout", ["0", "31", "-1"])
def test_a_timeout_that_could_stall_kubelet_or_never_answer_is_refused(timeout: str) -> None:
    with pytest.raises((ConfigError, SystemExit)):
        PROGRAM.load_settings([*BASE, f"--pod-resources-timeout={timeout}"], environ={})
