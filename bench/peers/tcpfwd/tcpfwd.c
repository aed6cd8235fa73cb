/*
 * tcpfwd: the floor of this machine for bench/compare, and its own load mode.
 *
 *   tcpfwd serve PORT [--host ADDR]
 *   tcpfwd pairs --url tcp://HOST:PORT --duration SECS [--connections N]
 *                [--in-flight K] [--payload P] [--json]
 *
 * serve: a single-threaded epoll relay with no WebSocket and no routing. It
 * pairs accepted connections in accept order (1st with 2nd, 3rd with 4th, ...;
 * one that closes while it waits for a partner is dropped)
 * and copies bytes from each to its partner: one read() of up to 64 KiB, one
 * write() of what was read (TCP_NODELAY; a partial write parks the rest and
 * stops reading that side until the partner drains). Closing either side
 * closes both. Its CPU time per message is the least a user-space relay on
 * this kernel can spend: the loopback TCP stack, epoll, read and write.
 *
 * pairs: the load generator for serve (wssgate-bench speaks WebSocket only),
 * with the same flags as `wssgate-bench pairs`: N connections, K messages of
 * P bytes in flight on each, for SECS seconds. A message is P raw bytes (no
 * framing: every P bytes are one message) that start with the send time and
 * the sender's index, so the receiver learns who its partner is and the
 * latency, and answers each delivery by sending the next message from the
 * partner, keeping K in flight per connection. One write per connection per
 * read (the replies to everything one read brought are sent together). It
 * prints the delivered count, msgs/s and latency percentiles (1 us buckets),
 * as one JSON line with --json. Stops by itself after SECS (and, as a
 * safeguard, is killed by SIGALRM 30 s later).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BUFSZ 65536

static void die(const char *what)
{
    perror(what);
    exit(1);
}

static void nodelay(int fd)
{
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

static void raise_nofile(void)
{
    struct rlimit r;
    if (getrlimit(RLIMIT_NOFILE, &r) == 0 && r.rlim_cur < r.rlim_max) {
        r.rlim_cur = r.rlim_max;
        setrlimit(RLIMIT_NOFILE, &r);
    }
}

/* ------------------------------------------------------------------ serve */

struct relay {
    int peer;        /* partner fd, -1 when unpaired or closed */
    int events;      /* what is registered with epoll */
    char *pend;      /* bytes read from this fd that the peer has not taken */
    size_t plen, poff;
};

static struct relay *rl;
static int nrl;
static int ep;

static void set_events(int fd)
{
    int want = (rl[fd].pend ? 0 : EPOLLIN) | (rl[rl[fd].peer].pend ? EPOLLOUT : 0);
    if (want != rl[fd].events) {
        struct epoll_event ev = {.events = want, .data.fd = fd};
        epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev);
        rl[fd].events = want;
    }
}

static void close_pair(int a)
{
    int b = rl[a].peer;
    int fds[2] = {a, b};
    for (int i = 0; i < 2; i++) {
        int fd = fds[i];
        if (fd < 0)
            continue;
        free(rl[fd].pend);
        rl[fd] = (struct relay){.peer = -1};
        close(fd);
    }
}

/* Writes what `from` has parked for its peer; returns -1 on error. */
static int drain(int from)
{
    struct relay *r = &rl[from];
    while (r->poff < r->plen) {
        ssize_t w = write(r->peer, r->pend + r->poff, r->plen - r->poff);
        if (w < 0) {
            if (errno == EAGAIN)
                return 0;
            if (errno == EINTR)
                continue;
            return -1;
        }
        r->poff += (size_t)w;
    }
    free(r->pend);
    r->pend = NULL;
    r->plen = r->poff = 0;
    return 0;
}

