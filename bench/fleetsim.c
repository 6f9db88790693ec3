/*
 * fleetsim: a simulated fleet of delta-ADS proxies, cheap enough that a 2-core machine's cores go
 * to the server under test rather than to the simulator (bench/fleet.py's grpc.aio simulator
 * spends about as much CPU per push as the server does).
 *
 * One thread, epoll, non-blocking sockets, one TCP connection (one HTTP/2 stream) per simulated
 * proxy, as real Envoys have: a server with SO_REUSEPORT spreads them over its workers. It speaks
 * just enough HTTP/2, gRPC and protobuf by hand, with nothing beyond libc:
 *   - HTTP/2: the client preface, SETTINGS (push off, a 16 MiB stream window), a 16 MiB
 *     connection window, replenished as DATA is consumed; the server's SETTINGS are ACKed, its
 *     PINGs answered, its WINDOW_UPDATEs honoured (requests wait for send window). The request's
 *     header block is HPACK literals without indexing and without Huffman; response header blocks
 *     are skipped undecoded (we never decode, so never need the HPACK dynamic table).
 *     END_STREAM, RST_STREAM, GOAWAY, EOF or a protocol error end the stream: the proxy
 *     reconnects with jittered exponential backoff (0.25 s doubling to 5 s, like Envoy), counted.
 *   - gRPC: length-prefixed messages, reassembled across DATA frames, several per frame.
 *   - protobuf: DeltaDiscoveryRequest {node=1 {id=1, cluster=2, locality=4 {region=1}},
 *     type_url=2, resource_names_subscribe=3, response_nonce=6}; DeltaDiscoveryResponse
 *     {resources=2 {version=1, name=3}, type_url=4, nonce=5}.
 * Each proxy behaves as bench/fleet.py's _delta_stream: CDS first, LDS after the first response,
 * EDS for clusters as they arrive, RDS "ingress_http" once LDS has resources, an ACK (with the
 * nonce) for every response. A proxy is complete once it has RDS and at least --clusters EDS
 * resources. A watched EDS name: a proxy that receives a new version of it (not its first) writes
 * its ACK, then takes the wall-clock time (CLOCK_REALTIME, as Python's time.time()).
 *
 * Driven over stdin/stdout, one line each way (bench/fleetsim.py is the Python side):
 *   wait_complete SECONDS -> "complete ok ELAPSED_S" once every proxy is complete (ELAPSED_S from
 *                            the start), or "complete timeout COUNT"
 *   watch NAME SECONDS    -> "watching NAME" at once; then "watched ok|timeout COUNT LAST_ACK_TIME
 *                            CPU_S" when every proxy has ACKed a new version of NAME (or at the
 *                            deadline); LAST_ACK_TIME is Unix seconds
 *   stats                 -> "stats key=value ..." (counters, this process's CPU from getrusage)
 *   quit (or EOF)         -> exits
 * Usage: fleetsim --target HOST:PORT --streams N --clusters N [--node-prefix sim-]
 *        [--node-cluster fleet] [--region us-west] [--connect-rate 400] [--max-seconds 3600]
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define CDS_URL "type.googleapis.com/envoy.config.cluster.v3.Cluster"
#define EDS_URL "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
#define LDS_URL "type.googleapis.com/envoy.config.listener.v3.Listener"
#define RDS_URL "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
#define ADS_PATH "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources"

enum { T_OTHER, T_CDS, T_EDS, T_LDS, T_RDS };
enum { S_IDLE, S_CONNECTING, S_OPEN };

#define WINDOW (1u << 24)            /* our receive windows, connection and stream */
#define WINDOW_REFILL (1u << 20)     /* replenish once this much has been consumed */
#define MAX_FRAME 16384u             /* we never raise SETTINGS_MAX_FRAME_SIZE */
#define MAX_MESSAGE (64u << 20)      /* a bigger gRPC message is a protocol error here */
#define STDIN_ID UINT32_MAX

typedef struct {
    uint8_t *p;
    size_t len, cap;
} buf_t;

typedef struct {
    int fd, state, index;
    double connect_at, backoff; /* monotonic seconds */
    buf_t in, out, msg, pending;
    int64_t send_conn, send_stream; /* our send windows */
    uint32_t peer_initial_window, peer_max_frame;
    uint32_t recv_unacked;
    int want_out, got_response, asked_lds, have_rds, complete, pending_change;
    uint32_t watch_gen;
    int eds_count;
    uint32_t arr_cap;
    uint64_t *eds_version; /* by name id: FNV hash of the version, 0 = absent */
    uint8_t *cds_seen;     /* by name id */
} sim_t;

