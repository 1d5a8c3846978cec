/* A compile cache for NVRTC, loaded into the candidate's process with LD_PRELOAD (compile_cache.py).

Why it exists: on one H200 a candidate of examples/gqa-cuda spent 20-45 s of its 65-106 s in
NVRTC, compiling kernel variants that earlier candidates had already compiled, and MLX caches
compiled kernels only inside one process (its on-disk cache is never written for custom
kernels). NVRTC is where every kernel of the process is compiled, the candidate's and MLX's own
JIT kernels alike, so a cache here needs no change to the candidate or to MLX.

What makes a hit: every input NVRTC sees, byte for byte: its version, the source, the program
name, every header with its include name, every option (the GPU's architecture among them) and
the name expressions. The file name is a hash of those inputs; the entry holds the inputs
themselves and is served only when they compare equal, so a hash collision is a miss, never a
wrong binary. An edited kernel that kept its name is a different source and a miss; a new MLX
changes the headers and the source it generates, and is a miss.

A hit replays what the real compile returned: the result codes and bytes of the PTX, the CUBIN and
the log, and the lowered names. Failed compiles are not cached. An entry is written to a
temporary file and renamed into place, so processes that share the directory never read half
of one; an unreadable or truncated entry is a miss, and the entry is written again.

GITEVOLVE_NVRTC_CACHE names the directory; unset or empty, every call goes straight to NVRTC.
gitevolve_nvrtc_cache_stats() reports the hits, misses, write errors and the compile seconds the
hits saved (each entry keeps how long its compile took). */

#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

typedef int nvrtcResult; /* nvrtc.h's enum; 0 is NVRTC_SUCCESS */
typedef struct _nvrtcProgram *nvrtcProgram;

enum { SUCCESS = 0, ERROR_OUT_OF_MEMORY = 1, ERROR_INVALID_INPUT = 3, ERROR_INVALID_PROGRAM = 4,
       ERROR_NAME_EXPRESSION_NOT_VALID = 10, ERROR_INTERNAL = 11 };

static const char MAGIC[8] = "GEVNVRC1";

/* ---- a growable byte buffer ---- */

typedef struct { char *data; size_t len, cap; int failed; } Buf;

static void put(Buf *b, const void *p, size_t n) {
    if (b->failed) return;
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n) cap *= 2;
        char *grown = realloc(b->data, cap);
        if (!grown) { b->failed = 1; return; }
        b->data = grown, b->cap = cap;
    }
    memcpy(b->data + b->len, p, n);
    b->len += n;
}

static void put_u64(Buf *b, uint64_t v) { put(b, &v, sizeof v); }
static void put_i32(Buf *b, int32_t v) { put(b, &v, sizeof v); }
static void put_bytes(Buf *b, const void *p, size_t n) { put_u64(b, n); put(b, p, n); }
static void put_str(Buf *b, const char *s) {
    if (s) put_bytes(b, s, strlen(s)); else put_u64(b, UINT64_MAX); /* NULL and "" differ */
}

/* Reading an entry: every read is bounds-checked, and a short entry is a miss. */
typedef struct { const char *p, *end; int bad; } Reader;

static const char *take(Reader *r, size_t n) {
    if (r->bad || (size_t)(r->end - r->p) < n) { r->bad = 1; return NULL; }
    const char *at = r->p;
    r->p += n;
    return at;
}
static uint64_t take_u64(Reader *r) { uint64_t v = 0; const char *at = take(r, sizeof v); if (at) memcpy(&v, at, sizeof v); return v; }
static int32_t take_i32(Reader *r) { int32_t v = 0; const char *at = take(r, sizeof v); if (at) memcpy(&v, at, sizeof v); return v; }
static double take_f64(Reader *r) { double v = 0; const char *at = take(r, sizeof v); if (at) memcpy(&v, at, sizeof v); return v; }

/* Bytes copied out of an entry, NUL-terminated for the lowered names. */
static char *take_copy(Reader *r, size_t *len) {
    uint64_t n = take_u64(r);
    const char *at = take(r, n);
    if (!at) return NULL;
    char *copy = malloc(n + 1);
    if (!copy) { r->bad = 1; return NULL; }
    memcpy(copy, at, n);
    copy[n] = 0;
    if (len) *len = n;
    return copy;
}

/* ---- NVRTC itself ---- */

static struct {
    nvrtcResult (*create)(nvrtcProgram *, const char *, const char *, int, const char *const *, const char *const *);
    nvrtcResult (*destroy)(nvrtcProgram *);
    nvrtcResult (*add_name)(nvrtcProgram, const char *);
    nvrtcResult (*compile)(nvrtcProgram, int, const char *const *);
    nvrtcResult (*ptx_size)(nvrtcProgram, size_t *);
    nvrtcResult (*ptx)(nvrtcProgram, char *);
    nvrtcResult (*cubin_size)(nvrtcProgram, size_t *);
    nvrtcResult (*cubin)(nvrtcProgram, char *);
    nvrtcResult (*log_size)(nvrtcProgram, size_t *);
    nvrtcResult (*log)(nvrtcProgram, char *);
    nvrtcResult (*lowered)(nvrtcProgram, const char *, const char **);
    nvrtcResult (*version)(int *, int *);
} real;

