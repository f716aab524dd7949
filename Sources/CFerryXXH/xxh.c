// Inline build of Debian's xxhash.h: the functions are compiled here, and the binary does not
// depend on libxxhash.so at run time.
#define XXH_INLINE_ALL
#include <xxhash.h>

#include "CFerryXXH.h"

struct ferry_xxh128_state {
    XXH3_state_t *xxh;
};

ferry_xxh128_state *ferry_xxh128_new(void) {
    ferry_xxh128_state *state = malloc(sizeof *state);
    if (state == NULL) return NULL;
    state->xxh = XXH3_createState();
    if (state->xxh == NULL) {
        free(state);
        return NULL;
    }
    XXH3_128bits_reset(state->xxh);
    return state;
}

void ferry_xxh128_free(ferry_xxh128_state *state) {
    if (state == NULL) return;
    XXH3_freeState(state->xxh);
    free(state);
}

void ferry_xxh128_update(ferry_xxh128_state *state, const void *bytes, size_t count) {
    if (count == 0) return;
    XXH3_128bits_update(state->xxh, bytes, count);
}

static void canonical(XXH128_hash_t hash, unsigned char out[16]) {
    XXH128_canonical_t c;
    XXH128_canonicalFromHash(&c, hash);
    memcpy(out, c.digest, 16);
}

void ferry_xxh128_digest(const ferry_xxh128_state *state, unsigned char out[16]) {
    canonical(XXH3_128bits_digest(state->xxh), out);
}

void ferry_xxh128_oneshot(const void *bytes, size_t count, unsigned char out[16]) {
    canonical(XXH3_128bits(bytes, count), out);
}