/* options */
static const char *target = NULL;
static char host[256], port[16];
static int streams = 0, clusters = 0;
static const char *node_prefix = "sim-", *node_cluster = "fleet", *region = "us-west";
static double connect_rate = 400.0, max_seconds = 3600.0;

static sim_t *sims;
static int ep;
static struct sockaddr_storage addr;
static socklen_t addr_len;

/* counters */
static long connects, connect_errors, ended, ended_before_response, responses, requests;
static long long bytes_in, bytes_out;
static int connected, complete_count;
static double started_at, all_complete_after = -1.0;

/* rate limiter for new connections */
static double tokens, tokens_at, next_due;

/* waits */
static double complete_deadline = -1.0;
static uint32_t watch_gen, watched_id;
static int watch_count, watch_active;
static double watch_deadline, watch_last;
static char watch_name[512];

/* names interned to ids 1..n */
static char **names;
static uint32_t names_len, names_cap, *table;
static uint32_t table_cap;

static double mono(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double wall(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double cpu_seconds(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

static void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "fleetsim: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(2);
}

static void reply(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    putchar('\n');
    fflush(stdout);
}

static void *xrealloc(void *p, size_t n) {
    void *q = realloc(p, n);
    if (!q) die("out of memory (%zu bytes)", n);
    return q;
}

static void buf_reserve(buf_t *b, size_t extra) {
    if (b->len + extra <= b->cap) return;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + extra) cap *= 2;
    b->p = xrealloc(b->p, cap);
    b->cap = cap;
}

static void buf_put(buf_t *b, const void *data, size_t n) {
    if (n == 0) return;
    buf_reserve(b, n);
    memcpy(b->p + b->len, data, n);
    b->len += n;
}

static void buf_consume(buf_t *b, size_t n) {
    if (n >= b->len) {
        b->len = 0;
        return;
    }
    memmove(b->p, b->p + n, b->len - n);
    b->len -= n;
}

static void buf_free(buf_t *b) {
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

/* A buffer emptied after a big message gives its memory back: thousands of streams idle. */
static void buf_trim(buf_t *b) {
    if (b->len == 0 && b->cap > 16384) buf_free(b);
}

/* ---- names ---- */

static uint64_t fnv(const uint8_t *p, size_t n) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 1099511628211ull;
    return h;
}

static void table_insert(uint32_t id) {
    const char *s = names[id];
    uint32_t mask = table_cap - 1, i = (uint32_t)fnv((const uint8_t *)s, strlen(s)) & mask;
    while (table[i]) i = (i + 1) & mask;
    table[i] = id;
}

static uint32_t intern(const uint8_t *s, size_t n) {
    if (table_cap == 0) {
        table_cap = 1024;
        table = calloc(table_cap, sizeof *table);
        names_cap = 256;
        names = xrealloc(NULL, names_cap * sizeof *names);
        names_len = 1; /* id 0: none */
    }
    uint32_t mask = table_cap - 1, i = (uint32_t)fnv(s, n) & mask;
    while (table[i]) {
        const char *c = names[table[i]];
        if (strlen(c) == n && memcmp(c, s, n) == 0) return table[i];
        i = (i + 1) & mask;
    }
    if (names_len == names_cap) {
        names_cap *= 2;
        names = xrealloc(names, names_cap * sizeof *names);
    }
    char *copy = xrealloc(NULL, n + 1);
    memcpy(copy, s, n);
    copy[n] = 0;
    uint32_t id = names_len++;
    names[id] = copy;
    if (names_len * 2 > table_cap) {
        free(table);
        table_cap *= 2;
        table = calloc(table_cap, sizeof *table);
        if (!table) die("out of memory");
        for (uint32_t k = 1; k < names_len; k++) table_insert(k);
    } else {
        table[i] = id;
    }
    return id;
}

static void sim_ensure(sim_t *s, uint32_t id) {
    if (id < s->arr_cap) return;
    uint32_t cap = names_cap > id ? names_cap : id + 1;
    s->eds_version = xrealloc(s->eds_version, cap * sizeof *s->eds_version);
    s->cds_seen = xrealloc(s->cds_seen, cap);
    memset(s->eds_version + s->arr_cap, 0, (cap - s->arr_cap) * sizeof *s->eds_version);
    memset(s->cds_seen + s->arr_cap, 0, cap - s->arr_cap);
    s->arr_cap = cap;
}

/* ---- protobuf ---- */

static void pb_varint(buf_t *b, uint64_t v) {
    uint8_t tmp[10];
    int n = 0;
    do {
        tmp[n] = (uint8_t)(v & 0x7f);
        v >>= 7;
        if (v) tmp[n] |= 0x80;
        n++;
    } while (v);
    buf_put(b, tmp, (size_t)n);
}

static void pb_bytes(buf_t *b, int field, const void *p, size_t n) {
    pb_varint(b, ((uint64_t)field << 3) | 2);
    pb_varint(b, n);
    buf_put(b, p, n);
}

static void pb_string(buf_t *b, int field, const char *s) { pb_bytes(b, field, s, strlen(s)); }

static int pb_read_varint(const uint8_t **p, const uint8_t *end, uint64_t *out) {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        if (*p >= end) return -1;
        uint8_t c = *(*p)++;
        v |= (uint64_t)(c & 0x7f) << shift;
        if (!(c & 0x80)) {
            *out = v;
            return 0;
        }
    }
    return -1;
}

