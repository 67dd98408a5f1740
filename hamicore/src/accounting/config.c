/* config.c - decides once per process (never on a hot path) what is enforced: the device plugin's
 * read-only spec (HAMI_SPEC_PATH) when it is there, with every contradicting environment variable ignored
 * (one warning) and CUDA_DISABLE_CONTROL honoured only where the spec allows it; otherwise
 * CUDA_DEVICE_MEMORY_LIMIT[_<i>], CUDA_DEVICE_SM_LIMIT[_<i>], CUDA_DEVICE_MEMORY_SHARED_CACHE,
 * CUDA_TASK_PRIORITY, GPU_CORE_UTILIZATION_POLICY and CUDA_OVERSUBSCRIBE. CUDA_VISIBLE_DEVICES is read either way. Bad values
 * are reported with what to change and then ignored; a spec that is there but unusable makes the
 * configuration fail closed; nothing here aborts. */
#define _GNU_SOURCE
#include "config.h"

#include <ctype.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "spec.h"

static struct hami_config g_config;
static pthread_once_t g_config_once = PTHREAD_ONCE_INIT;

int hami_parse_size(const char *text, uint64_t *out) {
    if (!text || !out) return -1;
    const char *p = text;
    while (isspace((unsigned char)*p)) p++;
    if (!isdigit((unsigned char)*p)) return -1;
    uint64_t value = 0;
    for (; isdigit((unsigned char)*p); p++) {
        uint64_t digit = (uint64_t)(*p - '0');
        if (value > (UINT64_MAX - digit) / 10) return -1;
        value = value * 10 + digit;
    }
    unsigned shift = 0;
    switch (tolower((unsigned char)*p)) {
    case 'k': shift = 10; p++; break;
    case 'm': shift = 20; p++; break;
    case 'g': shift = 30; p++; break;
    case 't': shift = 40; p++; break;
    default: break;
    }
    if (shift) {
        if (*p == 'i' || *p == 'I') p++;
        if (*p == 'b' || *p == 'B') p++;
    }
    while (isspace((unsigned char)*p)) p++;
    if (*p != '\0') return -1;
    if (shift && value > (UINT64_MAX >> shift)) return -1;
    *out = value << shift;
    return 0;
}

int hami_parse_uuid(const char *text, uint8_t out[HAMI_UUID_BYTES]) {
    if (!text || !out) return -1;
    const char *p = text;
    if (strncmp(p, "GPU-", 4) == 0) p += 4;
    int nibbles = 0;
    uint8_t bytes[HAMI_UUID_BYTES] = {0};
    for (; *p; p++) {
        if (*p == '-') continue;
        int v;
        if (*p >= '0' && *p <= '9') v = *p - '0';
        else if (*p >= 'a' && *p <= 'f') v = *p - 'a' + 10;
        else if (*p >= 'A' && *p <= 'F') v = *p - 'A' + 10;
        else return -1;
        if (nibbles >= 32) return -1;
        bytes[nibbles / 2] = (uint8_t)(bytes[nibbles / 2] | (v << ((nibbles % 2) ? 0 : 4)));
        nibbles++;
    }
    if (nibbles != 32) return -1;
    memcpy(out, bytes, HAMI_UUID_BYTES);
    return 0;
}

void hami_format_uuid(const uint8_t u[HAMI_UUID_BYTES], char *out, unsigned long size) {
    snprintf(out, size,
             "GPU-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
             u[0], u[1], u[2], u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11], u[12], u[13],
             u[14], u[15]);
}

int hami_parse_visible_devices(const char *text, struct hami_visible_entry *out, int max) {
    int count = 0;
    if (!text) return 0;
    const char *p = text;
    while (*p && count < max) {
        while (*p == ' ' || *p == ',') p++;
        if (!*p) break;
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        while (len > 0 && p[len - 1] == ' ') len--;
        struct hami_visible_entry e = {.index = -1};
        if (len > 0 && isdigit((unsigned char)p[0])) {
            char *stop = NULL;
            long v = strtol(p, &stop, 10);
            if ((size_t)(stop - p) != len || v < 0 || v > 1024) break; /* CUDA stops here too */
            e.index = (int)v;
        } else if (len > 4 && strncmp(p, "GPU-", 4) == 0 && len < sizeof e.uuid) {
            memcpy(e.uuid, p, len);
            e.uuid[len] = '\0';
        } else {
            break; /* MIG-... and anything else: unsupported, stop like CUDA does */
        }
        out[count++] = e;
        p += len;
    }
    return count;
}

static int read_limit(const char *name, uint64_t *out) {
    const char *v = getenv(name);
    if (!v || !*v) return 0;
    if (hami_parse_size(v, out) != 0) {
        HAMI_ERROR("%s='%s' is not a size: use integer bytes or a k/m/g suffix (e.g. 1024m); ignoring it",
                   name, v);
        return 0;
    }
    return 1;
}

