/* flocklessfs BACKING MOUNTPOINT [fuse options]: a pass-through FUSE filesystem (libfuse 3) over the folder
 * BACKING whose flock() fails with ENOLCK, as an NFS mount without a lock daemon answers (Lustre mounted
 * without -o flock answers ENOSYS: FLOCKLESS_ERRNO=38). POSIX (fcntl) locks stay the kernel's local ones.
 * Every other operation is the backing folder's, through its file descriptors (tests/sharedfs.py mounts it). */
#define FUSE_USE_VERSION 31
#define _GNU_SOURCE
#include <fuse.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/time.h>

static int root_fd = -1;
static int refused = ENOLCK;

/* "/" -> ".", "/a/b" -> "a/b": paths relative to the backing folder for the *at() calls */
static const char *rel(const char *path) { return path[1] ? path + 1 : "."; }
#define CHECK(call) return (call) == -1 ? -errno : 0

static void *fs_init(struct fuse_conn_info *conn, struct fuse_config *cfg) {
    (void)conn;
    cfg->use_ino = 1;
    cfg->nullpath_ok = 1;
    cfg->entry_timeout = cfg->attr_timeout = cfg->negative_timeout = 0;
    return NULL;
}

static int fs_getattr(const char *path, struct stat *st, struct fuse_file_info *fi) {
    if (fi) CHECK(fstat(fi->fh, st));
    CHECK(fstatat(root_fd, rel(path), st, AT_SYMLINK_NOFOLLOW));
}
static int fs_access(const char *path, int mask) { CHECK(faccessat(root_fd, rel(path), mask, 0)); }
static int fs_readlink(const char *path, char *buf, size_t size) {
    ssize_t n = readlinkat(root_fd, rel(path), buf, size - 1);
    if (n == -1) return -errno;
    buf[n] = 0;
    return 0;
}
static int fs_opendir(const char *path, struct fuse_file_info *fi) {
    int fd = openat(root_fd, rel(path), O_RDONLY | O_DIRECTORY);
    if (fd == -1) return -errno;
    DIR *d = fdopendir(fd);
    if (!d) {
        close(fd);
        return -errno;
    }
    fi->fh = (uint64_t)(uintptr_t)d;
    return 0;
}
static int fs_readdir(const char *path, void *buf, fuse_fill_dir_t fill, off_t off, struct fuse_file_info *fi,
                      enum fuse_readdir_flags flags) {
    (void)path; (void)off; (void)flags;
    DIR *d = (DIR *)(uintptr_t)fi->fh;
    rewinddir(d); /* offset-less filling: every call lists the whole folder */
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        struct stat st = {.st_ino = e->d_ino, .st_mode = (mode_t)e->d_type << 12};
        if (fill(buf, e->d_name, &st, 0, 0)) break;
    }
    return 0;
}
static int fs_releasedir(const char *path, struct fuse_file_info *fi) {
    (void)path;
    closedir((DIR *)(uintptr_t)fi->fh);
    return 0;
}
static int fs_mknod(const char *path, mode_t mode, dev_t rdev) { CHECK(mknodat(root_fd, rel(path), mode, rdev)); }
static int fs_mkdir(const char *path, mode_t mode) { CHECK(mkdirat(root_fd, rel(path), mode)); }
static int fs_unlink(const char *path) { CHECK(unlinkat(root_fd, rel(path), 0)); }
static int fs_rmdir(const char *path) { CHECK(unlinkat(root_fd, rel(path), AT_REMOVEDIR)); }
static int fs_symlink(const char *to, const char *path) { CHECK(symlinkat(to, root_fd, rel(path))); }
static int fs_rename(const char *from, const char *to, unsigned int flags) {
    CHECK(renameat2(root_fd, rel(from), root_fd, rel(to), flags));
}
static int fs_link(const char *from, const char *to) { CHECK(linkat(root_fd, rel(from), root_fd, rel(to), 0)); }
static int fs_chmod(const char *path, mode_t mode, struct fuse_file_info *fi) {
    if (fi) CHECK(fchmod(fi->fh, mode));
    CHECK(fchmodat(root_fd, rel(path), mode, 0));
}
static int fs_chown(const char *path, uid_t uid, gid_t gid, struct fuse_file_info *fi) {
    if (fi) CHECK(fchown(fi->fh, uid, gid));
    CHECK(fchownat(root_fd, rel(path), uid, gid, AT_SYMLINK_NOFOLLOW));
}
static int fs_truncate(const char *path, off_t size, struct fuse_file_info *fi) {
    if (fi) CHECK(ftruncate(fi->fh, size));
    int fd = openat(root_fd, rel(path), O_WRONLY);
    if (fd == -1) return -errno;
    int r = ftruncate(fd, size) == -1 ? -errno : 0;
    close(fd);
    return r;
}
static int fs_utimens(const char *path, const struct timespec ts[2], struct fuse_file_info *fi) {
    if (fi) CHECK(futimens(fi->fh, ts));
    CHECK(utimensat(root_fd, rel(path), ts, AT_SYMLINK_NOFOLLOW));
}
static int fs_create(const char *path, mode_t mode, struct fuse_file_info *fi) {
    int fd = openat(root_fd, rel(path), fi->flags, mode);
    if (fd == -1) return -errno;
    fi->fh = fd;
    return 0;
}
static int fs_open(const char *path, struct fuse_file_info *fi) {
    int fd = openat(root_fd, rel(path), fi->flags & ~O_NOFOLLOW);
    if (fd == -1) return -errno;
    fi->fh = fd;
    return 0;
}
static int fs_read(const char *path, char *buf, size_t size, off_t off, struct fuse_file_info *fi) {
    (void)path;
    ssize_t n = pread(fi->fh, buf, size, off);
    return n == -1 ? -errno : (int)n;
}
static int fs_write(const char *path, const char *buf, size_t size, off_t off, struct fuse_file_info *fi) {
    (void)path;
    ssize_t n = pwrite(fi->fh, buf, size, off);
    return n == -1 ? -errno : (int)n;
}
static int fs_statfs(const char *path, struct statvfs *st) { (void)path; CHECK(fstatvfs(root_fd, st)); }
static int fs_flush(const char *path, struct fuse_file_info *fi) { (void)path; (void)fi; return 0; }
static int fs_release(const char *path, struct fuse_file_info *fi) { (void)path; close(fi->fh); return 0; }
static int fs_fsync(const char *path, int datasync, struct fuse_file_info *fi) {
    (void)path;
    CHECK(datasync ? fdatasync(fi->fh) : fsync(fi->fh));
}
static int fs_fallocate(const char *path, int mode, off_t off, off_t len, struct fuse_file_info *fi) {
    (void)path;
    CHECK(fallocate(fi->fh, mode, off, len));
}
static int fs_flock(const char *path, struct fuse_file_info *fi, int op) {
    (void)path; (void)fi; (void)op;
    return -refused;
}