static int serve(int argc, char **argv)
{
    const char *host = "127.0.0.1";
    int port = 0;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--host") && i + 1 < argc)
            host = argv[++i];
        else if (!port && atoi(argv[i]) > 0)
            port = atoi(argv[i]);
        else {
            fprintf(stderr, "usage: tcpfwd serve PORT [--host ADDR]\n");
            return 2;
        }
    }
    if (!port) {
        fprintf(stderr, "usage: tcpfwd serve PORT [--host ADDR]\n");
        return 2;
    }
    raise_nofile();
    struct rlimit lim;
    getrlimit(RLIMIT_NOFILE, &lim);
    nrl = lim.rlim_cur > 1048576 ? 1048576 : (int)lim.rlim_cur;
    rl = calloc((size_t)nrl, sizeof *rl);
    for (int i = 0; i < nrl; i++)
        rl[i].peer = -1;
    signal(SIGPIPE, SIG_IGN);

    int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) {
        fprintf(stderr, "tcpfwd: bad address %s\n", host);
        return 2;
    }
    if (bind(ls, (struct sockaddr *)&sa, sizeof sa) < 0)
        die("bind");
    if (listen(ls, 4096) < 0)
        die("listen");
    ep = epoll_create1(0);
    struct epoll_event lev = {.events = EPOLLIN, .data.fd = ls};
    epoll_ctl(ep, EPOLL_CTL_ADD, ls, &lev);
    fprintf(stderr, "tcpfwd listening on %s:%d (raw TCP, pairs in accept order)\n", host, port);

    static char buf[BUFSZ];
    struct epoll_event evs[256];
    int waiting = -1;
    for (;;) {
        int n = epoll_wait(ep, evs, 256, -1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("epoll_wait");
        }
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == ls) {
                for (;;) {
                    int c = accept4(ls, NULL, NULL, SOCK_NONBLOCK);
                    if (c < 0)
                        break;
                    if (c >= nrl) {
                        close(c);
                        continue;
                    }
                    nodelay(c);
                    if (waiting < 0) {
                        /* Until it has a partner, only its close is watched
                         * (a port probe that connects and leaves must not be
                         * paired with the next client); what it sends waits
                         * in the socket. */
                        waiting = c;
                        rl[c].peer = -1;
                        struct epoll_event ev = {.events = EPOLLRDHUP, .data.fd = c};
                        epoll_ctl(ep, EPOLL_CTL_ADD, c, &ev);
                        continue;
                    }
                    int w = waiting;
                    waiting = -1;
                    rl[c].peer = w;
                    rl[w].peer = c;
                    struct epoll_event ev = {.events = EPOLLIN};
                    ev.data.fd = c;
                    epoll_ctl(ep, EPOLL_CTL_ADD, c, &ev);
                    ev.data.fd = w;
                    epoll_ctl(ep, EPOLL_CTL_MOD, w, &ev);
                    rl[c].events = rl[w].events = EPOLLIN;
                }
                continue;
            }
            if (rl[fd].peer < 0) {
                if (fd == waiting && (evs[i].events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR))) {
                    /* left before it had a partner */
                    close(fd);
                    waiting = -1;
                }
                continue; /* or closed earlier in this batch */
            }
            int peer = rl[fd].peer;
            uint32_t e = evs[i].events;
            if (e & EPOLLOUT) { /* the peer's parked bytes can go to fd now */
                if (drain(peer) < 0) {
                    close_pair(fd);
                    continue;
                }
                set_events(fd);
                set_events(peer);
            }
            if ((e & (EPOLLIN | EPOLLHUP | EPOLLERR)) && !rl[fd].pend) {
                ssize_t r = read(fd, buf, sizeof buf);
                if (r < 0 && (errno == EAGAIN || errno == EINTR))
                    continue;
                if (r <= 0) {
                    close_pair(fd);
                    continue;
                }
                ssize_t w = write(peer, buf, (size_t)r);
                if (w < 0 && errno == EAGAIN)
                    w = 0;
                if (w < 0) {
                    close_pair(fd);
                    continue;
                }
                if (w < r) {
                    rl[fd].plen = (size_t)(r - w);
                    rl[fd].poff = 0;
                    rl[fd].pend = malloc(rl[fd].plen);
                    memcpy(rl[fd].pend, buf + w, rl[fd].plen);
                    set_events(fd);
                    set_events(peer);
                }
            }
        }
    }
}

/* ------------------------------------------------------------------ pairs */

#define HIST_US 1000000 /* 1 us buckets up to 1 s; above goes to `over` */

struct lconn {
    int fd;
    int partner;        /* index of the connection whose messages arrive here */
    char *in;           /* partial message carried over between reads */
    size_t inlen;
    char *out;          /* bytes queued to write */
    size_t outlen, outoff, outcap;
    int want_out;
};

static uint64_t now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static struct lconn *lc;
static int payload = 80;
static int lep;

static void queue_msg(int i, uint64_t ts)
{
    struct lconn *c = &lc[i];
    if (c->outlen + (size_t)payload > c->outcap) {
        if (c->outoff) { /* compact first */
            memmove(c->out, c->out + c->outoff, c->outlen - c->outoff);
            c->outlen -= c->outoff;
            c->outoff = 0;
        }
        while (c->outlen + (size_t)payload > c->outcap)
            c->outcap = c->outcap ? c->outcap * 2 : 4096;
        c->out = realloc(c->out, c->outcap);
    }
    char *m = c->out + c->outlen;
    memcpy(m, &ts, 8);
    uint32_t idx = (uint32_t)i;
    memcpy(m + 8, &idx, 4);
    memset(m + 12, 'x', (size_t)payload - 12);
    c->outlen += (size_t)payload;
}

