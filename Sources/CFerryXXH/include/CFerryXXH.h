#ifndef CFERRYXXH_H
#define CFERRYXXH_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/// XXH3-128 (xxHash 0.8, from Debian's libxxhash-dev header, compiled into this target so the
/// binary needs no libxxhash at run time): the transfer digest of the `xxh128` capability.
/// A digest is written as 16 bytes in xxHash's canonical (big-endian) order, the order
/// `xxhsum -H2` prints.
typedef struct ferry_xxh128_state ferry_xxh128_state;

/// A new state, reset; NULL when memory runs out.
ferry_xxh128_state *ferry_xxh128_new(void);
void ferry_xxh128_free(ferry_xxh128_state *state);
void ferry_xxh128_update(ferry_xxh128_state *state, const void *bytes, size_t count);
/// The digest of everything given so far (the state can go on being updated).
void ferry_xxh128_digest(const ferry_xxh128_state *state, unsigned char out[16]);
/// The digest of `bytes` in one call.
void ferry_xxh128_oneshot(const void *bytes, size_t count, unsigned char out[16]);

/// The vector code used: 0 SSE2 (or portable C off x86-64), 1 AVX2, 2 AVX-512. The best the CPU
/// has is chosen on first use; `ferry_xxh128_use` picks a level for tests (returns 0, and
/// changes nothing, when the CPU lacks it).
int ferry_xxh128_best_level(void);
int ferry_xxh128_use(int level);

#ifdef __cplusplus
}
#endif

#endif