static int read_percent(const char *name, uint32_t *out) {
    const char *v = getenv(name);
    if (!v || !*v) return 0;
    char *end = NULL;
    long p = strtol(v, &end, 10);
    if (!end || *end != '\0' || p < 0) {
        HAMI_ERROR("%s='%s' is not a percentage: use an integer 0..100 (0 or >=100 = no limit); ignoring it",
                   name, v);
        return 0;
    }
    *out = (p >= 100) ? 0u : (uint32_t)p;
    return 1;
}

static int env_true(const char *name) {
    const char *v = getenv(name);
    return v && (strcasecmp(v, "true") == 0 || strcmp(v, "1") == 0);
}

static void load_from_env(struct hami_config *c) {
    memset(c, 0, sizeof *c);
    int any_limit = 0;
    uint64_t all = 0;
    int have_all = read_limit("CUDA_DEVICE_MEMORY_LIMIT", &all);
    uint32_t sm_all = 0;
    int have_sm_all = read_percent("CUDA_DEVICE_SM_LIMIT", &sm_all);
    for (int i = 0; i < HAMI_MAX_DEVICES; i++) {
        char name[64];
        uint64_t v = 0;
        snprintf(name, sizeof name, "CUDA_DEVICE_MEMORY_LIMIT_%d", i);
        if (read_limit(name, &v) && v > 0) {
            c->limit_bytes[i] = v;
            c->explicit_devices = i + 1;
        }
        else if (have_all) c->limit_bytes[i] = all;
        if (c->limit_bytes[i]) any_limit = c->enforce = 1;
        uint32_t s = 0;
        snprintf(name, sizeof name, "CUDA_DEVICE_SM_LIMIT_%d", i);
        if (read_percent(name, &s)) c->sm_limit[i] = s;
        else if (have_sm_all) c->sm_limit[i] = sm_all;
        if (c->sm_limit[i]) any_limit = 1; /* the limiter's bucket lives in the region too */
    }
    const char *path = getenv("CUDA_DEVICE_MEMORY_SHARED_CACHE");
    if (path && *path) {
        if (strlen(path) >= sizeof c->region_path) {
            HAMI_ERROR("CUDA_DEVICE_MEMORY_SHARED_CACHE is longer than %d bytes; memory accounting is off",
                       HAMI_PATH_MAX - 1);
            c->active = c->enforce; /* with a limit: no region path, so allocations are refused */
        } else {
            snprintf(c->region_path, sizeof c->region_path, "%s", path);
            c->active = 1;
        }
    } else if (any_limit) {
        snprintf(c->region_path, sizeof c->region_path, "%s", HAMI_DEFAULT_REGION_PATH);
        c->active = 1;
    }
    c->task_priority = 1;
    const char *prio = getenv("CUDA_TASK_PRIORITY");
    if (prio && *prio) {
        char *end = NULL;
        long p = strtol(prio, &end, 10);
        if (end && *end == '\0' && p >= 0 && p <= 100) c->task_priority = (int)p;
        else HAMI_ERROR("CUDA_TASK_PRIORITY='%s' is not a priority: use 0 (high) or 1 (low, the default); using 1", prio);
    }
    const char *policy = getenv("GPU_CORE_UTILIZATION_POLICY");
    c->core_policy = HAMI_CORE_POLICY_DEFAULT;
    if (policy && strcasecmp(policy, "force") == 0) c->core_policy = HAMI_CORE_POLICY_FORCE;
    else if (policy && strcasecmp(policy, "disable") == 0) c->core_policy = HAMI_CORE_POLICY_DISABLE;
    else if (policy && *policy && strcasecmp(policy, "default") != 0)
        HAMI_ERROR("GPU_CORE_UTILIZATION_POLICY='%s' is not a policy: use default, force or disable; using default",
                   policy);
    c->oversubscribe = env_true("CUDA_OVERSUBSCRIBE");
    const char *cvd = getenv("CUDA_VISIBLE_DEVICES");
    if (cvd) {
        c->visible_set = 1;
        c->visible_count = hami_parse_visible_devices(cvd, c->visible, HAMI_MAX_DEVICES);
    }
}