static int flush_out(int i)
{
    struct lconn *c = &lc[i];
    while (c->outoff < c->outlen) {
        ssize_t w = write(c->fd, c->out + c->outoff, c->outlen - c->outoff);
        if (w < 0) {
            if (errno == EAGAIN)
                break;
            if (errno == EINTR)
                continue;
            return -1;
        }
        c->outoff += (size_t)w;
    }
    if (c->outoff == c->outlen)
        c->outoff = c->outlen = 0;
    int want = c->outlen > 0;
    if (want != c->want_out) {
        struct epoll_event ev = {.events = EPOLLIN | (want ? EPOLLOUT : 0), .data.u32 = (uint32_t)i};
        epoll_ctl(lep, EPOLL_CTL_MOD, c->fd, &ev);
        c->want_out = want;
    }
    return 0;
}

static double pct(const uint32_t *hist, uint64_t over, uint64_t total, double p, uint64_t max_ns)
{
    if (!total)
        return 0;
    uint64_t rank = (uint64_t)(p / 100.0 * (double)total + 0.5);
    if (rank < 1)
        rank = 1;
    uint64_t seen = 0;
    for (int b = 0; b < HIST_US; b++) {
        seen += hist[b];
        if (seen >= rank)
            return b + 1; /* upper edge of the bucket, us */
    }
    (void)over;
    return (double)max_ns / 1000.0;
}

static int pairs(int argc, char **argv)
{
    const char *url = NULL;
    int conns = 100, inflight = 4, json = 0;
    double duration = 0;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--json"))
            json = 1;
        else if (!strcmp(a, "--url") && v)
            url = v, i++;
        else if (!strcmp(a, "--duration") && v)
            duration = atof(v), i++;
        else if (!strcmp(a, "--connections") && v)
            conns = atoi(v), i++;
        else if (!strcmp(a, "--in-flight") && v)
            inflight = atoi(v), i++;
        else if ((!strcmp(a, "--payload") || !strcmp(a, "--size")) && v)
            payload = atoi(v), i++;
        else {
            fprintf(stderr, "tcpfwd pairs: unknown or incomplete flag %s\n", a);
            return 2;
        }
    }
    if (!url || duration <= 0 || conns < 2 || conns % 2 || inflight < 1 || payload < 12) {
        fprintf(stderr, "usage: tcpfwd pairs --url tcp://HOST:PORT --duration SECS [--connections N(even)] "
                        "[--in-flight K] [--payload P(>=12)] [--json]\n");
        return 2;
    }
    /* tcp://host:port, or any scheme://host:port/... */
    char host[256];
    int port = 0;
    const char *p = strstr(url, "://");
    p = p ? p + 3 : url;
    const char *colon = strrchr(p, ':');
    if (!colon || (size_t)(colon - p) >= sizeof host) {
        fprintf(stderr, "tcpfwd pairs: bad url %s\n", url);
        return 2;
    }
    memcpy(host, p, (size_t)(colon - p));
    host[colon - p] = 0;
    port = atoi(colon + 1);
    if (!strcmp(host, "localhost"))
        strcpy(host, "127.0.0.1");

    raise_nofile();
    signal(SIGPIPE, SIG_IGN);
    alarm((unsigned)duration + 30);

    lc = calloc((size_t)conns, sizeof *lc);
    lep = epoll_create1(0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) {
        fprintf(stderr, "tcpfwd pairs: bad address %s\n", host);
        return 2;
    }
    for (int i = 0; i < conns; i++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0)
            die("connect");
        nodelay(fd);
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
        lc[i] = (struct lconn){.fd = fd, .partner = -1};
        lc[i].in = malloc((size_t)payload);
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
        epoll_ctl(lep, EPOLL_CTL_ADD, fd, &ev);
    }

    uint32_t *hist = calloc(HIST_US, sizeof *hist);
    uint64_t over = 0, delivered = 0, max_ns = 0;
    struct rusage ru0;
    getrusage(RUSAGE_SELF, &ru0);
    uint64_t t0 = now_ns();
    uint64_t end = t0 + (uint64_t)(duration * 1e9);
    for (int i = 0; i < conns; i++) {
        for (int k = 0; k < inflight; k++)
            queue_msg(i, now_ns());
        if (flush_out(i) < 0)
            die("write");
    }

    static char buf[BUFSZ];
    struct epoll_event evs[256];
    uint64_t t = t0;
    int errors = 0;
    while (t < end) {
        int n = epoll_wait(lep, evs, 256, 100);
        t = now_ns();
        for (int e = 0; e < n && t < end; e++) {
            int i = (int)evs[e].data.u32;
            struct lconn *c = &lc[i];
            if (evs[e].events & EPOLLOUT && flush_out(i) < 0) {
                errors++;
                goto done;
            }
            if (!(evs[e].events & (EPOLLIN | EPOLLHUP | EPOLLERR)))
                continue;
            ssize_t r = read(c->fd, buf, sizeof buf);
            if (r < 0 && (errno == EAGAIN || errno == EINTR))
                continue;
            if (r <= 0) {
                fprintf(stderr, "tcpfwd pairs: connection %d closed by the server\n", i);
                errors++;
                goto done;
            }
            uint64_t rt = now_ns();
            size_t off = 0;
            int from = -1;
            while (off < (size_t)r) {
                size_t take = (size_t)payload - c->inlen;
                if (take > (size_t)r - off)
                    take = (size_t)r - off;
                memcpy(c->in + c->inlen, buf + off, take);
                c->inlen += take;
                off += take;
                if (c->inlen < (size_t)payload)
                    break;
                c->inlen = 0;
                uint64_t ts;
                uint32_t src;
                memcpy(&ts, c->in, 8);
                memcpy(&src, c->in + 8, 4);
                if (src >= (uint32_t)conns || (c->partner >= 0 && (uint32_t)c->partner != src)) {
                    fprintf(stderr, "tcpfwd pairs: connection %d got a message from %u\n", i, src);
                    errors++;
                    goto done;
                }
                c->partner = (int)src;
                from = (int)src;
                uint64_t lat = rt - ts;
                uint64_t us = lat / 1000;
                if (us < HIST_US)
                    hist[us]++;
                else
                    over++;
                if (lat > max_ns)
                    max_ns = lat;
                delivered++;
                queue_msg((int)src, rt); /* the partner sends its next one */
            }
            if (from >= 0 && flush_out(from) < 0) {
                errors++;
                goto done;
            }
        }
    }
