"""The installed layer manifest works with the real Vulkan loader (libvulkan1, via the `vulkan` cffi client).

The loader searches ``$XDG_DATA_HOME/vulkan/implicit_layer.d``, so pointing XDG_DATA_HOME at the
destination makes it read the installed ``hami.json``. The test layer library records, from its
constructor, that the loader opened it; its exports are not a real layer, so the loader then skips
it (fail-open) and the instance is still created.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

from hami_lib_installer.app.installer import install
from installer_testkit import CC, LibraryBuilder, settings

LAYER_C = """
#include <stdio.h>
#include <stdlib.h>
__attribute__((constructor)) static void loaded(void) {
    const char *marker = getenv("HAMI_TEST_LAYER_MARKER");
    FILE *f = marker ? fopen(marker, "a") : NULL;
    if (f) { fprintf(f, "%d\\n", BUILD_NUMBER); fclose(f); }
}
int hami_test_vk_version(void) { return BUILD_NUMBER; }
"""

CLIENT = """
import vulkan as vk
app = vk.VkApplicationInfo(sType=vk.VK_STRUCTURE_TYPE_APPLICATION_INFO, pApplicationName="li-test",
                           apiVersion=vk.VK_MAKE_VERSION(1, 3, 0))
info = vk.VkInstanceCreateInfo(sType=vk.VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO, pApplicationInfo=app)
try:
    vk.vkDestroyInstance(vk.vkCreateInstance(info, None), None)
    print("instance created")
except vk.VkError as exc:
    print("instance not created:", type(exc).__name__)
"""


def layer_source(libs: LibraryBuilder, where: pathlib.Path, n: int) -> pathlib.Path:
    source = libs.source(where, n, version=f"{n}.0")
    c = where / "layer.c"
    c.write_text(LAYER_C.replace("BUILD_NUMBER", str(n)))
    subprocess.run(
        [CC, "-shared", "-fPIC", "-Wall", "-Werror", "-o", str(source / "libvgpu_vk.so"), str(c)], check=True
    )
    c.unlink()
    shutil.copytree(pathlib.Path(__file__).parent / "data" / "vulkan", source / "vulkan")
    return source


def loaded_versions(dest: pathlib.Path, tmp_path: pathlib.Path, **extra_env: str) -> list[str]:
    marker = tmp_path / "marker"
    marker.unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HAMI_", "VK_"))}
    env |= {"XDG_DATA_HOME": str(dest), "HAMI_TEST_LAYER_MARKER": str(marker), **extra_env}
    result = subprocess.run([sys.executable, "-c", CLIENT], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "instance created" in result.stdout, result.stdout + result.stderr
    return marker.read_text().split() if marker.exists() else []


def test_loader_finds_the_installed_layer_and_follows_upgrades(libs: LibraryBuilder, tmp_path: pathlib.Path) -> None:
    dest = tmp_path / "vgpu"
    install(settings(layer_source(libs, tmp_path / "src1", 1), dest))
    assert loaded_versions(dest, tmp_path, HAMI_VULKAN_ENABLE="1") == ["1"]
    assert loaded_versions(dest, tmp_path) == []  # the layer is opt-in (enable_environment)
    assert loaded_versions(dest, tmp_path, HAMI_VULKAN_ENABLE="1", HAMI_VULKAN_DISABLE="1") == []
    install(settings(layer_source(libs, tmp_path / "src2", 2), dest, gc_grace=300.0))
    assert loaded_versions(dest, tmp_path, HAMI_VULKAN_ENABLE="1") == ["2"]
