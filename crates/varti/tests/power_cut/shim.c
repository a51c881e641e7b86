/*
 * Power-cut shim for tests/power_cut.rs (LD_PRELOAD; Linux, glibc).
 *
 * Records, for every change a process makes to files under $POWERCUT_ROOT, how to undo it,
 * and when an fsync makes it durable. After the process is killed, the test replays the
 * log backwards and undoes every change that no fsync had made durable: what is left is
 * what a disk would hold after a power cut (the page cache lost).
 *
 * The model (strict POSIX, a little stricter than ext4 with data=ordered):
 *   - file data written (write, pwrite, writev, ftruncate) is durable once fsync or
 *     fdatasync on that file returns, or, for a range, once sync_file_range with
 *     WAIT_AFTER covering it returns (what sled relies on for its log);
 *   - a name change (creating a file, rename, unlink) is durable once fsync on its
 *     directory returns;
 *   - mkdir is taken as durable (the test creates the store's directories beforehand).
 * The undo record is written before the change (so a change the kill interrupted is
 * undone too); durability records after the fsync returned, covering only what was
 * logged before it started. Log writes go straight to the kernel, which keeps them when
 * the process is killed.
 *
 * Log entry: kind u8, seq u64, a u64, b u64, c u64, len1 u32, len2 u32, len3 u64, then
 * path1, path2, data (little endian). Kinds:
 *   'S' path1 had size a before its first change since it was last durable
 *   'W' path1 held `data` at offset a before a write
 *   'F' path1 fsync'd: its changes logged before seq c are durable
 *   'Q' path1 range [a, a+b) synced: its writes there logged before seq c are durable
 *   'C' path1 was created
 *   'R' path1 renamed to path2; data = where the file path2 replaced was linked aside
 *   'U' path1 unlinked; data = where it was linked aside
 *   'D' directory path1 fsync'd: its name changes logged before seq c are durable
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

#define MAX_FD 65536

static pthread_mutex_t lock = PTHREAD_RECURSIVE_MUTEX_INITIALIZER_NP;
static int log_fd = -1;
static uint64_t seq = 1;
static unsigned long aside_counter = 0;
static char root[4096];
static size_t root_len = 0;
static char aside_dir[4096];
/* Per fd: 0 unknown, 1 tracked, 2 not tracked. */
static unsigned char fd_state[MAX_FD];
static char *fd_path[MAX_FD];
/* Paths changed since they were last durable (their size was logged). */
#define MAX_DIRTY 1024
static char *dirty[MAX_DIRTY];

static ssize_t (*real_write)(int, const void *, size_t);
static ssize_t (*real_pwrite)(int, const void *, size_t, off_t);
static ssize_t (*real_pwrite64)(int, const void *, size_t, off64_t);
static ssize_t (*real_writev)(int, const struct iovec *, int);
static int (*real_fsync)(int);
static int (*real_fdatasync)(int);
static int (*real_sync_file_range)(int, off64_t, off64_t, unsigned int);
static int (*real_ftruncate)(int, off_t);
static int (*real_ftruncate64)(int, off64_t);
static int (*real_rename)(const char *, const char *);
static int (*real_unlink)(const char *);
static int (*real_close)(int);
static int (*real_open)(const char *, int, ...);
static int (*real_open64)(const char *, int, ...);
static int (*real_openat)(int, const char *, int, ...);
static int (*real_openat64)(int, const char *, int, ...);