/* The next field: its number, and for length-delimited fields the bytes. -1: malformed, 0: end. */
static int pb_next(const uint8_t **p, const uint8_t *end, int *field, const uint8_t **data,
                   size_t *len) {
    uint64_t key, v;
    if (*p >= end) return 0;
    if (pb_read_varint(p, end, &key)) return -1;
    *field = (int)(key >> 3);
    *data = NULL;
    *len = 0;
    switch (key & 7) {
    case 0:
        return pb_read_varint(p, end, &v) ? -1 : 1;
    case 1:
        if (end - *p < 8) return -1;
        *p += 8;
        return 1;
    case 2:
        if (pb_read_varint(p, end, &v) || v > (uint64_t)(end - *p)) return -1;
        *data = *p;
        *len = (size_t)v;
        *p += v;
        return 1;
    case 5:
        if (end - *p < 4) return -1;
        *p += 4;
        return 1;
    default:
        return -1;
    }
}

/* ---- HTTP/2 ---- */

static void frame_header(buf_t *b, uint32_t len, uint8_t type, uint8_t flags, uint32_t sid) {
    uint8_t h[9] = {(uint8_t)(len >> 16), (uint8_t)(len >> 8), (uint8_t)len, type, flags,
                    (uint8_t)(sid >> 24), (uint8_t)(sid >> 16), (uint8_t)(sid >> 8), (uint8_t)sid};
    buf_put(b, h, 9);
}

static void put32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static uint32_t get32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void window_update(buf_t *b, uint32_t sid, uint32_t increment) {
    uint8_t p[4];
    put32(p, increment);
    frame_header(b, 4, 8, 0, sid);
    buf_put(b, p, 4);
}

/* HPACK: literal header field without indexing, new name, no Huffman (RFC 7541 6.2.2). */
static void hpack_int(buf_t *b, size_t v) {
    /* 7-bit prefix, H=0 */
    if (v < 127) {
        uint8_t c = (uint8_t)v;
        buf_put(b, &c, 1);
        return;
    }
    uint8_t c = 127;
    buf_put(b, &c, 1);
    v -= 127;
    while (v >= 128) {
        c = (uint8_t)(v % 128 + 128);
        buf_put(b, &c, 1);
        v /= 128;
    }
    c = (uint8_t)v;
    buf_put(b, &c, 1);
}

static void hpack_literal(buf_t *b, const char *name, const char *value) {
    uint8_t zero = 0;
    buf_put(b, &zero, 1);
    hpack_int(b, strlen(name));
    buf_put(b, name, strlen(name));
    hpack_int(b, strlen(value));
    buf_put(b, value, strlen(value));
}

static void flush_out(sim_t *s);
static void stream_ended(sim_t *s, double now);

/* Send as much of the queued gRPC bytes as the peer's windows allow. */
static void pump(sim_t *s) {
    while (s->pending.len > 0 && s->send_conn > 0 && s->send_stream > 0) {
        size_t n = s->pending.len;
        if ((int64_t)n > s->send_conn) n = (size_t)s->send_conn;
        if ((int64_t)n > s->send_stream) n = (size_t)s->send_stream;
        if (n > s->peer_max_frame) n = s->peer_max_frame;
        frame_header(&s->out, (uint32_t)n, 0, 0, 1);
        buf_put(&s->out, s->pending.p, n);
        buf_consume(&s->pending, n);
        s->send_conn -= (int64_t)n;
        s->send_stream -= (int64_t)n;
    }
}

