#include "CFerrySys.h"

#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#ifdef __linux__
#include <sys/syscall.h>
#include <unistd.h>
#endif

/// The layout `getdents64(2)` fills (`struct linux_dirent64`).
struct ferry_dirent64 {
    uint64_t d_ino;
    int64_t d_off;
    unsigned short d_reclen;
    unsigned char d_type;
    char d_name[];
};

long ferry_read_directory(int fd, void *buffer, unsigned long length) {
#if defined(__linux__) && defined(SYS_getdents64)
    long n;
    do {
        n = syscall(SYS_getdents64, fd, buffer, length);
    } while (n < 0 && errno == EINTR);
    return n;
#else
    (void)fd; (void)buffer; (void)length;
    errno = ENOSYS;
    return -1;
#endif
}

long ferry_dirent_at(const void *buffer, long filled, long offset, const char **name, unsigned long *nameLength) {
    const long header = (long)offsetof(struct ferry_dirent64, d_name);
    if (offset < 0 || filled - offset <= header) return -1;
    const struct ferry_dirent64 *d = (const struct ferry_dirent64 *)((const char *)buffer + offset);
    long reclen = d->d_reclen;
    if (reclen <= header || reclen > filled - offset) return -1;
    // The name ends at its NUL, which the kernel always writes inside the record.
    const char *end = memchr(d->d_name, 0, (size_t)(reclen - header));
    if (end == NULL) return -1;
    *name = d->d_name;
    *nameLength = (unsigned long)(end - d->d_name);
    return offset + reclen;
}
