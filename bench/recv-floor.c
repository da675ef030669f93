/*
 * What receiving a file over loopback TCP into a file costs this machine, with nothing else
 * in the way: the floor under a dfdaemon child's CPU per GiB (bench/recv-floor.sh runs it).
 *
 * A forked sender serves 4 MiB pieces of SRC with sendfile(2), as a Damselfly parent does.
 * The receiver takes them with recv(2) into a 512 KiB buffer, reads the buffer once (as
 * hashing would touch it) and pwrite(2)s it into DST at the piece's offset, as the daemon's
 * writer does, on K threads:
 *   stream K=1   one connection for the whole file;
 *   pieces K     a connection per piece (as Vortex does), K pieces at once.
 * Prints wall seconds and the receiver's CPU seconds (user + system, from getrusage).
 *
 *   recv-floor stream|pieces K SRC DST PIECES
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#define PIECE (4L << 20)
#define BUFFER (512L << 10)
#define RECEIVE_BUFFER (4 << 20)

static struct sockaddr_in server;
static int out_fd;
static int pieces;
static int one_stream;
static atomic_int next_piece;
static volatile uint64_t sink;

static void fail(const char *what) {
    perror(what);
    exit(1);
}

/* Reads every word of the buffer once, as a hash would. */
static void touch(const char *bytes, size_t len) {
    const uint64_t *words = (const uint64_t *)bytes;
    uint64_t x = 0;
    for (size_t i = 0; i < len / 8; i++) x ^= words[i];
    sink ^= x;
}

static int connect_to_sender(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    int size = RECEIVE_BUFFER;
    if (fd < 0) fail("socket");
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
    if (connect(fd, (struct sockaddr *)&server, sizeof server)) fail("connect");
    return fd;
}

/* Receives `len` bytes from `fd` into the file at `offset`, a buffer at a time. */
static void receive(int fd, char *buffer, off_t offset, long len) {
    long done = 0;
    while (done < len) {
        long want = len - done < BUFFER ? len - done : BUFFER, filled = 0;
        while (filled < want) {
            ssize_t n = recv(fd, buffer + filled, want - filled, 0);
            if (n <= 0) fail("recv");
            filled += n;
        }
        touch(buffer, filled);
        if (pwrite(out_fd, buffer, filled, offset + done) != filled) fail("pwrite");
        done += filled;
    }
}

static void *receiver(void *unused) {
    (void)unused;
    char *buffer = malloc(BUFFER);
    if (!buffer) fail("malloc");
    if (one_stream) {
        int fd = connect_to_sender();
        int all = -1;
        if (write(fd, &all, sizeof all) != sizeof all) fail("write");
        receive(fd, buffer, 0, (long)pieces * PIECE);
        close(fd);
    }
    for (int i; !one_stream && (i = atomic_fetch_add(&next_piece, 1)) < pieces;) {
        int fd = connect_to_sender();
        if (write(fd, &i, sizeof i) != sizeof i) fail("write");
        receive(fd, buffer, (off_t)i * PIECE, PIECE);
        close(fd);
    }
    free(buffer);
    return NULL;
}

/* Sends piece `i` of `src` (or, for -1, all of them) on `fd`. */
static void send_piece(int fd, int src) {
    int i;
    if (read(fd, &i, sizeof i) != sizeof i) exit(1);
    off_t offset = i < 0 ? 0 : (off_t)i * PIECE;
    long left = i < 0 ? (long)pieces * PIECE : PIECE;
    while (left > 0) {
        ssize_t n = sendfile(fd, src, &offset, left);
        if (n <= 0) exit(1);
        left -= n;
    }
    close(fd);
}

static void sender(int listener, const char *path) {
    int src = open(path, O_RDONLY);
    if (src < 0) fail(path);
    signal(SIGCHLD, SIG_IGN);
    for (;;) {
        int fd = accept(listener, NULL, NULL);
        if (fd < 0) exit(0);
        if (fork() == 0) {
            send_piece(fd, src);
            exit(0);
        }
        close(fd);
    }
}

static double seconds(struct timeval t) { return t.tv_sec + t.tv_usec / 1e6; }

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: %s stream|pieces K SRC DST PIECES\n", argv[0]);
        return 2;
    }
    one_stream = strcmp(argv[1], "stream") == 0;
    int threads = atoi(argv[2]);
    pieces = atoi(argv[5]);
    if (threads < 1 || threads > 64 || pieces < 1 || (one_stream && threads != 1)) {
        fprintf(stderr, "K must be 1..64 (1 for stream), PIECES at least 1\n");
        return 2;
    }
    int listener = socket(AF_INET, SOCK_STREAM, 0);
    server.sin_family = AF_INET;
    server.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(listener, (struct sockaddr *)&server, sizeof server)) fail("bind");
    socklen_t len = sizeof server;
    getsockname(listener, (struct sockaddr *)&server, &len);
    if (listen(listener, 64)) fail("listen");
    pid_t sender_pid = fork();
    if (sender_pid == 0) sender(listener, argv[3]);
    close(listener);
    out_fd = open(argv[4], O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (out_fd < 0) fail(argv[4]);

    struct rusage before, after;
    struct timeval start, end;
    getrusage(RUSAGE_SELF, &before);
    gettimeofday(&start, NULL);
    pthread_t workers[64];
    for (int k = 0; k < threads; k++) pthread_create(&workers[k], NULL, receiver, NULL);
    for (int k = 0; k < threads; k++) pthread_join(workers[k], NULL);
    gettimeofday(&end, NULL);
    getrusage(RUSAGE_SELF, &after);
    kill(sender_pid, SIGTERM);
    waitpid(sender_pid, NULL, 0);

    double cpu = seconds(after.ru_utime) - seconds(before.ru_utime) + seconds(after.ru_stime) -
                 seconds(before.ru_stime);
    printf("%s %d %.3f %.3f\n", argv[1], threads, seconds(end) - seconds(start), cpu);
    return 0;
}
