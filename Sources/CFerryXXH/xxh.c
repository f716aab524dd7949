// Inline build of Debian's xxhash.h: the functions are compiled here, and the binary does not
// depend on libxxhash.so at run time. The header's vector code is compiled three times — SSE2
// (every x86-64), AVX2 and AVX-512 (with `target` attributes, as xxHash's own dispatcher does)
// — and the best one the CPU has is chosen at run time. All give the same digests.
#if defined(__x86_64__) && (defined(__clang__) || defined(__GNUC__))
#define FERRY_XXH_DISPATCH 1
#define XXH_X86DISPATCH 1
#define XXH_DISPATCH_AVX2 1
#define XXH_DISPATCH_AVX512 1
#define XXH_TARGET_AVX2 __attribute__((__target__("avx2")))
#define XXH_TARGET_AVX512 __attribute__((__target__("avx512f")))
#include <immintrin.h>
#else
#define FERRY_XXH_DISPATCH 0
#endif
#define XXH_INLINE_ALL
#include <xxhash.h>

#include "CFerryXXH.h"

// The public name of xxHash's state: one aligned allocation (XXH3_createState).
struct ferry_xxh128_state {
    XXH3_state_t xxh;
};

typedef void (*update_fn)(XXH3_state_t *, const xxh_u8 *, size_t);

static void update_scalar(XXH3_state_t *s, const xxh_u8 *p, size_t n) {
    (void)XXH3_128bits_update(s, p, n);
}

#if FERRY_XXH_DISPATCH
XXH_TARGET_AVX2 static void update_avx2(XXH3_state_t *s, const xxh_u8 *p, size_t n) {
    (void)XXH3_update(s, p, n, XXH3_accumulate_512_avx2, XXH3_scrambleAcc_avx2);
}

XXH_TARGET_AVX512 static void update_avx512(XXH3_state_t *s, const xxh_u8 *p, size_t n) {
    (void)XXH3_update(s, p, n, XXH3_accumulate_512_avx512, XXH3_scrambleAcc_avx512);
}
#endif

/// -1: not chosen yet. Set once, from the CPU or by `ferry_xxh128_use` (tests).
static int chosen = -1;

static int best_available(void) {
#if FERRY_XXH_DISPATCH
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) return 2;
    if (__builtin_cpu_supports("avx2")) return 1;
#endif
    return 0;
}

static update_fn update_for(int level) {
#if FERRY_XXH_DISPATCH
    if (level == 2) return update_avx512;
    if (level == 1) return update_avx2;
#endif
    (void)level;
    return update_scalar;
}

static update_fn current_update(void) {
    int level = __atomic_load_n(&chosen, __ATOMIC_RELAXED);
    if (level < 0) {
        level = best_available();
        __atomic_store_n(&chosen, level, __ATOMIC_RELAXED);
    }
    return update_for(level);
}

int ferry_xxh128_best_level(void) { return best_available(); }

int ferry_xxh128_use(int level) {
    if (level < 0 || level > best_available()) return 0;
    __atomic_store_n(&chosen, level, __ATOMIC_RELAXED);
    return 1;
}

ferry_xxh128_state *ferry_xxh128_new(void) {
    XXH3_state_t *xxh = XXH3_createState();
    if (xxh == NULL) return NULL;
    XXH3_128bits_reset(xxh);
    return (ferry_xxh128_state *)xxh;
}

void ferry_xxh128_free(ferry_xxh128_state *state) {
    XXH3_freeState(&state->xxh);
}

void ferry_xxh128_update(ferry_xxh128_state *state, const void *bytes, size_t count) {
    if (count == 0) return;
    current_update()(&state->xxh, (const xxh_u8 *)bytes, count);
}

static void canonical(XXH128_hash_t hash, unsigned char out[16]) {
    XXH128_canonical_t c;
    XXH128_canonicalFromHash(&c, hash);
    memcpy(out, c.digest, 16);
}

void ferry_xxh128_digest(const ferry_xxh128_state *state, unsigned char out[16]) {
    canonical(XXH3_128bits_digest(&state->xxh), out);
}

void ferry_xxh128_oneshot(const void *bytes, size_t count, unsigned char out[16]) {
    if (count <= XXH3_MIDSIZE_MAX) {
        canonical(XXH3_128bits(bytes, count), out);
        return;
    }
    // Long inputs go through the streaming state, so they take the dispatched vector code too.
    XXH3_state_t state;
    XXH3_128bits_reset(&state);
    if (count > 0) current_update()(&state, (const xxh_u8 *)bytes, count);
    canonical(XXH3_128bits_digest(&state), out);
}