static pthread_once_t found_real = PTHREAD_ONCE_INIT;
static int have_real;

/* The real library, by its soname: MLX loads it with RTLD_LOCAL, where RTLD_NEXT would not
   see it; dlopen of the same soname returns the copy already loaded. */
static void find_real(void) {
    const char *path = getenv("GITEVOLVE_NVRTC_LIBRARY");
    void *lib = dlopen(path && *path ? path : "libnvrtc.so.13", RTLD_NOW | RTLD_LOCAL);
    if (!lib) lib = dlopen("libnvrtc.so", RTLD_NOW | RTLD_LOCAL);
    if (!lib) return;
#define FIND(field, name) if (!(*(void **)&real.field = dlsym(lib, name))) return;
    FIND(create, "nvrtcCreateProgram") FIND(destroy, "nvrtcDestroyProgram")
    FIND(add_name, "nvrtcAddNameExpression") FIND(compile, "nvrtcCompileProgram")
    FIND(ptx_size, "nvrtcGetPTXSize") FIND(ptx, "nvrtcGetPTX")
    FIND(cubin_size, "nvrtcGetCUBINSize") FIND(cubin, "nvrtcGetCUBIN")
    FIND(log_size, "nvrtcGetProgramLogSize") FIND(log, "nvrtcGetProgramLog")
    FIND(lowered, "nvrtcGetLoweredName") FIND(version, "nvrtcVersion")
#undef FIND
    have_real = 1;
}

static int ready(void) { pthread_once(&found_real, find_real); return have_real; }

/* ---- what the cache knows of each program ---- */

typedef struct { int32_t rc; char *data; size_t len; } Output;

typedef struct Program {
    nvrtcProgram handle;
    Buf inputs;               /* the source, name and headers; options and names are added at compile */
    char **names; size_t n_names;
    int served;               /* 1: compiled from the cache; the getters answer from here */
    Output ptx, cubin, log;
    Output *lowered;          /* one per name expression, in the order they were added */
    struct Program *next;
} Program;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static Program *programs;
static long hits, misses, write_errors;
static double saved_seconds;

static Program *find(nvrtcProgram handle) {
    Program *p;
    pthread_mutex_lock(&lock);
    for (p = programs; p && p->handle != handle; p = p->next) {}
    pthread_mutex_unlock(&lock);
    return p;
}

static void free_output(Output *o) { free(o->data); o->data = NULL; o->len = 0; }

static void free_program(Program *p) {
    free(p->inputs.data);
    for (size_t i = 0; i < p->n_names; i++) {
        free(p->names[i]);
        if (p->lowered) free_output(&p->lowered[i]);
    }
    free(p->names);
    free(p->lowered);
    free_output(&p->ptx), free_output(&p->cubin), free_output(&p->log);
    free(p);
}

static const char *directory(void) {
    const char *dir = getenv("GITEVOLVE_NVRTC_CACHE");
    return dir && *dir ? dir : NULL;
}

/* Two 64-bit FNV-1a hashes with different offsets: a name for the entry, not its identity. */
static void entry_path(const Buf *key, char *out, size_t size) {
    uint64_t a = 0xcbf29ce484222325ULL, b = 0x84222325cbf29ce4ULL;
    for (size_t i = 0; i < key->len; i++) {
        a = (a ^ (unsigned char)key->data[i]) * 0x100000001b3ULL;
        b = (b ^ (unsigned char)key->data[i]) * 0x100000001b3ULL;
        b ^= b >> 29;
    }
    snprintf(out, size, "%s/%016llx%016llx.nvrtc", directory(), (unsigned long long)a, (unsigned long long)b);
}

static char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *data = NULL;
    if (fseek(f, 0, SEEK_END) == 0) {
        long n = ftell(f);
        if (n > 0 && fseek(f, 0, SEEK_SET) == 0 && (data = malloc((size_t)n))) {
            if (fread(data, 1, (size_t)n, f) != (size_t)n) { free(data); data = NULL; }
            else *len = (size_t)n;
        }
    }
    fclose(f);
    return data;
}

static void read_output(Reader *r, Output *o) {
    o->rc = take_i32(r);
    o->data = take_copy(r, &o->len);
}

