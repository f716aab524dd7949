#ifndef CFERRYCRC_H
#define CFERRYCRC_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/// Standard CRC-32 (IEEE 802.3, reflected polynomial 0xEDB88320): the value zlib's
/// `crc32_z(crc, buf, len)` returns. `crc` is the CRC of the bytes before `buf` (0 to start),
/// so `ferry_crc32(ferry_crc32(0, a, n), b, m)` is the CRC of `a` followed by `b`.
/// Uses PCLMULQDQ folding when the CPU has it (checked at run time), else the portable path.
uint32_t ferry_crc32(uint32_t crc, const void *buf, size_t len);

/// The portable path alone (slice-by-8 tables), whatever the CPU: same results, slower.
uint32_t ferry_crc32_portable(uint32_t crc, const void *buf, size_t len);

/// 1 when `ferry_crc32` uses the carry-less-multiply path on this CPU, else 0.
int ferry_crc32_accelerated(void);
/// 1 when `ferry_crc32` folds buffers of 256 bytes or more with VPCLMULQDQ on AVX-512
/// registers (256 bytes a step), else 0.
int ferry_crc32_wide(void);
/// The 128-bit PCLMULQDQ path alone (the portable one without PCLMULQDQ): for tests, so both
/// carry-less-multiply paths are checked on a CPU that has the wide one.
uint32_t ferry_crc32_pclmul128(uint32_t crc, const void *buf, size_t len);

#ifdef __cplusplus
}
#endif

#endif
