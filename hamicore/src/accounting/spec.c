/* spec.c - see spec.h. A spec is trusted only when it is its own read-only mount (the device plugin's
 * bind mount): a file that came with the image, or one the container wrote, is not a mount point and is
 * refused, so a container cannot give itself a spec. Bounded reads: at most HAMI_SPEC_MAX_BYTES of the
 * spec, mountinfo line by line. */
#define _GNU_SOURCE
#include "spec.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

int hami_spec_decode(const void *data, size_t len, struct hami_spec *out, char *err, size_t errlen) {
    struct hami_spec s;
    if (!data || !out || len < offsetof(struct hami_spec, flags)) {
        snprintf(err, errlen, "the spec has %zu bytes, fewer than its header", len);
        return HAMI_SPEC_REFUSED;
    }
    memset(&s, 0, sizeof s);
    memcpy(&s, data, len < sizeof s ? len : sizeof s);
    if (s.magic != HAMI_SPEC_MAGIC) {
        snprintf(err, errlen, "not a hamicore spec (bad magic)");
        return HAMI_SPEC_REFUSED;
    }
    if (s.version_major != HAMI_SPEC_VERSION_MAJOR) {
        snprintf(err, errlen, "spec version %u.%u, this library reads version %u.x", s.version_major,
                 s.version_minor, HAMI_SPEC_VERSION_MAJOR);
        return HAMI_SPEC_REFUSED;
    }
    if (len < sizeof s || s.spec_size < sizeof s || s.spec_size != len) {
        snprintf(err, errlen, "spec of %zu bytes says %u, version %u.%u needs at least %zu", len, s.spec_size,
                 s.version_major, s.version_minor, sizeof s);
        return HAMI_SPEC_REFUSED;
    }
    if (s.device_count == 0 || s.device_count > HAMI_MAX_DEVICES) {
        snprintf(err, errlen, "spec names %u GPUs, not 1..%d", s.device_count, HAMI_MAX_DEVICES);
        return HAMI_SPEC_REFUSED;
    }
    if (s.task_priority < 0 || s.task_priority > 100 || s.core_policy > HAMI_CORE_POLICY_DISABLE) {
        snprintf(err, errlen, "spec priority %d or core policy %u out of range", s.task_priority, s.core_policy);
        return HAMI_SPEC_REFUSED;
    }
    if (memchr(s.region_path, '\0', sizeof s.region_path) == NULL || s.region_path[0] != '/') {
        snprintf(err, errlen, "spec region path is not an absolute, NUL-terminated path");
        return HAMI_SPEC_REFUSED;
    }
    /* Percentages of 100 or more mean no limit, as CUDA_DEVICE_SM_LIMIT does. */
    if (s.default_sm_limit_percent >= 100) s.default_sm_limit_percent = 0;
    for (unsigned i = 0; i < HAMI_MAX_DEVICES; i++) {
        if (s.devices[i].sm_limit_percent >= 100) s.devices[i].sm_limit_percent = 0;
        if (i >= s.device_count) memset(&s.devices[i], 0, sizeof s.devices[i]);
    }
    *out = s;
    return HAMI_SPEC_LOADED;
}

/* mountinfo escapes space, tab, newline and backslash as \ooo. */
static void unescape(char *s) {
    char *w = s;
    for (const char *r = s; *r; r++) {
        if (r[0] == '\\' && r[1] >= '0' && r[1] <= '3' && r[2] >= '0' && r[2] <= '7' && r[3] >= '0' && r[3] <= '7') {
            *w++ = (char)(((r[1] - '0') << 6) | ((r[2] - '0') << 3) | (r[3] - '0'));
            r += 3;
        } else {
            *w++ = *r;
        }
    }
    *w = '\0';
}

