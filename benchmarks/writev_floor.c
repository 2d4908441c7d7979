/*
 * The kernel's floor for QEMUFile's zero-copy page stream, with no Python at all.
 *
 *   cc -O2 -o /tmp/writev_floor benchmarks/writev_floor.c && /tmp/writev_floor
 *
 * Sends 16384 records of an 8-byte header and a 4 KiB page (64 MiB) over a
 * unix socketpair to a forked reader, three ways, and prints the best of 7:
 *
 *   write32k    write(2) of the bytes in 32 KiB chunks (bench_qemufile's "raw")
 *   writev64    writev(2) of header, page, header, page... 64 iovecs a call:
 *               what put_buffer_async hands the kernel
 *   write128k   write(2) in chunks of 32 records (the same bytes per call as writev64)
 *
 * and the ratio write32k / writev64: the best bench_qemufile's
 * "put_buffer_async / sendall" row could ever show on this machine.
 */

#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PAGES 16384
#define PAGE 4096
#define RECORD (PAGE + 8)
#define TOTAL ((size_t)PAGES * RECORD)
#define REPEAT 7

static double
now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static void
write_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w <= 0) {
            perror("write");
            exit(1);
        }
        p += w;
        n -= (size_t)w;
    }
}

static void
send_chunks(int fd, const char *stream, size_t chunk)
{
    for (size_t at = 0; at < TOTAL; at += chunk) {
        write_all(fd, stream + at, TOTAL - at < chunk ? TOTAL - at : chunk);
    }
}

static void
send_iovecs(int fd, char *stream)
{
    struct iovec iov[64];
    for (int k = 0; k < PAGES; k += 32) {
        for (int j = 0; j < 32; j++) {
            char *record = stream + (size_t)(k + j) * RECORD;
            iov[2 * j] = (struct iovec){record, 8};
            iov[2 * j + 1] = (struct iovec){record + 8, PAGE};
        }
        ssize_t w = writev(fd, iov, 64);
        if (w != 32 * RECORD) { /* a blocking unix socket takes it all */
            fprintf(stderr, "short writev: %zd\n", w);
            exit(1);
        }
    }
}

int
main(void)
{
    int sv[2], control[2], ack[2], size = 1 << 20;
    char *stream = malloc(TOTAL), c = 'D';
    if (stream == NULL || socketpair(AF_UNIX, SOCK_STREAM, 0, sv) || pipe(control) || pipe(ack)) {
        perror("setup");
        return 1;
    }
    memset(stream, 7, TOTAL);
    for (int i = 0; i < 2; i++) {
        setsockopt(sv[i], SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
        setsockopt(sv[i], SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
    }
    pid_t pid = fork();
    if (pid == 0) { /* the reader: drain TOTAL bytes per command, then ack */
        char *sink = malloc(1 << 20);
        close(control[1]);
        while (read(control[0], &c, 1) == 1) {
            for (size_t left = TOTAL; left;) {
                ssize_t n = read(sv[1], sink, left < (1 << 20) ? left : (1 << 20));
                if (n <= 0) {
                    _exit(1);
                }
                left -= (size_t)n;
            }
            if (write(ack[1], "!", 1) != 1) {
                _exit(1);
            }
        }
        _exit(0);
    }
    close(control[0]);
    const char *names[3] = {"write32k", "writev64", "write128k"};
    double best[3] = {1e9, 1e9, 1e9};
    for (int rep = 0; rep <= REPEAT; rep++) { /* round 0 warms up */
        for (int mode = 0; mode < 3; mode++) {
            write_all(control[1], &c, 1);
            double start = now();
            if (mode == 0) {
                send_chunks(sv[0], stream, 32768);
            }
            else if (mode == 1) {
                send_iovecs(sv[0], stream);
            }
            else {
                send_chunks(sv[0], stream, 32 * RECORD);
            }
            if (read(ack[0], &c, 1) != 1) {
                fprintf(stderr, "reader died\n");
                return 1;
            }
            double took = now() - start;
            if (rep > 0 && took < best[mode]) {
                best[mode] = took;
            }
        }
    }
    close(control[1]);
    waitpid(pid, NULL, 0);
    for (int mode = 0; mode < 3; mode++) {
        printf("%-10s %6.2f ms\n", names[mode], best[mode] * 1e3);
    }
    printf("write32k / writev64 = %.2f (the zero-copy page stream's ceiling)\n", best[0] / best[1]);
    return 0;
}