/* One DeltaDiscoveryRequest, gRPC-framed, queued. */
static void send_request(sim_t *s, int with_node, const char *type_url, const char *nonce,
                         size_t nonce_len, uint32_t *subscribe, int nsub) {
    buf_t m = {0};
    if (with_node) {
        char id[256];
        snprintf(id, sizeof id, "%s%d", node_prefix, s->index);
        buf_t node = {0}, locality = {0};
        pb_string(&node, 1, id);
        pb_string(&node, 2, node_cluster);
        pb_string(&locality, 1, region);
        pb_bytes(&node, 4, locality.p, locality.len);
        pb_bytes(&m, 1, node.p, node.len);
        buf_free(&node);
        buf_free(&locality);
    }
    pb_string(&m, 2, type_url);
    for (int i = 0; i < nsub; i++) pb_string(&m, 3, names[subscribe[i]]);
    if (nonce && nonce_len) pb_bytes(&m, 6, nonce, nonce_len);
    uint8_t prefix[5] = {0};
    put32(prefix + 1, (uint32_t)m.len);
    buf_put(&s->pending, prefix, 5);
    buf_put(&s->pending, m.p, m.len);
    buf_free(&m);
    requests++;
    pump(s);
}

static int type_of(const uint8_t *p, size_t n) {
    static const struct {
        const char *url;
        int type;
    } urls[] = {{CDS_URL, T_CDS}, {EDS_URL, T_EDS}, {LDS_URL, T_LDS}, {RDS_URL, T_RDS}};
    for (size_t i = 0; i < sizeof urls / sizeof urls[0]; i++)
        if (strlen(urls[i].url) == n && memcmp(urls[i].url, p, n) == 0) return urls[i].type;
    return T_OTHER;
}

/* One DeltaDiscoveryResponse: as bench/fleet.py's _delta_stream. -1: malformed. */
static int on_response(sim_t *s, const uint8_t *msg, size_t len) {
    const uint8_t *p = msg, *end = msg + len, *data, *type_url = NULL, *nonce = NULL;
    size_t dlen, type_len = 0, nonce_len = 0;
    int field, r, nres = 0;
    while ((r = pb_next(&p, end, &field, &data, &dlen)) > 0) {
        if (field == 4 && data) type_url = data, type_len = dlen;
        if (field == 5 && data) nonce = data, nonce_len = dlen;
    }
    if (r < 0 || !type_url) return -1;
    int type = type_of(type_url, type_len);
    uint32_t stack_sub[256], *subscribe = stack_sub;
    int nsub = 0, sub_cap = 256, changed = 0;
    p = msg;
    while ((r = pb_next(&p, end, &field, &data, &dlen)) > 0) {
        if (field != 2 || !data) continue;
        nres++;
        const uint8_t *q = data, *qend = data + dlen, *name = NULL, *version = NULL, *d;
        size_t name_len = 0, version_len = 0, l;
        int f, rr;
        while ((rr = pb_next(&q, qend, &f, &d, &l)) > 0) {
            if (f == 3 && d) name = d, name_len = l;
            if (f == 1 && d) version = d, version_len = l;
        }
        if (rr < 0) return -1;
        if (!name) continue;
        if (type == T_CDS) {
            uint32_t id = intern(name, name_len);
            sim_ensure(s, id);
            if (!s->cds_seen[id]) {
                s->cds_seen[id] = 1;
                if (nsub == sub_cap) {
                    sub_cap *= 2;
                    uint32_t *grown = xrealloc(subscribe == stack_sub ? NULL : subscribe,
                                               (size_t)sub_cap * sizeof *subscribe);
                    if (subscribe == stack_sub) memcpy(grown, stack_sub, sizeof stack_sub);
                    subscribe = grown;
                }
                subscribe[nsub++] = id;
            }
        } else if (type == T_EDS) {
            uint32_t id = intern(name, name_len);
            sim_ensure(s, id);
            uint64_t h = version ? fnv(version, version_len) : 1;
            if (!h) h = 1;
            uint64_t before = s->eds_version[id];
            if (!before) s->eds_count++;
            s->eds_version[id] = h;
            if (watch_active && id == watched_id && before && before != h) changed = 1;
        } else if (type == T_RDS) {
            s->have_rds = 1;
        }
    }
    if (r < 0) return -1;
    responses++;
    if (!s->got_response) {
        s->got_response = 1;
        s->backoff = 0.25; /* a stream that got this far resets the backoff, like Envoy */
    }
    char url[512];
    size_t ul = type_len < sizeof url - 1 ? type_len : sizeof url - 1;
    memcpy(url, type_url, ul);
    url[ul] = 0;
    send_request(s, 0, url, (const char *)nonce, nonce_len, NULL, 0); /* the ACK */
    if (changed) s->pending_change = 1; /* its time is taken once the ACK is written */
    if (!s->asked_lds) {
        s->asked_lds = 1;
        send_request(s, 0, LDS_URL, NULL, 0, NULL, 0);
    }
    if (type == T_CDS && nsub) send_request(s, 0, EDS_URL, NULL, 0, subscribe, nsub);
    if (type == T_LDS && nres) {
        uint32_t id = intern((const uint8_t *)"ingress_http", 12);
        send_request(s, 0, RDS_URL, NULL, 0, &id, 1);
    }
    if (subscribe != stack_sub) free(subscribe);
    if (!s->complete && s->have_rds && s->eds_count >= clusters) {
        s->complete = 1;
        if (++complete_count == streams && all_complete_after < 0)
            all_complete_after = mono() - started_at;
    }
    return 0;
}

