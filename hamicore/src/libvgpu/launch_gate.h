/* launch_gate.h - the extension point of the kernel-launch hooks. With no SM
 * limit the gate is NULL and a launch costs one relaxed load and a branch
 * beyond the driver call. The compute limiter installs its function here. */
#ifndef HAMI_LAUNCH_GATE_H
#define HAMI_LAUNCH_GATE_H

#include <stdatomic.h>

#include "driver_api.h"

/* Called before a launch; grid and block are thread-block counts (x*y*z). */
typedef void (*hami_launch_gate_fn)(CUstream stream, unsigned long long grid, unsigned long long block);
extern _Atomic(hami_launch_gate_fn) hami_launch_gate;

#endif
