/* spec.h - finds, verifies and decodes the per-container enforcement spec (spec_layout.h).
 * Runs once per process, at configuration time; never on a hot path. */
#ifndef HAMI_SPEC_H
#define HAMI_SPEC_H

#include <stddef.h>

#include "spec_layout.h"

enum { HAMI_SPEC_ABSENT = 0, HAMI_SPEC_LOADED = 1, HAMI_SPEC_REFUSED = -1 };

/* Decode a spec image (pure): HAMI_SPEC_LOADED and *out filled, or HAMI_SPEC_REFUSED with the reason. */
int hami_spec_decode(const void *data, size_t len, struct hami_spec *out, char *err, size_t errlen);

/* Whether the topmost mount at `path` in a /proc/<pid>/mountinfo text is a read-only mount of its own
 * (the file is bind-mounted there, not a file of the image): 1 yes, 0 no. Pure. */
int hami_spec_mountinfo_readonly(const char *mountinfo, const char *path);

/* Look for the spec at `path`: ABSENT when no file is there; LOADED when it is a read-only mount of its own
 * and decodes; REFUSED (reason in err) when a file is there but cannot be trusted or read. */
int hami_spec_load(const char *path, struct hami_spec *out, char *err, size_t errlen);

#endif