/* Handle every whole frame in data[0..n): the bytes used, or -1: the stream ended (or a
 * protocol error). */
static long on_frames(sim_t *s, const uint8_t *data, size_t n) {
    size_t off = 0;
    int result = 0;
    while (n - off >= 9) {
        const uint8_t *h = data + off;
        uint32_t len = (uint32_t)h[0] << 16 | (uint32_t)h[1] << 8 | h[2];
        uint8_t type = h[3], flags = h[4];
        uint32_t sid = get32(h + 5) & 0x7fffffff;
        if (len > MAX_FRAME) {
            result = -1;
            break;
        }
        if (n - off < 9 + (size_t)len) break;
        const uint8_t *pl = h + 9;
        off += 9 + len;
        if (type == 0) { /* DATA */
            s->recv_unacked += len;
            if (s->recv_unacked >= WINDOW_REFILL) {
                window_update(&s->out, 0, s->recv_unacked);
                window_update(&s->out, 1, s->recv_unacked);
                s->recv_unacked = 0;
            }
            if (sid != 1) continue;
            const uint8_t *d = pl;
            size_t dlen = len;
            if (flags & 0x8) {
                if (len < 1 || pl[0] >= len) {
                    result = -1;
                    break;
                }
                d = pl + 1;
                dlen = len - 1 - pl[0];
            }
            buf_put(&s->msg, d, dlen);
            size_t moff = 0;
            while (s->msg.len - moff >= 5) {
                const uint8_t *m = s->msg.p + moff;
                uint32_t mlen = get32(m + 1);
                if (m[0] != 0 || mlen > MAX_MESSAGE) { /* compressed: we never asked for it */
                    result = -1;
                    break;
                }
                if (s->msg.len - moff - 5 < mlen) break;
                if (on_response(s, m + 5, mlen) < 0) {
                    result = -1;
                    break;
                }
                moff += 5 + (size_t)mlen;
            }
            buf_consume(&s->msg, moff);
            buf_trim(&s->msg);
            if (result < 0) break;
            if (flags & 0x1) {
                result = -1;
                break;
            }
        } else if (type == 1) { /* HEADERS: skipped; trailers end the stream */
            if (sid == 1 && (flags & 0x1)) {
                result = -1;
                break;
            }
        } else if (type == 3 || type == 7) { /* RST_STREAM, GOAWAY */
            result = -1;
            break;
        } else if (type == 4) { /* SETTINGS */
            if (flags & 0x1) continue;
            if (len % 6) {
                result = -1;
                break;
            }
            for (uint32_t i = 0; i < len; i += 6) {
                uint16_t id = (uint16_t)(pl[i] << 8 | pl[i + 1]);
                uint32_t v = get32(pl + i + 2);
                if (id == 4) {
                    s->send_stream += (int64_t)v - (int64_t)s->peer_initial_window;
                    s->peer_initial_window = v;
                } else if (id == 5 && v >= 16384) {
                    s->peer_max_frame = v < MAX_FRAME ? v : MAX_FRAME;
                }
            }
            frame_header(&s->out, 0, 4, 0x1, 0);
            pump(s);
        } else if (type == 6) { /* PING */
            if (len != 8) {
                result = -1;
                break;
            }
            if (!(flags & 0x1)) {
                frame_header(&s->out, 8, 6, 0x1, 0);
                buf_put(&s->out, pl, 8);
            }
        } else if (type == 8) { /* WINDOW_UPDATE */
            if (len != 4) {
                result = -1;
                break;
            }
            uint32_t inc = get32(pl) & 0x7fffffff;
            if (sid == 0) s->send_conn += inc;
            else if (sid == 1) s->send_stream += inc;
            pump(s);
        }
        /* PRIORITY, PUSH_PROMISE (push is off), CONTINUATION, unknown: ignored */
    }
    return result < 0 ? -1 : (long)off;
}