/* The spec's values, the GPU set and the region path; env's CUDA_VISIBLE_DEVICES stays (CUDA's own view). */
static void apply_spec(struct hami_config *c, const struct hami_spec *s) {
    c->active = c->enforce = c->from_spec = 1;
    c->spec_flags = s->flags;
    snprintf(c->region_path, sizeof c->region_path, "%s", s->region_path);
    c->explicit_devices = (int)s->device_count;
    for (int i = 0; i < HAMI_MAX_DEVICES; i++) {
        const struct hami_spec_device *d = &s->devices[i];
        int mine = i < (int)s->device_count;
        c->limit_bytes[i] = mine ? d->limit_bytes : 0;
        c->sm_limit[i] = mine ? d->sm_limit_percent : s->default_sm_limit_percent;
        c->uuid_valid[i] = (uint8_t)(mine && (d->flags & HAMI_SPEC_UUID_VALID));
        if (c->uuid_valid[i]) memcpy(c->uuid[i], d->uuid, HAMI_UUID_BYTES);
    }
    c->task_priority = s->task_priority;
    c->core_policy = s->core_policy;
    c->oversubscribe = (s->flags & HAMI_SPEC_OVERSUBSCRIBE) != 0;
}

/* One warning naming every variable whose value the spec overrides (the device plugin sets them to the
 * spec's values for older libraries; anything else was set by the pod and has no effect). */
static void warn_contradictions(const struct hami_config *spec, const struct hami_config *env) {
    char names[512] = "";
    size_t n = 0;
#define NOTE(cond, name)                                                                              \
    do {                                                                                              \
        if ((cond) && n < sizeof names) n += (size_t)snprintf(names + n, sizeof names - n, "%s%s", n ? ", " : "", (name)); \
    } while (0)
    int mem = 0, sm = 0;
    for (int i = 0; i < HAMI_MAX_DEVICES; i++) {
        mem |= env->limit_bytes[i] != spec->limit_bytes[i] && (env->limit_bytes[i] || getenv("CUDA_DEVICE_MEMORY_LIMIT"));
        sm |= env->sm_limit[i] != spec->sm_limit[i] && env->sm_limit[i];
    }
    NOTE(mem, "CUDA_DEVICE_MEMORY_LIMIT[_<i>]");
    NOTE(sm, "CUDA_DEVICE_SM_LIMIT[_<i>]");
    const char *cache = getenv("CUDA_DEVICE_MEMORY_SHARED_CACHE");
    NOTE(cache && *cache && strcmp(cache, spec->region_path) != 0, "CUDA_DEVICE_MEMORY_SHARED_CACHE");
    NOTE(getenv("CUDA_TASK_PRIORITY") && env->task_priority != spec->task_priority, "CUDA_TASK_PRIORITY");
    NOTE(getenv("GPU_CORE_UTILIZATION_POLICY") && env->core_policy != spec->core_policy, "GPU_CORE_UTILIZATION_POLICY");
    NOTE(env_true("CUDA_DISABLE_CONTROL") && !(spec->spec_flags & HAMI_SPEC_ALLOW_DISABLE_CONTROL), "CUDA_DISABLE_CONTROL");
    NOTE(env->oversubscribe && !spec->oversubscribe, "CUDA_OVERSUBSCRIBE");
#undef NOTE
    if (n)
        HAMI_WARN("ignoring %s: this container's limits come from the device plugin's spec %s, which the "
                  "environment cannot change", names, HAMI_SPEC_PATH);
}

static void load_config(void) {
    struct hami_config *c = &g_config;
    (void)hami_log_level(); /* validates LIBCUDA_LOG_LEVEL now, so a bad value is reported once, early */
    struct hami_spec spec;
    char err[sizeof c->spec_error] = "";
#if HAMI_REGION_VERSION_MINOR >= 2
    int found = hami_spec_load(HAMI_SPEC_PATH, &spec, err, sizeof err);
#else
    int found = HAMI_SPEC_ABSENT; /* emulating a 1.1 library, which knew no spec */
#endif
    if (found == HAMI_SPEC_ABSENT) {
        /* No device plugin spec: HAMi-core's environment variables, as with any other device plugin. */
        load_from_env(c);
        return;
    }
    /* The environment is read only to warn about what it tries to change (static: large, read once). */
    static struct hami_config env;
    load_from_env(&env);
    memset(c, 0, sizeof *c);
    c->visible_set = env.visible_set;
    c->visible_count = env.visible_count;
    memcpy(c->visible, env.visible, sizeof c->visible);
    if (found == HAMI_SPEC_REFUSED) {
        c->active = c->enforce = c->spec_refused = 1;
        snprintf(c->spec_error, sizeof c->spec_error, "%s", err);
        c->task_priority = 1;
        return;
    }
    apply_spec(c, &spec);
    warn_contradictions(c, &env);
    if (env_true("CUDA_DISABLE_CONTROL") && (spec.flags & HAMI_SPEC_ALLOW_DISABLE_CONTROL)) {
        HAMI_INFO("CUDA_DISABLE_CONTROL=true, allowed for this namespace by the operator: no limits enforced");
        c->active = c->enforce = 0;
    }
}

const struct hami_config *hami_config_get(void) {
    pthread_once(&g_config_once, load_config);
    return &g_config;
}