static const struct fuse_operations ops = {
    .init = fs_init, .getattr = fs_getattr, .access = fs_access, .readlink = fs_readlink, .opendir = fs_opendir,
    .readdir = fs_readdir, .releasedir = fs_releasedir, .mknod = fs_mknod, .mkdir = fs_mkdir, .unlink = fs_unlink,
    .rmdir = fs_rmdir,
    .symlink = fs_symlink, .rename = fs_rename, .link = fs_link, .chmod = fs_chmod, .chown = fs_chown,
    .truncate = fs_truncate, .utimens = fs_utimens, .create = fs_create, .open = fs_open, .read = fs_read,
    .write = fs_write, .statfs = fs_statfs, .flush = fs_flush, .release = fs_release, .fsync = fs_fsync,
    .fallocate = fs_fallocate, .flock = fs_flock,
};

int main(int argc, char *argv[]) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s BACKING MOUNTPOINT [fuse options]\n", argv[0]);
        return 2;
    }
    root_fd = open(argv[1], O_RDONLY | O_DIRECTORY);
    if (root_fd == -1) {
        perror(argv[1]);
        return 2;
    }
    const char *e = getenv("FLOCKLESS_ERRNO");
    if (e && atoi(e) > 0) refused = atoi(e);
    argv[1] = argv[0];
    return fuse_main(argc - 1, argv + 1, &ops, NULL);
}