static void set_out_interest(sim_t *s, int want) {
    if (s->want_out == want) return;
    struct epoll_event ev = {.events = EPOLLIN | (want ? EPOLLOUT : 0), .data.u32 = (uint32_t)s->index};
    epoll_ctl(ep, EPOLL_CTL_MOD, s->fd, &ev);
    s->want_out = want;
}

static void record_change(sim_t *s) {
    s->pending_change = 0;
    if (!watch_active || s->watch_gen == watch_gen) return;
    s->watch_gen = watch_gen;
    watch_count++;
    watch_last = wall();
}

/* Write what is queued; once all is written, a pending watched ACK takes its time. */
static void flush_out(sim_t *s) {
    while (s->out.len > 0) {
        ssize_t n = send(s->fd, s->out.p, s->out.len, MSG_NOSIGNAL);
        if (n > 0) {
            bytes_out += n;
            buf_consume(&s->out, (size_t)n);
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            set_out_interest(s, 1);
            return;
        } else {
            stream_ended(s, mono());
            return;
        }
    }
    set_out_interest(s, 0);
    if (s->pending_change) record_change(s);
}

static void reset_stream_state(sim_t *s) {
    s->in.len = s->out.len = s->msg.len = s->pending.len = 0;
    s->got_response = s->asked_lds = s->have_rds = s->pending_change = 0;
    s->eds_count = 0;
    if (s->arr_cap) {
        memset(s->eds_version, 0, s->arr_cap * sizeof *s->eds_version);
        memset(s->cds_seen, 0, s->arr_cap);
    }
}

static void schedule(sim_t *s, double at) {
    s->connect_at = at;
    if (at < next_due) next_due = at;
}

static void stream_ended(sim_t *s, double now) {
    if (s->state == S_IDLE) return;
    if (s->state == S_OPEN) connected--;
    if (s->fd >= 0) close(s->fd); /* closing removes it from epoll */
    s->fd = -1;
    ended++;
    if (!s->got_response) ended_before_response++;
    if (s->complete) {
        s->complete = 0;
        complete_count--;
    }
    reset_stream_state(s);
    s->state = S_IDLE;
    double jitter = 0.5 + (double)rand() / RAND_MAX;
    schedule(s, now + s->backoff * jitter);
    s->backoff = s->backoff * 2 > 5.0 ? 5.0 : s->backoff * 2;
}

static void on_open(sim_t *s) {
    s->state = S_OPEN;
    connected++;
    int one = 1;
    setsockopt(s->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

static void start_connect(sim_t *s, double now) {
    int fd = socket(addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    connects++;
    if (fd < 0) {
        connect_errors++;
        schedule(s, now + 1.0);
        return;
    }
    s->fd = fd;
    s->state = S_CONNECTING;
    s->want_out = 1;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.u32 = (uint32_t)s->index};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) die("epoll_ctl: %s", strerror(errno));
    reset_stream_state(s);
    s->send_conn = s->send_stream = 65535;
    s->peer_initial_window = 65535;
    s->peer_max_frame = 16384;
    s->recv_unacked = 0;
    /* Everything the client says first, queued before the socket is even connected. */
    buf_put(&s->out, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 24);
    uint8_t settings[12] = {0, 2, 0, 0, 0, 0, 0, 4, 0, 0, 0, 0};
    put32(settings + 8, WINDOW);
    frame_header(&s->out, sizeof settings, 4, 0, 0);
    buf_put(&s->out, settings, sizeof settings);
    window_update(&s->out, 0, WINDOW - 65535);
    buf_t hb = {0};
    hpack_literal(&hb, ":method", "POST");
    hpack_literal(&hb, ":scheme", "http");
    hpack_literal(&hb, ":path", ADS_PATH);
    hpack_literal(&hb, ":authority", target);
    hpack_literal(&hb, "content-type", "application/grpc");
    hpack_literal(&hb, "te", "trailers");
    hpack_literal(&hb, "user-agent", "routeplane-fleetsim");
    frame_header(&s->out, (uint32_t)hb.len, 1, 0x4, 1);
    buf_put(&s->out, hb.p, hb.len);
    buf_free(&hb);
    send_request(s, 1, CDS_URL, NULL, 0, NULL, 0);
    if (connect(fd, (struct sockaddr *)&addr, addr_len) == 0) {
        on_open(s);
        flush_out(s);
    } else if (errno != EINPROGRESS) {
        connect_errors++;
        stream_ended(s, now);
    }
}

static void on_socket(sim_t *s, uint32_t events, double now) {
    if (s->state == S_CONNECTING) {
        int err = 0;
        socklen_t l = sizeof err;
        getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &l);
        if (err || (events & (EPOLLERR | EPOLLHUP))) {
            connect_errors++;
            stream_ended(s, now);
            return;
        }
        if (!(events & (EPOLLOUT | EPOLLIN))) return;
        on_open(s);
    }
    if (events & EPOLLIN || events & (EPOLLERR | EPOLLHUP)) {
        static uint8_t chunk[1 << 18];
        for (;;) {
            ssize_t n = recv(s->fd, chunk, sizeof chunk, 0);
            if (n > 0) {
                bytes_in += n;
                long used;
                if (s->in.len == 0) { /* the usual case: frames straight from the chunk */
                    used = on_frames(s, chunk, (size_t)n);
                    if (used >= 0) buf_put(&s->in, chunk + used, (size_t)n - (size_t)used);
                } else { /* a frame split across reads */
                    buf_put(&s->in, chunk, (size_t)n);
                    used = on_frames(s, s->in.p, s->in.len);
                    if (used >= 0) buf_consume(&s->in, (size_t)used);
                }
                if (used < 0) {
                    stream_ended(s, now);
                    return;
                }
                buf_trim(&s->in);
                if ((size_t)n < sizeof chunk) break;
            } else if (n < 0 && errno == EINTR) {
                continue;
            } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
                break;
            } else {
                stream_ended(s, now); /* EOF or reset */
                return;
            }
        }
    }
    flush_out(s);
}