/* Serve `p` from the entry at `path` if the entry's inputs are `key`'s. */
static int load(Program *p, const Buf *key, const char *path) {
    size_t len = 0;
    char *data = read_file(path, &len);
    if (!data) return 0;
    Reader r = {data, data + len, 0};
    const char *magic = take(&r, sizeof MAGIC);
    uint64_t key_len = take_u64(&r);
    const char *stored = take(&r, key_len);
    int same = magic && !memcmp(magic, MAGIC, sizeof MAGIC) && stored && key_len == key->len
               && !memcmp(stored, key->data, key->len);
    double seconds = 0;
    if (same) {
        seconds = take_f64(&r);
        read_output(&r, &p->ptx), read_output(&r, &p->cubin), read_output(&r, &p->log);
        p->lowered = calloc(p->n_names ? p->n_names : 1, sizeof *p->lowered);
        if (!p->lowered || take_u64(&r) != p->n_names) r.bad = 1;
        for (size_t i = 0; !r.bad && i < p->n_names; i++) read_output(&r, &p->lowered[i]);
    }
    free(data);
    if (!same || r.bad) {
        free_output(&p->ptx), free_output(&p->cubin), free_output(&p->log);
        if (p->lowered) for (size_t i = 0; i < p->n_names; i++) free_output(&p->lowered[i]);
        free(p->lowered);
        p->lowered = NULL;
        return 0;
    }
    pthread_mutex_lock(&lock);
    hits++, saved_seconds += seconds;
    pthread_mutex_unlock(&lock);
    return 1;
}

static void put_output(Buf *b, nvrtcResult rc, const char *data, size_t len) {
    put_i32(b, rc);
    put_bytes(b, data, data ? len : 0);
}

/* What a compile that just succeeded produced: each getter's result, as a later hit replays it. */
static void put_outputs(Buf *b, Program *p) {
    size_t n = 0;
    char *data = NULL;
    nvrtcResult rc;
#define GET(size_fn, get_fn) \
    n = 0, data = NULL; \
    rc = real.size_fn(p->handle, &n); \
    if (rc == SUCCESS && (data = malloc(n ? n : 1))) rc = real.get_fn(p->handle, data); \
    else if (rc == SUCCESS) b->failed = 1; \
    put_output(b, rc, rc == SUCCESS ? data : NULL, n); \
    free(data);
    GET(ptx_size, ptx) GET(cubin_size, cubin) GET(log_size, log)
#undef GET
    put_u64(b, p->n_names);
    for (size_t i = 0; i < p->n_names; i++) {
        const char *lowered = NULL;
        rc = real.lowered(p->handle, p->names[i], &lowered);
        put_output(b, rc, lowered, lowered ? strlen(lowered) : 0);
    }
}

