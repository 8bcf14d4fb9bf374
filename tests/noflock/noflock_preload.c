/* LD_PRELOAD shim: flock() on a file under $NOFLOCK_UNDER fails with ENOLCK, as on an NFS mount whose lock
 * daemon is not running; with NOFLOCK_HANG=1 it never returns instead, as on a hard NFS mount whose lock daemon
 * is gone. Other files get the real flock(). Used where no FUSE filesystem can be mounted (tests/sharedfs.py). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int flock(int fd, int op) {
    static int (*real_flock)(int, int);
    const char *under = getenv("NOFLOCK_UNDER");
    if (under && *under) {
        char link[64], target[4096];
        snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
        ssize_t n = readlink(link, target, sizeof target - 1);
        size_t k = strlen(under);
        if (n > 0) {
            target[n] = 0;
            if (strncmp(target, under, k) == 0 && (target[k] == '/' || target[k] == 0)) {
                const char *hang = getenv("NOFLOCK_HANG");
                while (hang && *hang == '1')
                    pause();
                errno = ENOLCK;
                return -1;
            }
        }
    }
    if (!real_flock)
        real_flock = (int (*)(int, int))dlsym(RTLD_NEXT, "flock");
    return real_flock(fd, op);
}