static void do_connects(double now) {
    if (now < next_due) return;
    tokens += (now - tokens_at) * connect_rate;
    tokens_at = now;
    double burst = 1.0 + connect_rate * 0.05;
    if (tokens > burst) tokens = burst;
    next_due = 1e300;
    for (int i = 0; i < streams; i++) {
        sim_t *s = &sims[i];
        if (s->state != S_IDLE) continue;
        if (s->connect_at <= now && tokens >= 1.0) {
            tokens -= 1.0;
            start_connect(s, now);
            if (s->state != S_IDLE) continue;
        }
        double due = s->connect_at;
        if (due <= now) due = now + (1.0 - tokens) / connect_rate; /* waiting for a token */
        if (due < next_due) next_due = due;
    }
}

static void check_waits(double now) {
    if (complete_deadline >= 0) {
        if (complete_count == streams) {
            reply("complete ok %.3f", all_complete_after);
            complete_deadline = -1.0;
        } else if (now >= complete_deadline) {
            reply("complete timeout %d", complete_count);
            complete_deadline = -1.0;
        }
    }
    if (watch_active) {
        if (watch_count >= streams) {
            reply("watched ok %d %.6f %.6f", watch_count, watch_last, cpu_seconds());
            watch_active = 0;
        } else if (now >= watch_deadline) {
            reply("watched timeout %d %.6f %.6f", watch_count, watch_last, cpu_seconds());
            watch_active = 0;
        }
    }
}

static void on_command(char *line, double now) {
    char name[512];
    double seconds;
    if (strcmp(line, "quit") == 0) {
        exit(0);
    } else if (strcmp(line, "stats") == 0) {
        reply("stats streams=%d connected=%d complete=%d connects=%ld connect_errors=%ld "
              "ended=%ld ended_before_response=%ld responses=%ld requests=%ld bytes_in=%lld "
              "bytes_out=%lld names=%u cpu_s=%.6f",
              streams, connected, complete_count, connects, connect_errors, ended,
              ended_before_response, responses, requests, bytes_in, bytes_out, names_len - 1,
              cpu_seconds());
    } else if (sscanf(line, "wait_complete %lf", &seconds) == 1 && seconds >= 0) {
        complete_deadline = now + seconds;
    } else if (sscanf(line, "watch %511s %lf", name, &seconds) == 2 && seconds >= 0) {
        snprintf(watch_name, sizeof watch_name, "%s", name);
        watched_id = intern((const uint8_t *)name, strlen(name));
        watch_gen++;
        watch_count = 0;
        watch_last = 0.0;
        watch_deadline = now + seconds;
        watch_active = 1;
        for (int i = 0; i < streams; i++) sims[i].pending_change = 0;
        reply("watching %s", watch_name);
    } else {
        reply("error unknown command: %.200s", line);
    }
}

