/* vk_guard.c - keeps the Vulkan layer loadable in a container whose spec asks for it. The Vulkan loader
 * decides from the environment whether to load an implicit layer (the manifest's enable/disable variables,
 * VK_LOADER_LAYERS_DISABLE, VK_IMPLICIT_LAYER_PATH), and the pod controls its environment. Before main,
 * while the process is single-threaded, libvgpu.so puts those variables back to what loads the layer when
 * the device plugin's spec (which the pod cannot change) says the container uses Vulkan. Costs nothing in
 * the usual case: the spec is read only when one of the variables is set. */
#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "log.h"
#include "spec_layout.h"

static const char *const g_disabling[] = {"HAMI_VULKAN_DISABLE", "VK_LOADER_LAYERS_DISABLE", "VK_IMPLICIT_LAYER_PATH"};

__attribute__((constructor)) static void hami_vk_guard(void) {
    const char *enable = getenv("HAMI_VULKAN_ENABLE");
    int tampered = enable && strcmp(enable, "1") != 0;
    for (size_t i = 0; i < sizeof g_disabling / sizeof g_disabling[0]; i++) tampered |= getenv(g_disabling[i]) != NULL;
    if (!tampered) return;
    const struct hami_config *c = hami_config_get();
    if (!c->from_spec || !(c->spec_flags & HAMI_SPEC_VULKAN) || !c->active) return;
    for (size_t i = 0; i < sizeof g_disabling / sizeof g_disabling[0]; i++) unsetenv(g_disabling[i]);
    setenv("HAMI_VULKAN_ENABLE", "1", 1);
    HAMI_WARN("ignoring HAMI_VULKAN_ENABLE/HAMI_VULKAN_DISABLE, VK_LOADER_LAYERS_DISABLE and VK_IMPLICIT_LAYER_PATH: "
              "the device plugin's spec %s says this container's Vulkan memory is limited", HAMI_SPEC_PATH);
}