/* Fields 5 (mount point) and 6 (per-mount options) of one mountinfo line; 0 when malformed. */
static int mount_fields(char *line, char **point, char **options) {
    char *save = NULL, *tok = strtok_r(line, " \n", &save);
    for (int field = 1; tok; field++, tok = strtok_r(NULL, " \n", &save)) {
        if (field == 5) *point = tok;
        if (field == 6) {
            *options = tok;
            return 1;
        }
    }
    return 0;
}

static int first_option_is_ro(const char *options) {
    return strncmp(options, "ro", 2) == 0 && (options[2] == ',' || options[2] == '\0');
}

/* One mountinfo line (modified in place): when it is a mount at `path`, note whether it is read-only. Later
 * lines are mounted on top of earlier ones, so the last match is what `path` shows. */
static void note_line(char *line, const char *path, int *found, int *readonly) {
    char *point = NULL, *options = NULL;
    if (!mount_fields(line, &point, &options)) return;
    unescape(point);
    if (strcmp(point, path) != 0) return;
    *found = 1;
    *readonly = first_option_is_ro(options);
}

int hami_spec_mountinfo_readonly(const char *mountinfo, const char *path) {
    if (!mountinfo || !path) return 0;
    int found = 0, readonly = 0;
    char line[8192];
    for (const char *p = mountinfo; *p;) {
        const char *end = strchr(p, '\n');
        size_t n = end ? (size_t)(end - p) : strlen(p);
        if (n < sizeof line) {
            memcpy(line, p, n);
            line[n] = '\0';
            note_line(line, path, &found, &readonly);
        }
        p += n + (end ? 1 : 0);
    }
    return found && readonly;
}

/* The same check streaming /proc/self/mountinfo (it can be long on a node). */
static int self_mount_readonly(const char *path, char *err, size_t errlen) {
    FILE *f = fopen("/proc/self/mountinfo", "re");
    if (!f) {
        snprintf(err, errlen, "cannot read /proc/self/mountinfo to check the spec's mount: %s", strerror(errno));
        return 0;
    }
    int found = 0, readonly = 0;
    char *line = NULL;
    size_t cap = 0;
    while (getline(&line, &cap, f) > 0) note_line(line, path, &found, &readonly);
    free(line);
    fclose(f);
    if (!found) snprintf(err, errlen, "%s is not a mount of its own (a file of the image or the container?)", path);
    else if (!readonly) snprintf(err, errlen, "%s is mounted read-write", path);
    return found && readonly;
}

int hami_spec_load(const char *path, struct hami_spec *out, char *err, size_t errlen) {
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
    if (fd < 0) {
        if (errno == ENOENT || errno == ENOTDIR) return HAMI_SPEC_ABSENT;
        snprintf(err, errlen, "cannot open %s: %s", path, strerror(errno));
        return HAMI_SPEC_REFUSED;
    }
    struct stat st;
    struct statvfs vfs;
    int rc = HAMI_SPEC_REFUSED;
    char *buf = NULL;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        snprintf(err, errlen, "%s is not a regular file", path);
    } else if (fstatvfs(fd, &vfs) != 0 || !(vfs.f_flag & ST_RDONLY)) {
        snprintf(err, errlen, "%s is on a writable file system, not the device plugin's read-only mount", path);
    } else if (self_mount_readonly(path, err, errlen)) {
        if (st.st_size <= 0 || st.st_size > HAMI_SPEC_MAX_BYTES) {
            snprintf(err, errlen, "%s has %lld bytes, not 1..%d", path, (long long)st.st_size, HAMI_SPEC_MAX_BYTES);
        } else if ((buf = malloc((size_t)st.st_size)) == NULL) {
            snprintf(err, errlen, "out of memory reading %s", path);
        } else {
            size_t got = 0;
            while (got < (size_t)st.st_size) {
                ssize_t n = read(fd, buf + got, (size_t)st.st_size - got);
                if (n < 0 && errno == EINTR) continue;
                if (n <= 0) break;
                got += (size_t)n;
            }
            rc = hami_spec_decode(buf, got, out, err, errlen);
        }
    }
    free(buf);
    close(fd);
    return rc;
}
