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

/// Folds `len` bytes (a multiple of 16, at least 64) into the inverted CRC state `state`.
__attribute__((target("pclmul,sse4.1")))
static uint32_t crc32_pclmul(uint32_t state, const unsigned char *buf, size_t len) {
    __m128i x0, x1, x2, x3, x4, x5, x6, x7, x8, y5, y6, y7, y8;

    x1 = _mm_loadu_si128((const __m128i *)(const void *)(buf + 0x00));
    x2 = _mm_loadu_si128((const __m128i *)(const void *)(buf + 0x10));
    x3 = _mm_loadu_si128((const __m128i *)(const void *)(buf + 0x20));
    x4 = _mm_loadu_si128((const __m128i *)(const void *)(buf + 0x30));
    x1 = _mm_xor_si128(x1, _mm_cvtsi32_si128((int)state));
    x0 = _mm_load_si128((const __m128i *)(const void *)k1k2);
    buf += 64;
    len -= 64;

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

uint32_t ferry_crc32(uint32_t crc, const void *buf, size_t len) {
    if (buf == NULL || len == 0) return crc;
    const unsigned char *p = (const unsigned char *)buf;
    uint32_t state = ~crc;
#if FERRY_CRC_X86
    if (len >= 64 && cpu_has_pclmul()) {
        size_t bulk = len & ~(size_t)15;
        state = crc32_pclmul(state, p, bulk);
        p += bulk;
        len -= bulk;
    }
#endif
    return ~crc32_slice8(state, p, len);
}