static void init(void) __attribute__((constructor));
static void init(void) {
    real_write = dlsym(RTLD_NEXT, "write");
    real_pwrite = dlsym(RTLD_NEXT, "pwrite");
    real_pwrite64 = dlsym(RTLD_NEXT, "pwrite64");
    real_writev = dlsym(RTLD_NEXT, "writev");
    real_fsync = dlsym(RTLD_NEXT, "fsync");
    real_fdatasync = dlsym(RTLD_NEXT, "fdatasync");
    real_sync_file_range = dlsym(RTLD_NEXT, "sync_file_range");
    real_ftruncate = dlsym(RTLD_NEXT, "ftruncate");
    real_ftruncate64 = dlsym(RTLD_NEXT, "ftruncate64");
    real_rename = dlsym(RTLD_NEXT, "rename");
    real_unlink = dlsym(RTLD_NEXT, "unlink");
    real_close = dlsym(RTLD_NEXT, "close");
    real_open = dlsym(RTLD_NEXT, "open");
    real_open64 = dlsym(RTLD_NEXT, "open64");
    real_openat = dlsym(RTLD_NEXT, "openat");
    real_openat64 = dlsym(RTLD_NEXT, "openat64");
    const char *r = getenv("POWERCUT_ROOT");
    const char *l = getenv("POWERCUT_LOG");
    const char *a = getenv("POWERCUT_ASIDE");
    if (!r || !l || !a) return;
    snprintf(root, sizeof root, "%s/", r);
    root_len = strlen(root);
    snprintf(aside_dir, sizeof aside_dir, "%s", a);
    log_fd = real_open(l, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
}

/* Under the root, or the root itself (its directory entries matter too). */
static int tracked_path(const char *p) {
    if (log_fd < 0 || !p || p[0] != '/') return 0;
    return strncmp(p, root, root_len) == 0 ||
           (strncmp(p, root, root_len - 1) == 0 && p[root_len - 1] == 0);
}

static void put(char *buf, size_t *at, const void *v, size_t n) {
    memcpy(buf + *at, v, n);
    *at += n;
}

/* Appends one entry; returns its seq. Caller holds the lock. */
static uint64_t log_entry(char kind, uint64_t a, uint64_t b, uint64_t c, const char *p1,
                          const char *p2, const void *data, uint64_t len3) {
    uint32_t l1 = p1 ? strlen(p1) : 0, l2 = p2 ? strlen(p2) : 0;
    size_t total = 1 + 8 * 4 + 4 + 4 + 8 + l1 + l2 + len3;
    char *buf = malloc(total);
    size_t at = 0;
    uint64_t s = seq++;
    put(buf, &at, &kind, 1);
    put(buf, &at, &s, 8);
    put(buf, &at, &a, 8);
    put(buf, &at, &b, 8);
    put(buf, &at, &c, 8);
    put(buf, &at, &l1, 4);
    put(buf, &at, &l2, 4);
    put(buf, &at, &len3, 8);
    if (l1) put(buf, &at, p1, l1);
    if (l2) put(buf, &at, p2, l2);
    if (len3) put(buf, &at, data, len3);
    size_t done = 0;
    while (done < total) {
        ssize_t n = real_write(log_fd, buf + done, total - done);
        if (n <= 0) {
            if (n < 0 && errno == EINTR) continue;
            abort(); /* a lost undo record would make the test meaningless */
        }
        done += n;
    }
    free(buf);
    return s;
}

/* The tracked path of fd, or NULL. Caller holds the lock. */
static const char *fd_tracked(int fd) {
    if (log_fd < 0 || fd < 0 || fd >= MAX_FD || fd == log_fd) return NULL;
    if (fd_state[fd] == 0) {
        char link[64], target[4096];
        snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
        ssize_t n = readlink(link, target, sizeof target - 1);
        if (n > 0) {
            target[n] = 0;
            if (tracked_path(target)) {
                fd_path[fd] = strdup(target);
                fd_state[fd] = 1;
            } else {
                fd_state[fd] = 2;
            }
        } else {
            fd_state[fd] = 2;
        }
    }
    return fd_state[fd] == 1 ? fd_path[fd] : NULL;
}

static void forget_fd(int fd) {
    if (fd < 0 || fd >= MAX_FD) return;
    free(fd_path[fd]);
    fd_path[fd] = NULL;
    fd_state[fd] = 0;
}

static int is_dirty(const char *p) {
    for (int i = 0; i < MAX_DIRTY; i++)
        if (dirty[i] && strcmp(dirty[i], p) == 0) return 1;
    return 0;
}

static void mark_dirty(const char *p) {
    for (int i = 0; i < MAX_DIRTY; i++)
        if (!dirty[i]) {
            dirty[i] = strdup(p);
            return;
        }
    abort();
}

static void clear_dirty(const char *p) {
    for (int i = 0; i < MAX_DIRTY; i++)
        if (dirty[i] && strcmp(dirty[i], p) == 0) {
            free(dirty[i]);
            dirty[i] = NULL;
        }
}

/* Before changing [off, off+len) of fd's file (len 0 and shrink: a truncation to off). */
static void before_change(int fd, const char *p, off64_t off, size_t len, int truncate) {
    struct stat st;
    if (fstat(fd, &st) != 0) return;
    if (!is_dirty(p)) {
        log_entry('S', st.st_size, 0, 0, p, NULL, NULL, 0);
        mark_dirty(p);
    }
    off64_t end = truncate ? st.st_size : off + (off64_t)len;
    if (end > st.st_size) end = st.st_size;
    if (off >= end) return;
    size_t n = end - off;
    char *old = malloc(n);
    int rfd = real_open(p, O_RDONLY | O_CLOEXEC);
    ssize_t got = rfd >= 0 ? pread(rfd, old, n, off) : -1;
    if (rfd >= 0) real_close(rfd);
    if (got > 0) log_entry('W', off, 0, 0, p, NULL, old, got);
    free(old);
}

static off64_t current_offset(int fd) {
    int fl = fcntl(fd, F_GETFL);
    if (fl >= 0 && (fl & O_APPEND)) {
        struct stat st;
        return fstat(fd, &st) == 0 ? st.st_size : 0;
    }
    return lseek64(fd, 0, SEEK_CUR);
}

ssize_t write(int fd, const void *buf, size_t n) {
    pthread_mutex_lock(&lock);
    const char *p = fd_tracked(fd);
    if (p) before_change(fd, p, current_offset(fd), n, 0);
    ssize_t r = real_write(fd, buf, n);
    pthread_mutex_unlock(&lock);
    return r;
}

ssize_t writev(int fd, const struct iovec *iov, int cnt) {
    pthread_mutex_lock(&lock);
    const char *p = fd_tracked(fd);
    if (p) {
        size_t n = 0;
        for (int i = 0; i < cnt; i++) n += iov[i].iov_len;
        before_change(fd, p, current_offset(fd), n, 0);
    }
    ssize_t r = real_writev(fd, iov, cnt);
    pthread_mutex_unlock(&lock);
    return r;
}

ssize_t pwrite64(int fd, const void *buf, size_t n, off64_t off) {
    pthread_mutex_lock(&lock);
    const char *p = fd_tracked(fd);
    if (p) before_change(fd, p, off, n, 0);
    ssize_t r = real_pwrite64(fd, buf, n, off);
    pthread_mutex_unlock(&lock);
    return r;
}

ssize_t pwrite(int fd, const void *buf, size_t n, off_t off) {
    return pwrite64(fd, buf, n, off);
}

int ftruncate64(int fd, off64_t len) {
    pthread_mutex_lock(&lock);
    const char *p = fd_tracked(fd);
    if (p) before_change(fd, p, len, 0, 1);
    int r = real_ftruncate64(fd, len);
    pthread_mutex_unlock(&lock);
    return r;
}

int ftruncate(int fd, off_t len) { return ftruncate64(fd, len); }

/* A durability point: logged after the sync returned, covering entries before `upto`. */
static int synced(int fd, int r, uint64_t upto, char kind, off64_t off, off64_t len) {
    if (r != 0) return r;
    pthread_mutex_lock(&lock);
    const char *p = fd_tracked(fd);
    if (p) {
        struct stat st;
        if (fstat(fd, &st) == 0 && S_ISDIR(st.st_mode)) {
            log_entry('D', 0, 0, upto, p, NULL, NULL, 0);
        } else if (kind == 'F') {
            log_entry('F', 0, 0, upto, p, NULL, NULL, 0);
            clear_dirty(p);
        } else {
            log_entry('Q', off, len, upto, p, NULL, NULL, 0);
        }
    }
    pthread_mutex_unlock(&lock);
    return r;
}

static uint64_t next_seq(void) {
    pthread_mutex_lock(&lock);
    uint64_t s = seq;
    pthread_mutex_unlock(&lock);
    return s;
}

int fsync(int fd) {
    uint64_t upto = next_seq();
    return synced(fd, real_fsync(fd), upto, 'F', 0, 0);
}

int fdatasync(int fd) {
    uint64_t upto = next_seq();
    return synced(fd, real_fdatasync(fd), upto, 'F', 0, 0);
}

int sync_file_range(int fd, off64_t off, off64_t len, unsigned int flags) {
    uint64_t upto = next_seq();
    int r = real_sync_file_range(fd, off, len, flags);
    if (!(flags & SYNC_FILE_RANGE_WAIT_AFTER)) return r;
    return synced(fd, r, upto, 'Q', off, len);
}

/* Links `path` aside (it is about to be replaced or removed); the aside name, or "". */
static void link_aside(const char *path, char *out, size_t n) {
    out[0] = 0;
    struct stat st;
    if (stat(path, &st) != 0 || S_ISDIR(st.st_mode)) return;
    snprintf(out, n, "%s/%lu", aside_dir, ++aside_counter);
    if (link(path, out) != 0) out[0] = 0;
}

int rename(const char *from, const char *to) {
    if (!tracked_path(from) && !tracked_path(to)) return real_rename(from, to);
    pthread_mutex_lock(&lock);
    char aside[4200];
    link_aside(to, aside, sizeof aside);
    int r = real_rename(from, to);
    if (r == 0) log_entry('R', 0, 0, 0, from, to, aside, strlen(aside));
    pthread_mutex_unlock(&lock);
    return r;
}

int unlink(const char *path) {
    if (!tracked_path(path)) return real_unlink(path);
    pthread_mutex_lock(&lock);
    char aside[4200];
    link_aside(path, aside, sizeof aside);
    int r = real_unlink(path);
    if (r == 0) log_entry('U', 0, 0, 0, path, NULL, aside, strlen(aside));
    pthread_mutex_unlock(&lock);
    return r;
}

int close(int fd) {
    pthread_mutex_lock(&lock);
    forget_fd(fd);
    int r = real_close(fd);
    pthread_mutex_unlock(&lock);
    return r;
}

/* Opening: note files created under the root; forget what the fd number meant before. */
static int open_before(const char *path, int flags) {
    int creating = (flags & O_CREAT) && tracked_path(path);
    pthread_mutex_lock(&lock);
    struct stat st;
    return creating && stat(path, &st) != 0;
}

static int open_after(const char *path, int fd, int created) {
    if (fd >= 0) {
        forget_fd(fd);
        if (created) log_entry('C', 0, 0, 0, path, NULL, NULL, 0);
    }
    pthread_mutex_unlock(&lock);
    return fd;
}

static mode_t mode_of(int flags, va_list ap) {
    return (flags & (O_CREAT | __O_TMPFILE)) ? va_arg(ap, mode_t) : 0;
}

int open(const char *path, int flags, ...) {
    va_list ap;
    va_start(ap, flags);
    mode_t mode = mode_of(flags, ap);
    va_end(ap);
    int created = open_before(path, flags);
    return open_after(path, real_open(path, flags, mode), created);
}

int open64(const char *path, int flags, ...) {
    va_list ap;
    va_start(ap, flags);
    mode_t mode = mode_of(flags, ap);
    va_end(ap);
    int created = open_before(path, flags);
    return open_after(path, real_open64(path, flags, mode), created);
}

int openat(int dirfd, const char *path, int flags, ...) {
    va_list ap;
    va_start(ap, flags);
    mode_t mode = mode_of(flags, ap);
    va_end(ap);
    int created = open_before(path, flags);
    return open_after(path, real_openat(dirfd, path, flags, mode), created);
}

int openat64(int dirfd, const char *path, int flags, ...) {
    va_list ap;
    va_start(ap, flags);
    mode_t mode = mode_of(flags, ap);
    va_end(ap);
    int created = open_before(path, flags);
    return open_after(path, real_openat64(dirfd, path, flags, mode), created);
}