static void on_stdin(double now) {
    static char line[4096];
    static size_t len;
    for (;;) {
        ssize_t n = read(0, line + len, sizeof line - 1 - len);
        if (n == 0) exit(0); /* the bench went away */
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) return;
            exit(0);
        }
        len += (size_t)n;
        char *start = line, *nl;
        while ((nl = memchr(start, '\n', len - (size_t)(start - line)))) {
            *nl = 0;
            if (nl > start && nl[-1] == '\r') nl[-1] = 0;
            on_command(start, now);
            start = nl + 1;
        }
        len -= (size_t)(start - line);
        memmove(line, start, len);
        if (len == sizeof line - 1) len = 0; /* an overlong line: dropped */
    }
}

static double number_arg(const char *flag, const char *value, double min) {
    char *end;
    double v = strtod(value, &end);
    if (*value == 0 || *end != 0 || !(v >= min)) die("%s: expected a number >= %g, got %s", flag, min, value);
    return v;
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        const char *flag = argv[i];
        if (i + 1 >= argc) die("%s: missing value", flag);
        const char *value = argv[++i];
        if (strcmp(flag, "--target") == 0) target = value;
        else if (strcmp(flag, "--streams") == 0) streams = (int)number_arg(flag, value, 1);
        else if (strcmp(flag, "--clusters") == 0) clusters = (int)number_arg(flag, value, 0);
        else if (strcmp(flag, "--node-prefix") == 0) node_prefix = value;
        else if (strcmp(flag, "--node-cluster") == 0) node_cluster = value;
        else if (strcmp(flag, "--region") == 0) region = value;
        else if (strcmp(flag, "--connect-rate") == 0) connect_rate = number_arg(flag, value, 0.1);
        else if (strcmp(flag, "--max-seconds") == 0) max_seconds = number_arg(flag, value, 1);
        else die("unknown flag %s", flag);
    }
    if (!target) die("--target HOST:PORT is required");
    if (streams < 1 || streams > 1000000) die("--streams: expected 1..1000000, got %d", streams);
    const char *colon = strrchr(target, ':');
    if (!colon || colon == target || (size_t)(colon - target) >= sizeof host || strlen(colon + 1) >= sizeof port)
        die("--target: expected HOST:PORT, got %s", target);
    memcpy(host, target, (size_t)(colon - target));
    host[colon - target] = 0;
    if (host[0] == '[' && host[strlen(host) - 1] == ']') {
        memmove(host, host + 1, strlen(host));
        host[strlen(host) - 1] = 0;
    }
    strcpy(port, colon + 1);
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *ai;
    int rc = getaddrinfo(host, port, &hints, &ai);
    if (rc) die("--target %s: %s", target, gai_strerror(rc));
    memcpy(&addr, ai->ai_addr, ai->ai_addrlen);
    addr_len = ai->ai_addrlen;
    freeaddrinfo(ai);

    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    signal(SIGPIPE, SIG_IGN);
    srand((unsigned)(getpid() ^ (unsigned)time(NULL)));
    setvbuf(stdout, NULL, _IOLBF, 0);
    fcntl(0, F_SETFL, fcntl(0, F_GETFL) | O_NONBLOCK);

    ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) die("epoll_create1: %s", strerror(errno));
    struct epoll_event sev = {.events = EPOLLIN, .data.u32 = STDIN_ID};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, 0, &sev) < 0) die("stdin cannot be polled: %s", strerror(errno));

    sims = calloc((size_t)streams, sizeof *sims);
    if (!sims) die("out of memory");
    started_at = tokens_at = mono();
    tokens = 1.0;
    next_due = started_at;
    for (int i = 0; i < streams; i++) {
        sims[i].fd = -1;
        sims[i].index = i;
        sims[i].state = S_IDLE;
        sims[i].backoff = 0.25;
        sims[i].connect_at = started_at;
    }
    struct epoll_event events[512];
    for (;;) {
        double now = mono();
        if (now - started_at > max_seconds) die("--max-seconds %g passed: exiting", max_seconds);
        do_connects(now);
        check_waits(now);
        double wake = next_due;
        if (complete_deadline >= 0 && complete_deadline < wake) wake = complete_deadline;
        if (watch_active && watch_deadline < wake) wake = watch_deadline;
        int timeout = 1000;
        if (wake - now < 1.0) timeout = wake <= now ? 0 : (int)((wake - now) * 1000) + 1;
        int n = epoll_wait(ep, events, 512, timeout);
        if (n < 0 && errno != EINTR) die("epoll_wait: %s", strerror(errno));
        now = mono();
        for (int i = 0; i < n; i++) {
            if (events[i].data.u32 == STDIN_ID) on_stdin(now);
            else {
                sim_t *s = &sims[events[i].data.u32];
                if (s->state != S_IDLE) on_socket(s, events[i].events, now);
            }
        }
    }
}
