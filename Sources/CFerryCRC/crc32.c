// CRC-32 (IEEE 802.3, zlib-compatible) with PCLMULQDQ folding on x86-64 and a portable
// slice-by-8 path everywhere else.
//
// The folding follows Intel's white paper "Fast CRC Computation for Generic Polynomials Using
// PCLMULQDQ Instruction" (Gopal et al., 2009), as in Chromium's zlib (crc32_simd.c) and the
// Linux kernel (crc32-pclmul): four 128-bit lanes are folded 64 bytes at a time, then into one
// lane, then 128 -> 64 -> 32 bits with a Barrett reduction. Only the SIMD functions are compiled
// for pclmul/sse4.1 (function attributes), and they are called only after a run-time check, so
// no global compiler flags are needed and other x86 CPUs take the portable path.

#include "CFerryCRC.h"
#include "crc32_table.h"

#if defined(__x86_64__) || defined(__i386__)
#define FERRY_CRC_X86 1
#include <immintrin.h>
#else
#define FERRY_CRC_X86 0
#endif

static inline uint32_t load32le(const unsigned char *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

/// Slice-by-8 on the inverted CRC state.
static uint32_t crc32_slice8(uint32_t state, const unsigned char *p, size_t len) {
    while (len >= 8) {
        uint32_t a = load32le(p) ^ state;
        uint32_t b = load32le(p + 4);
        state = ferry_crc32_table[7][a & 0xff] ^ ferry_crc32_table[6][(a >> 8) & 0xff] ^
                ferry_crc32_table[5][(a >> 16) & 0xff] ^ ferry_crc32_table[4][a >> 24] ^
                ferry_crc32_table[3][b & 0xff] ^ ferry_crc32_table[2][(b >> 8) & 0xff] ^
                ferry_crc32_table[1][(b >> 16) & 0xff] ^ ferry_crc32_table[0][b >> 24];
        p += 8;
        len -= 8;
    }
    while (len > 0) {
        state = ferry_crc32_table[0][(state ^ *p) & 0xff] ^ (state >> 8);
        p++;
        len--;
    }
    return state;
}

uint32_t ferry_crc32_portable(uint32_t crc, const void *buf, size_t len) {
    if (buf == NULL || len == 0) return crc;
    return ~crc32_slice8(~crc, (const unsigned char *)buf, len);
}

#if FERRY_CRC_X86

// Constants for the reflected polynomial (Intel paper / Linux crc32-pclmul_asm.S):
// k1 = x^(4*128+32) mod P, k2 = x^(4*128-32) mod P (fold by 512 bits), k3, k4 the same for 128
// bits, k5 = x^64 mod P, and the Barrett pair: P' (0x1DB710641) and mu = floor(x^64 / P)'.
#define FERRY_ALIGN16 __attribute__((aligned(16)))
static const uint64_t FERRY_ALIGN16 k1k2[2] = {0x0154442bd4ULL, 0x01c6e41596ULL};
static const uint64_t FERRY_ALIGN16 k3k4[2] = {0x01751997d0ULL, 0x00ccaa009eULL};
static const uint64_t FERRY_ALIGN16 k5k0[2] = {0x0163cd6124ULL, 0x0000000000ULL};
static const uint64_t FERRY_ALIGN16 poly[2] = {0x01db710641ULL, 0x01f7011641ULL};

/// Goes on from four lanes holding the (folded) last 64 bytes read: folds the other `len` bytes
/// (a multiple of 16) at `buf` into them, then reduces the lanes to the inverted CRC state.
__attribute__((target("pclmul,sse4.1"), always_inline))
static inline uint32_t crc32_pclmul_finish(__m128i x1, __m128i x2, __m128i x3, __m128i x4,
                                           const unsigned char *buf, size_t len) {
    __m128i x0, x5, x6, x7, x8, y5, y6, y7, y8;
    x0 = _mm_load_si128((const __m128i *)(const void *)k1k2);

    // Four lanes, 64 bytes per round.
    while (len >= 64) {
        x5 = _mm_clmulepi64_si128(x1, x0, 0x00);
        x6 = _mm_clmulepi64_si128(x2, x0, 0x00);
        x7 = _mm_clmulepi64_si128(x3, x0, 0x00);
        x8 = _mm_clmulepi64_si128(x4, x0, 0x00);
        x1 = _mm_clmulepi64_si128(x1, x0, 0x11);
        x2 = _mm_clmulepi64_si128(x2, x0, 0x11);
        x3 = _mm_clmulepi64_si128(x3, x0, 0x11);
        x4 = _mm_clmulepi64_si128(x4, x0, 0x11);
        y5 = _mm_loadu_si128((const __m128i *)(const void *)(buf + 0x00));
        y6 = _mm_loadu_si128((const __m128i *)(const void *)(buf + 0x10));
        y7 = _mm_loadu_si128((const __m128i *)(const void *)(buf + 0x20));
        y8 = _mm_loadu_si128((const __m128i *)(const void *)(buf + 0x30));
        x1 = _mm_xor_si128(_mm_xor_si128(x1, x5), y5);
        x2 = _mm_xor_si128(_mm_xor_si128(x2, x6), y6);
        x3 = _mm_xor_si128(_mm_xor_si128(x3, x7), y7);
        x4 = _mm_xor_si128(_mm_xor_si128(x4, x8), y8);
        buf += 64;
        len -= 64;
    }

    // Four lanes into one.
    x0 = _mm_load_si128((const __m128i *)(const void *)k3k4);
    x5 = _mm_clmulepi64_si128(x1, x0, 0x00);
    x1 = _mm_clmulepi64_si128(x1, x0, 0x11);
    x1 = _mm_xor_si128(_mm_xor_si128(x1, x2), x5);
    x5 = _mm_clmulepi64_si128(x1, x0, 0x00);
    x1 = _mm_clmulepi64_si128(x1, x0, 0x11);
    x1 = _mm_xor_si128(_mm_xor_si128(x1, x3), x5);
    x5 = _mm_clmulepi64_si128(x1, x0, 0x00);
    x1 = _mm_clmulepi64_si128(x1, x0, 0x11);
    x1 = _mm_xor_si128(_mm_xor_si128(x1, x4), x5);

    // Remaining 16-byte blocks.
    while (len >= 16) {
        x2 = _mm_loadu_si128((const __m128i *)(const void *)buf);
        x5 = _mm_clmulepi64_si128(x1, x0, 0x00);
        x1 = _mm_clmulepi64_si128(x1, x0, 0x11);
        x1 = _mm_xor_si128(_mm_xor_si128(x1, x2), x5);
        buf += 16;
        len -= 16;
    }

    // 128 -> 64 bits.
    x2 = _mm_clmulepi64_si128(x1, x0, 0x10);
    x3 = _mm_setr_epi32(~0, 0, ~0, 0);
    x1 = _mm_srli_si128(x1, 8);
    x1 = _mm_xor_si128(x1, x2);
    x0 = _mm_loadl_epi64((const __m128i *)(const void *)k5k0);
    x2 = _mm_srli_si128(x1, 4);
    x1 = _mm_and_si128(x1, x3);
    x1 = _mm_clmulepi64_si128(x1, x0, 0x00);
    x1 = _mm_xor_si128(x1, x2);

    // Barrett reduction to 32 bits.
    x0 = _mm_load_si128((const __m128i *)(const void *)poly);
    x2 = _mm_and_si128(x1, x3);
    x2 = _mm_clmulepi64_si128(x2, x0, 0x10);
    x2 = _mm_and_si128(x2, x3);
    x2 = _mm_clmulepi64_si128(x2, x0, 0x00);
    x1 = _mm_xor_si128(x1, x2);
    return (uint32_t)_mm_extract_epi32(x1, 1);
}

/// Folds `len` bytes (a multiple of 16, at least 64) into the inverted CRC state `state`.
__attribute__((target("pclmul,sse4.1")))
static uint32_t crc32_pclmul(uint32_t state, const unsigned char *buf, size_t len) {
    __m128i x1 = _mm_loadu_si128((const __m128i *)(const void *)(buf + 0x00));
    __m128i x2 = _mm_loadu_si128((const __m128i *)(const void *)(buf + 0x10));
    __m128i x3 = _mm_loadu_si128((const __m128i *)(const void *)(buf + 0x20));
    __m128i x4 = _mm_loadu_si128((const __m128i *)(const void *)(buf + 0x30));
    x1 = _mm_xor_si128(x1, _mm_cvtsi32_si128((int)state));
    return crc32_pclmul_finish(x1, x2, x3, x4, buf + 64, len - 64);
}

// VPCLMULQDQ with AVX-512: the same folding on four 512-bit registers, each four 128-bit lanes
// (256 bytes a step, four times the 128-bit loop's reach per multiply). The constants fold by
// 2048 bits: x^(2048+32) mod P and x^(2048-32) mod P, reflected and shifted like k1 and k2
// (computed with the same formula that gives k1..k4 above). At the end the four registers fold
// into one by 512 bits (k1, k2), whose lanes are exactly the 128-bit path's four lanes.
#define FERRY_CRC_AVX512 "avx512f,avx512vl,vpclmulqdq,pclmul,sse4.1"
static const uint64_t FERRY_ALIGN16 k2048[2] = {0x011542778aULL, 0x01322d1430ULL};

__attribute__((target(FERRY_CRC_AVX512), always_inline))
static inline __m512i fold512(__m512i z, __m512i k, __m512i data) {
    __m512i lo = _mm512_clmulepi64_epi128(z, k, 0x00);
    __m512i hi = _mm512_clmulepi64_epi128(z, k, 0x11);
    return _mm512_ternarylogic_epi64(lo, hi, data, 0x96);  // lo ^ hi ^ data
}

/// Folds `len` bytes (a multiple of 16, at least 256) into the inverted CRC state `state`.
__attribute__((target(FERRY_CRC_AVX512)))
static uint32_t crc32_vpclmul(uint32_t state, const unsigned char *buf, size_t len) {
    __m512i z0 = _mm512_loadu_si512((const void *)(buf + 0x00));
    __m512i z1 = _mm512_loadu_si512((const void *)(buf + 0x40));
    __m512i z2 = _mm512_loadu_si512((const void *)(buf + 0x80));
    __m512i z3 = _mm512_loadu_si512((const void *)(buf + 0xC0));
    z0 = _mm512_xor_si512(z0, _mm512_zextsi128_si512(_mm_cvtsi32_si128((int)state)));
    buf += 256;
    len -= 256;
    __m512i k = _mm512_broadcast_i32x4(_mm_load_si128((const __m128i *)(const void *)k2048));
    while (len >= 256) {
        z0 = fold512(z0, k, _mm512_loadu_si512((const void *)(buf + 0x00)));
        z1 = fold512(z1, k, _mm512_loadu_si512((const void *)(buf + 0x40)));
        z2 = fold512(z2, k, _mm512_loadu_si512((const void *)(buf + 0x80)));
        z3 = fold512(z3, k, _mm512_loadu_si512((const void *)(buf + 0xC0)));
        buf += 256;
        len -= 256;
    }
    k = _mm512_broadcast_i32x4(_mm_load_si128((const __m128i *)(const void *)k1k2));
    __m512i z = fold512(z0, k, z1);
    z = fold512(z, k, z2);
    z = fold512(z, k, z3);
    return crc32_pclmul_finish(_mm512_extracti32x4_epi32(z, 0), _mm512_extracti32x4_epi32(z, 1),
                               _mm512_extracti32x4_epi32(z, 2), _mm512_extracti32x4_epi32(z, 3), buf, len);
}

static int cpu_has_vpclmul(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl")
        && __builtin_cpu_supports("vpclmulqdq") && __builtin_cpu_supports("pclmul") && __builtin_cpu_supports("sse4.1");
}

/// `cpu_has_vpclmul`, asked once (it runs for every chunk).
static int cpu_has_vpclmul_cached(void) {
    static int known = -1;
    int wide = __atomic_load_n(&known, __ATOMIC_RELAXED);
    if (wide < 0) {
        wide = cpu_has_vpclmul();
        __atomic_store_n(&known, wide, __ATOMIC_RELAXED);
    }
    return wide;
}

static int cpu_has_pclmul(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("pclmul") && __builtin_cpu_supports("sse4.1");
}

#endif

int ferry_crc32_accelerated(void) {
#if FERRY_CRC_X86
    return cpu_has_pclmul();
#else
    return 0;
#endif
}

/// The CRC-32 of `buf` with the widest folding the CPU has (with `allow_wide` 0, 128-bit at
/// most), then slice-by-8 for the last bytes.
static uint32_t crc32_folded(uint32_t crc, const void *buf, size_t len, int allow_wide) {
    if (buf == NULL || len == 0) return crc;
    const unsigned char *p = (const unsigned char *)buf;
    uint32_t state = ~crc;
#if FERRY_CRC_X86
    size_t bulk = len & ~(size_t)15;
    if (allow_wide && len >= 256 && cpu_has_vpclmul_cached()) {
        state = crc32_vpclmul(state, p, bulk);
    } else if (len >= 64 && cpu_has_pclmul()) {
        state = crc32_pclmul(state, p, bulk);
    } else {
        bulk = 0;
    }
    p += bulk;
    len -= bulk;
#endif
    return ~crc32_slice8(state, p, len);
}

uint32_t ferry_crc32(uint32_t crc, const void *buf, size_t len) { return crc32_folded(crc, buf, len, 1); }

uint32_t ferry_crc32_pclmul128(uint32_t crc, const void *buf, size_t len) { return crc32_folded(crc, buf, len, 0); }

int ferry_crc32_wide(void) {
#if FERRY_CRC_X86
    return cpu_has_vpclmul();
#else
    return 0;
#endif
}
