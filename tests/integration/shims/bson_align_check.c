/* Preloaded (LD_PRELOAD) into the binary under test by conftest.py, two checks
 * of how supportd's code hands bson_t to libbson, which neither ASan nor UBSan
 * can see (libbson is not instrumented):
 *
 * - alignment: every bson_t it initialises must have the alignment libbson
 *   declares for the type (128 bytes, BSON_ALIGNED_BEGIN in bson-types.h).
 *   UBSan's alignment check in supportd's code does not see `&array[i]` (no
 *   load, no member access), so a bson_t inside a malloc'ed array is otherwise
 *   silent undefined behaviour. Only calls from the executable are checked.
 * - moves: a bson_t made by bson_init_static points into itself (its buffer
 *   pointer is the address of its own `alloc` field), so a copy of the struct
 *   reads through the original, which may be freed; under ASan the freed bytes
 *   stay intact in quarantine and the reads inside libbson go unnoticed.
 *
 * A failure is reported on stderr ("bson_align_check:", a marker the harness
 * looks for) and the process aborts. */
#define _GNU_SOURCE
#include <bson/bson.h>
#include <dlfcn.h>
#include <link.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uintptr_t exe_lo, exe_hi, exe_bias;

static int first_object(struct dl_phdr_info *info, size_t size, void *arg)
{
    (void)size;
    (void)arg;
    exe_bias = info->dlpi_addr;
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        if (ph->p_type != PT_LOAD)
            continue;
        uintptr_t lo = info->dlpi_addr + ph->p_vaddr, hi = lo + ph->p_memsz;
        if (!exe_lo || lo < exe_lo)
            exe_lo = lo;
        if (hi > exe_hi)
            exe_hi = hi;
    }
    return 1; /* the first object is the executable */
}

static bool from_executable(const void *ret)
{
    if (!exe_hi)
        dl_iterate_phdr(first_object, NULL);
    return (uintptr_t)ret >= exe_lo && (uintptr_t)ret < exe_hi;
}

static void fail(const char *what, const char *fn, const void *b, const void *ret)
{
    fprintf(stderr, "bson_align_check: %s(%p): %s (called from %#lx%s)\n", fn, b, what,
            (unsigned long)((uintptr_t)ret - (from_executable(ret) ? exe_bias : 0)),
            from_executable(ret) ? " in the executable, for addr2line" : "");
    /* the sanitized build's runtime symbolizes the stack */
    void (*trace)(void) = (void (*)(void))dlsym(RTLD_DEFAULT, "__sanitizer_print_stack_trace");
    if (trace)
        trace();
    abort();
}

static void check(const void *b, const char *fn, const void *ret)
{
    if ((uintptr_t)b % _Alignof(bson_t) != 0 && from_executable(ret))
        fail("the bson_t is not aligned as libbson declares it (128 bytes)", fn, b, ret);
}

/* The head of libbson 1.23's bson_impl_alloc_t (bson-private.h), the form a
 * bson_t takes once not inline; checked against a real one before use. */
struct impl_alloc {
    uint32_t flags, len;
    void *parent;
    uint32_t depth;
    uint8_t **buf;
    size_t *buflen, offset;
    uint8_t *alloc;
};
enum { FLAG_INLINE = 1, FLAG_STATIC = 2, FLAG_RDONLY = 4, FLAG_CHILD = 8 };
static int layout_known = -1;

static void check_not_moved(const bson_t *b, const char *fn, const void *ret)
{
    if (layout_known < 0) {
        static const uint8_t empty[5] = {5, 0, 0, 0, 0};
        bson_t probe;
        static bool (*real)(bson_t *, const uint8_t *, size_t);
        if (!real)
            *(void **)&real = dlsym(RTLD_NEXT, "bson_init_static");
        real(&probe, empty, sizeof empty);
        const struct impl_alloc *p = (const struct impl_alloc *)&probe;
        layout_known = p->flags == (FLAG_STATIC | FLAG_RDONLY) && p->buf == &((struct impl_alloc *)&probe)->alloc;
    }
    const struct impl_alloc *a = (const struct impl_alloc *)b;
    if (layout_known && b && a->flags == (FLAG_STATIC | FLAG_RDONLY) &&
        a->buf != &((struct impl_alloc *)b)->alloc)
        fail("a bson_init_static view that was copied or moved after it was made", fn, b, ret);
}

bool bson_init_static(bson_t *b, const uint8_t *data, size_t length)
{
    static bool (*real)(bson_t *, const uint8_t *, size_t);
    check(b, "bson_init_static", __builtin_return_address(0));
    if (!real)
        *(void **)&real = dlsym(RTLD_NEXT, "bson_init_static");
    return real(b, data, length);
}

void bson_init(bson_t *b)
{
    static void (*real)(bson_t *);
    check(b, "bson_init", __builtin_return_address(0));
    if (!real)
        *(void **)&real = dlsym(RTLD_NEXT, "bson_init");
    real(b);
}

bool bson_iter_init(bson_iter_t *iter, const bson_t *b)
{
    static bool (*real)(bson_iter_t *, const bson_t *);
    check_not_moved(b, "bson_iter_init", __builtin_return_address(0));
    if (!real)
        *(void **)&real = dlsym(RTLD_NEXT, "bson_iter_init");
    return real(iter, b);
}

bool bson_iter_init_find(bson_iter_t *iter, const bson_t *b, const char *key)
{
    static bool (*real)(bson_iter_t *, const bson_t *, const char *);
    check_not_moved(b, "bson_iter_init_find", __builtin_return_address(0));
    if (!real)
        *(void **)&real = dlsym(RTLD_NEXT, "bson_iter_init_find");
    return real(iter, b, key);
}

const uint8_t *bson_get_data(const bson_t *b)
{
    static const uint8_t *(*real)(const bson_t *);
    check_not_moved(b, "bson_get_data", __builtin_return_address(0));
    if (!real)
        *(void **)&real = dlsym(RTLD_NEXT, "bson_get_data");
    return real(b);
}

bool bson_concat(bson_t *dst, const bson_t *src)
{
    static bool (*real)(bson_t *, const bson_t *);
    check_not_moved(src, "bson_concat", __builtin_return_address(0));
    if (!real)
        *(void **)&real = dlsym(RTLD_NEXT, "bson_concat");
    return real(dst, src);
}