done:;
    uint64_t t1 = now_ns();
    struct rusage ru1;
    getrusage(RUSAGE_SELF, &ru1);
    double secs = (double)(t1 - t0) / 1e9;
    double cpu = (double)(ru1.ru_utime.tv_sec - ru0.ru_utime.tv_sec) +
                 (double)(ru1.ru_utime.tv_usec - ru0.ru_utime.tv_usec) / 1e6 +
                 (double)(ru1.ru_stime.tv_sec - ru0.ru_stime.tv_sec) +
                 (double)(ru1.ru_stime.tv_usec - ru0.ru_stime.tv_usec) / 1e6;
    double rate = (double)delivered / secs;
    double p50 = pct(hist, over, delivered, 50, max_ns), p99 = pct(hist, over, delivered, 99, max_ns),
           p999 = pct(hist, over, delivered, 99.9, max_ns);
    if (json)
        printf("{\"scenario\":\"pairs\",\"target\":\"tcpfwd\",\"url\":\"%s\",\"connections\":%d,"
               "\"in_flight\":%d,\"payload\":%d,\"duration_s\":%.3f,\"delivered\":%llu,"
               "\"msgs_per_sec\":%.1f,\"latency_us\":{\"p50\":%.0f,\"p99\":%.0f,\"p999\":%.0f,"
               "\"max\":%.0f},\"load_cpu_s\":%.3f,\"errors\":%d}\n",
               url, conns, inflight, payload, secs, (unsigned long long)delivered, rate, p50, p99,
               p999, (double)max_ns / 1000.0, cpu, errors);
    else
        printf("pairs %s: %d connections, %d in flight, %d-byte messages, %.1f s\n"
               "delivered %llu (%.0f msgs/s); latency us p50 %.0f p99 %.0f p99.9 %.0f max %.0f; "
               "load CPU %.2f s%s\n",
               url, conns, inflight, payload, secs, (unsigned long long)delivered, rate, p50, p99,
               p999, (double)max_ns / 1000.0, cpu, errors ? " (ERRORS)" : "");
    for (int i = 0; i < conns; i++)
        close(lc[i].fd);
    return errors ? 1 : 0;
}

int main(int argc, char **argv)
{
    if (argc >= 2 && !strcmp(argv[1], "serve"))
        return serve(argc - 2, argv + 2);
    if (argc >= 2 && !strcmp(argv[1], "pairs"))
        return pairs(argc - 2, argv + 2);
    fprintf(stderr, "usage: tcpfwd serve PORT [--host ADDR]\n"
                    "       tcpfwd pairs --url tcp://HOST:PORT --duration SECS [--connections N] "
                    "[--in-flight K] [--payload P] [--json]\n");
    return 2;
}