static void store(Program *p, const Buf *key, const char *path, double seconds) {
    Buf entry = {0};
    put(&entry, MAGIC, sizeof MAGIC);
    put_bytes(&entry, key->data, key->len);
    put(&entry, &seconds, sizeof seconds);
    put_outputs(&entry, p);
    char partial[4200];
    static long serial;
    pthread_mutex_lock(&lock);
    long mine = ++serial;
    pthread_mutex_unlock(&lock);
    snprintf(partial, sizeof partial, "%s.%d.%ld.partial", path, (int)getpid(), mine);
    int written = 0;
    FILE *f = entry.failed ? NULL : fopen(partial, "wb");
    if (f) {
        written = fwrite(entry.data, 1, entry.len, f) == entry.len;
        written = (fclose(f) == 0) && written;
        written = written && rename(partial, path) == 0;
        if (!written) unlink(partial);
    }
    free(entry.data);
    pthread_mutex_lock(&lock);
    misses++;
    if (!written) write_errors++;
    pthread_mutex_unlock(&lock);
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

/* ---- the interposed API ---- */

nvrtcResult nvrtcCreateProgram(nvrtcProgram *prog, const char *src, const char *name, int num_headers,
                               const char *const *headers, const char *const *include_names) {
    if (!ready()) return ERROR_INTERNAL;
    nvrtcResult rc = real.create(prog, src, name, num_headers, headers, include_names);
    if (rc != SUCCESS || !directory() || !prog) return rc;
    Program *p = calloc(1, sizeof *p);
    if (!p) return rc; /* uncached, still correct */
    p->handle = *prog;
    int versions[2] = {0, 0};
    real.version(&versions[0], &versions[1]);
    put(&p->inputs, versions, sizeof versions);
    put_str(&p->inputs, src);
    put_str(&p->inputs, name);
    put_u64(&p->inputs, num_headers > 0 ? (uint64_t)num_headers : 0);
    for (int i = 0; i < num_headers; i++) {
        put_str(&p->inputs, headers ? headers[i] : NULL);
        put_str(&p->inputs, include_names ? include_names[i] : NULL);
    }
    pthread_mutex_lock(&lock);
    p->next = programs, programs = p;
    pthread_mutex_unlock(&lock);
    return rc;
}

nvrtcResult nvrtcAddNameExpression(nvrtcProgram prog, const char *const expression) {
    if (!ready()) return ERROR_INTERNAL;
    nvrtcResult rc = real.add_name(prog, expression);
    Program *p = find(prog);
    if (rc == SUCCESS && p && expression) {
        char **grown = realloc(p->names, (p->n_names + 1) * sizeof *grown);
        char *copy = strdup(expression);
        if (grown && copy) p->names = grown, p->names[p->n_names++] = copy;
        else p->inputs.failed = 1, free(copy), p->names = grown ? grown : p->names;
    }
    return rc;
}

nvrtcResult nvrtcCompileProgram(nvrtcProgram prog, int num_options, const char *const *options) {
    if (!ready()) return ERROR_INTERNAL;
    Program *p = find(prog);
    if (!p || p->inputs.failed) return real.compile(prog, num_options, options);
    Buf key = {0};
    put(&key, p->inputs.data, p->inputs.len);
    put_u64(&key, num_options > 0 ? (uint64_t)num_options : 0);
    for (int i = 0; i < num_options; i++) put_str(&key, options ? options[i] : NULL);
    put_u64(&key, p->n_names);
    for (size_t i = 0; i < p->n_names; i++) put_str(&key, p->names[i]);
    if (key.failed) { free(key.data); return real.compile(prog, num_options, options); }
    char path[4096];
    entry_path(&key, path, sizeof path);
    if (load(p, &key, path)) {
        p->served = 1;
        free(key.data);
        return SUCCESS;
    }
    double started = now();
    nvrtcResult rc = real.compile(prog, num_options, options);
    if (rc == SUCCESS) store(p, &key, path, now() - started);
    free(key.data);
    return rc;
}

static nvrtcResult size_of(const Output *o, size_t *size) {
    if (!size) return ERROR_INVALID_INPUT;
    if (o->rc == SUCCESS) *size = o->len;
    return o->rc;
}

static nvrtcResult copy_of(const Output *o, char *out) {
    if (!out) return ERROR_INVALID_INPUT;
    if (o->rc == SUCCESS) memcpy(out, o->data, o->len);
    return o->rc;
}

#define SERVED(prog) Program *p = find(prog); if (!ready()) return ERROR_INTERNAL; if (p && p->served)

nvrtcResult nvrtcGetPTXSize(nvrtcProgram prog, size_t *size) { SERVED(prog) return size_of(&p->ptx, size); return real.ptx_size(prog, size); }
nvrtcResult nvrtcGetPTX(nvrtcProgram prog, char *out) { SERVED(prog) return copy_of(&p->ptx, out); return real.ptx(prog, out); }
nvrtcResult nvrtcGetCUBINSize(nvrtcProgram prog, size_t *size) { SERVED(prog) return size_of(&p->cubin, size); return real.cubin_size(prog, size); }
nvrtcResult nvrtcGetCUBIN(nvrtcProgram prog, char *out) { SERVED(prog) return copy_of(&p->cubin, out); return real.cubin(prog, out); }
nvrtcResult nvrtcGetProgramLogSize(nvrtcProgram prog, size_t *size) { SERVED(prog) return size_of(&p->log, size); return real.log_size(prog, size); }
nvrtcResult nvrtcGetProgramLog(nvrtcProgram prog, char *out) { SERVED(prog) return copy_of(&p->log, out); return real.log(prog, out); }

nvrtcResult nvrtcGetLoweredName(nvrtcProgram prog, const char *const expression, const char **lowered) {
    SERVED(prog) {
        for (size_t i = 0; expression && i < p->n_names; i++)
            if (!strcmp(p->names[i], expression)) {
                if (p->lowered[i].rc == SUCCESS && lowered) *lowered = p->lowered[i].data;
                return lowered ? p->lowered[i].rc : ERROR_INVALID_INPUT;
            }
        return ERROR_NAME_EXPRESSION_NOT_VALID;
    }
    return real.lowered(prog, expression, lowered);
}

nvrtcResult nvrtcDestroyProgram(nvrtcProgram *prog) {
    if (!ready()) return ERROR_INTERNAL;
    if (prog) {
        pthread_mutex_lock(&lock);
        Program **at = &programs;
        while (*at && (*at)->handle != *prog) at = &(*at)->next;
        Program *p = *at;
        if (p) *at = p->next;
        pthread_mutex_unlock(&lock);
        if (p) free_program(p);
    }
    return real.destroy(prog);
}

/* For the harness (ctypes): what the cache did in this process. */
int gitevolve_nvrtc_cache_stats(long *hit, long *miss, long *errors, double *saved) {
    pthread_mutex_lock(&lock);
    *hit = hits, *miss = misses, *errors = write_errors, *saved = saved_seconds;
    pthread_mutex_unlock(&lock);
    return directory() != NULL;
}
