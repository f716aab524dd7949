#ifndef CFERRYSYS_H
#define CFERRYSYS_H

#ifdef __cplusplus
extern "C" {
#endif

/// Opens `path` relative to `dirfd` with `openat2(2)`, resolved entirely inside `dirfd` and
/// through no symlink at all (`RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS`):
/// one system call for a path of any depth, with the guarantees of opening it one component at
/// a time with `O_NOFOLLOW`. `flags` are `open(2)` flags (`O_CLOEXEC` is added). Returns the
/// descriptor, or -1 with `errno` set: `ELOOP` when a component is a symlink, `EXDEV` when the
/// path would leave `dirfd`, and `ENOSYS` where the kernel (before Linux 5.6) or the platform
/// lacks `openat2` (a seccomp filter may answer `EPERM` or `ENOSYS` instead).
int ferry_open_beneath(int dirfd, const char *path, int flags);

#ifdef __cplusplus
}
#endif

#endif
