/* sniffer._fastpath: the compiled fast path of sniffer/parse.py and sniffer/events.py.
 *
 * The same rules as the Python reference, rule for rule and in the same order: every frame
 * gives the same segment or rejection reason, every payload the same request heads, rejects and
 * cut-off rest, and FrameParser the same events and counters. tests/sniffer/test_fastpath.py
 * checks that differentially. Whatever C cannot decide goes back to the Python path, per frame,
 * before anything is counted.
 *
 *   parse_frame(frame, linktype)      -> (src, dst, sport, dport, payload, seq, flags) | reason
 *   parse_requests(payload)           -> ([(method, target, host, range, ua)], [reason], rest)
 *   scan(frame, linktype, portmap, strict) -> "drop.<reason>" | (src, dst, sport, dport, seq,
 *                                         payload, kind, parsed-or-None, tcp flags)
 *   pcap_records(buf, offset, big_endian, linktype, limit) -> ([(frame, ts, linktype)], offset)
 *   FastPath(...): FrameParser's state seen from C
 *     .events(frame, ts, linktype)            -> [RequestEvent] | None (None: run the Python path)
 *     .events_many(records, fallback)         -> [RequestEvent] for a list of records
 *     .pcap_events(buf, offset, big_endian, linktype, limit, fallback)
 *                                             -> (events, offset, records read, last ts)
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <arpa/inet.h>
#include <math.h>
#include <stdio.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>

#define MAX_HEAD (16 * 1024)
#define MTU 65535

/* ---- reasons: one interned string each, bare (parse_*) and counter-ready ("drop." + reason) */
enum {
    R_NONE = -1,
    R_SHORT_ETHERNET, R_SHORT_VLAN, R_SHORT_SLL, R_SHORT_IP, R_SHORT_NULL, R_UNKNOWN_LINKTYPE,
    R_NOT_IP, R_BAD_IP_VERSION, R_BAD_IP_HEADER, R_IP_FRAGMENT, R_NOT_TCP, R_BAD_IP_LENGTH,
    R_BAD_IPV6_EXT, R_SHORT_TCP, R_BAD_TCP_HEADER, R_HEAD_TOO_LARGE, R_NOT_HTTP, R_BAD_VERSION,
    R_BAD_TARGET, R_BAD_HEADER, R_BAD_CONTENT_LENGTH, R_NO_HOST, R_NON_ASCII, R_OTHER_PORT,
    R_NO_PAYLOAD, R_COUNT
};
static const char *reason_names[R_COUNT] = {
    "short-ethernet", "short-vlan", "short-sll", "short-ip", "short-null", "unknown-linktype",
    "not-ip", "bad-ip-version", "bad-ip-header", "ip-fragment", "not-tcp", "bad-ip-length",
    "bad-ipv6-ext", "short-tcp", "bad-tcp-header", "head-too-large", "not-http", "bad-version",
    "bad-target", "bad-header", "bad-content-length", "no-host", "non-ascii", "other-port",
    "no-payload",
};
static PyObject *reason_bare[R_COUNT];
static PyObject *reason_drop[R_COUNT];

static const char *method_names[] = {"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE",
                                     "CONNECT"};
#define N_METHODS 9
static PyObject *method_str[N_METHODS];
static PyObject *empty_bytes;
static PyObject *empty_str;

/* ---- link, IP and TCP headers (parse.py: parse_frame, _ipv4, _ipv6, _tcp) */

typedef struct {
    int family;
    const uint8_t *src, *dst;
    unsigned sport, dport, flags;
    uint32_t seq;
    Py_ssize_t pay_off, pay_end;
} segment;

static int tcp_hdr(const uint8_t *f, Py_ssize_t off, Py_ssize_t end, segment *s) {
    if (end < off + 20) return R_SHORT_TCP;
    Py_ssize_t doff = (f[off + 12] >> 4) * 4;
    if (doff < 20 || off + doff > end) return R_BAD_TCP_HEADER;
    s->sport = ((unsigned)f[off] << 8) | f[off + 1];
    s->dport = ((unsigned)f[off + 2] << 8) | f[off + 3];
    s->seq = ((uint32_t)f[off + 4] << 24) | ((uint32_t)f[off + 5] << 16) | ((uint32_t)f[off + 6] << 8) | f[off + 7];
    s->flags = f[off + 13];
    s->pay_off = off + doff;
    s->pay_end = end;
    return R_NONE;
}

static int ipv4_hdr(const uint8_t *f, Py_ssize_t n, Py_ssize_t off, segment *s) {
    if (n < off + 20) return R_SHORT_IP;
    uint8_t vihl = f[off];
    if (vihl >> 4 != 4) return R_BAD_IP_VERSION;
    Py_ssize_t ihl = (vihl & 0x0F) * 4;
    if (ihl < 20) return R_BAD_IP_HEADER;
    Py_ssize_t total = ((Py_ssize_t)f[off + 2] << 8) | f[off + 3];
    if ((((unsigned)f[off + 6] << 8) | f[off + 7]) & 0x3FFF) return R_IP_FRAGMENT;
    if (f[off + 9] != 6) return R_NOT_TCP;
    Py_ssize_t end = total ? off + total : n; /* total 0: TSO-sized capture */
    if ((total && total < ihl) || end > n) return R_BAD_IP_LENGTH;
    s->family = AF_INET;
    s->src = f + off + 12;
    s->dst = f + off + 16;
    return tcp_hdr(f, off + ihl, end, s);
}

static int ipv6_hdr(const uint8_t *f, Py_ssize_t n, Py_ssize_t off, segment *s) {
    if (n < off + 40) return R_SHORT_IP;
    if (f[off] >> 4 != 6) return R_BAD_IP_VERSION;
    Py_ssize_t end = off + 40 + (((Py_ssize_t)f[off + 4] << 8) | f[off + 5]);
    if (end > n) return R_BAD_IP_LENGTH;
    unsigned nxt = f[off + 6];
    Py_ssize_t pos = off + 40;
    int hops = 0;
    while (nxt == 0 || nxt == 43 || nxt == 60) { /* hop-by-hop, routing, destination options */
        if (pos + 8 > end || hops > 8) return R_BAD_IPV6_EXT;
        nxt = f[pos];
        pos += ((Py_ssize_t)f[pos + 1] + 1) * 8;
        hops++;
    }
    if (nxt == 44) return R_IP_FRAGMENT;
    if (nxt != 6) return R_NOT_TCP;
    s->family = AF_INET6;
    s->src = f + off + 8;
    s->dst = f + off + 24;
    return tcp_hdr(f, pos, end, s);
}

static int frame_segment(const uint8_t *f, Py_ssize_t n, long long linktype, segment *s) {
    unsigned ethertype;
    Py_ssize_t off;
    if (linktype == 1) { /* Ethernet */
        if (n < 14) return R_SHORT_ETHERNET;
        ethertype = ((unsigned)f[12] << 8) | f[13];
        off = 14;
        while (ethertype == 0x8100 || ethertype == 0x88A8 || ethertype == 0x9100) { /* 802.1Q, QinQ */
            if (n < off + 4) return R_SHORT_VLAN;
            ethertype = ((unsigned)f[off + 2] << 8) | f[off + 3];
            off += 4;
        }
    } else if (linktype == 113) { /* Linux SLL */
        if (n < 16) return R_SHORT_SLL;
        ethertype = ((unsigned)f[14] << 8) | f[15];
        off = 16;
    } else if (linktype == 101) { /* raw IP */
        if (n == 0) return R_SHORT_IP;
        ethertype = f[0] >> 4 == 4 ? 0x0800 : 0x86DD;
        off = 0;
    } else if (linktype == 0) { /* BSD loopback: host-order address family */
        if (n < 4) return R_SHORT_NULL;
        uint32_t family = (uint32_t)f[0] | ((uint32_t)f[1] << 8) | ((uint32_t)f[2] << 16) | ((uint32_t)f[3] << 24);
        if (family > 0xFFFF)  /* written by a big-endian host */
            family = ((uint32_t)f[0] << 24) | ((uint32_t)f[1] << 16) | ((uint32_t)f[2] << 8) | f[3];
        ethertype = family == 2 ? 0x0800 : 0x86DD;
        off = 4;
    } else {
        return R_UNKNOWN_LINKTYPE;
    }
    if (ethertype == 0x0800) return ipv4_hdr(f, n, off, s);
    if (ethertype == 0x86DD) return ipv6_hdr(f, n, off, s);
    return R_NOT_IP;
}

static PyObject *address(const segment *s, const uint8_t *a) {
    char text[INET6_ADDRSTRLEN];
    if (s->family == AF_INET) { /* dotted quad by hand: inet_ntop goes through sprintf */
        char *o = text;
        for (int i = 0; i < 4; i++) {
            unsigned v = a[i];
            if (v >= 100) *o++ = (char)('0' + v / 100);
            if (v >= 10) *o++ = (char)('0' + v / 10 % 10);
            *o++ = (char)('0' + v % 10);
            *o++ = '.';
        }
        return PyUnicode_FromStringAndSize(text, o - text - 1);
    }
    /* libc's inet_ntop, the same function socket.inet_ntop uses: identical text */
    if (inet_ntop(s->family, a, text, sizeof text) == NULL) return PyErr_SetFromErrno(PyExc_OSError);
    return PyUnicode_FromString(text);
}

static int linktype_arg(PyObject *obj, long long *out) {
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(obj, &overflow);
    if (v == -1 && PyErr_Occurred()) return -1;
    *out = overflow ? -2 : v; /* any huge value is just an unknown link type */
    return 0;
}

/* ---- HTTP request heads (parse.py: parse_requests, _looks_like_request, _parse_head) */

static int method_index(const uint8_t *p, Py_ssize_t len) {
    for (int i = 0; i < N_METHODS; i++)
        if ((Py_ssize_t)strlen(method_names[i]) == len && memcmp(method_names[i], p, (size_t)len) == 0) return i;
    return -1;
}

static int looks_like_request(const uint8_t *p, Py_ssize_t len) {
    Py_ssize_t lim = len < 8 ? len : 8, sp = -1;
    for (Py_ssize_t i = 0; i < lim; i++)
        if (p[i] == ' ') { sp = i; break; }
    if (sp < 0) { /* a head cut inside its method ("GE"): a prefix of a method and nothing else */
        if (!(0 < len && len < 8)) return 0;
        for (int i = 0; i < N_METHODS; i++)
            if ((Py_ssize_t)strlen(method_names[i]) >= len && memcmp(method_names[i], p, (size_t)len) == 0) return 1;
        return 0;
    }
    return method_index(p, sp) >= 0;
}

static Py_ssize_t find_crlfcrlf(const uint8_t *p, Py_ssize_t from, Py_ssize_t n) {
    const uint8_t *q = p + from, *stop = p + n;
    while (stop - q >= 4) {
        const uint8_t *r = memchr(q, '\r', (size_t)(stop - q - 3));
        if (r == NULL) return -1;
        if (r[1] == '\n' && r[2] == '\r' && r[3] == '\n') return r - p;
        q = r + 1;
    }
    return -1;
}

static int lower_eq(const uint8_t *p, Py_ssize_t avail, const char *word, Py_ssize_t wlen) {
    if (avail < wlen) return 0;
    for (Py_ssize_t i = 0; i < wlen; i++) {
        uint8_t c = p[i];
        if (c >= 'A' && c <= 'Z') c = (uint8_t)(c + 32);
        if (c != (uint8_t)word[i]) return 0;
    }
    return 1;
}

static int is_ascii(const uint8_t *p, Py_ssize_t len) {
    for (Py_ssize_t i = 0; i < len; i++)
        if (p[i] & 0x80) return 0;
    return 1;
}

static PyObject *ascii_str(const uint8_t *p, Py_ssize_t len) {
    if (len == 0) { Py_INCREF(empty_str); return empty_str; }
    PyObject *s = PyUnicode_New(len, 127);
    if (s != NULL) memcpy(PyUnicode_DATA(s), p, (size_t)len);
    return s;
}

typedef struct { const uint8_t *p; Py_ssize_t len; } span;
typedef struct { int method; span target, host, rng, ua; } head;

/* One head (without its blank line): a request tuple in *out and the body length to skip, or a
 * reason. Mirrors _parse_head's checks in order. */
static int parse_head(const uint8_t *h, Py_ssize_t n, head *out, Py_ssize_t *body) {
    Py_ssize_t line_end = -1;
    for (Py_ssize_t i = 0; i + 1 < n; i++)
        if (h[i] == '\r' && h[i + 1] == '\n') { line_end = i; break; }
    Py_ssize_t llen = line_end < 0 ? n : line_end;
    /* line.split(b" ") must give exactly three parts */
    Py_ssize_t sp1 = -1, sp2 = -1;
    for (Py_ssize_t i = 0; i < llen; i++) {
        if (h[i] == ' ') {
            if (sp1 < 0) sp1 = i;
            else if (sp2 < 0) sp2 = i;
            else return R_NOT_HTTP;
        }
    }
    if (sp2 < 0) return R_NOT_HTTP;
    int m = method_index(h, sp1);
    if (m < 0) return R_NOT_HTTP;
    span target = {h + sp1 + 1, sp2 - sp1 - 1};
    if (llen - sp2 - 1 < 7 || memcmp(h + sp2 + 1, "HTTP/1.", 7) != 0) return R_BAD_VERSION;
    if (target.len == 0) return R_BAD_TARGET;
    for (Py_ssize_t i = 0; i < target.len; i++)
        if (target.p[i] <= 0x20 || target.p[i] == 0x7F) return R_BAD_TARGET;
    span host = {NULL, 0}, rng = {NULL, 0}, ua = {NULL, 0};
    unsigned long long blen = 0;
    int bad_length = 0; /* bad-header wins over bad-content-length: decided after every line */
    if (line_end >= 0) {
        const uint8_t *r = h + line_end;
        Py_ssize_t rn = n - line_end;
        /* one pass over every "\r\n" of the rest; each is tried by both patterns:
         * _BAD_LINE: a "\r\n" followed by a line without a colon, ending in "\r\n" or at the end
         *   (where Python's $ also matches before one final "\n");
         * _FIELDS: "\r\n" name [ \t]* ":" [ \t]* value; a value never holds a "\r", so no match
         *   hides another (findall does not overlap) */
        for (Py_ssize_t i = 0; i + 1 < rn;) {
            const uint8_t *cr = memchr(r + i, '\r', (size_t)(rn - i - 1));
            if (cr == NULL) break;
            i = cr - r;
            if (r[i + 1] != '\n') { i++; continue; }
            Py_ssize_t k = i + 2;
            while (k < rn && r[k] != ':' && r[k] != '\r' && r[k] != '\n') k++;
            if (k == rn || (k + 1 < rn && r[k] == '\r' && r[k + 1] == '\n') || (k == rn - 1 && r[k] == '\n'))
                return R_BAD_HEADER;
            const uint8_t *p = r + i + 2;
            Py_ssize_t avail = rn - i - 2, nl;
            int which;
            i += 2;
            switch (p[0] | 0x20) { /* first letter, any case, before the full comparison */
            case 'h': which = 0; nl = 4; if (!lower_eq(p, avail, "host", 4)) continue; break;
            case 'r': which = 1; nl = 5; if (!lower_eq(p, avail, "range", 5)) continue; break;
            case 'u': which = 2; nl = 10; if (!lower_eq(p, avail, "user-agent", 10)) continue; break;
            case 'c': which = 3; nl = 14; if (!lower_eq(p, avail, "content-length", 14)) continue; break;
            default: continue;
            }
            k = nl;
            while (k < avail && (p[k] == ' ' || p[k] == '\t')) k++;
            if (k >= avail || p[k] != ':') continue;
            k++;
            while (k < avail && (p[k] == ' ' || p[k] == '\t')) k++;
            Py_ssize_t vs = k;
            while (k < avail && p[k] != '\r' && p[k] != '\n') k++;
            Py_ssize_t ve = k;
            if (which == 3) { /* value.strip(): all ASCII whitespace; then isdigit() */
                while (vs < ve && (p[vs] == ' ' || (p[vs] >= '\t' && p[vs] <= '\r'))) vs++;
                while (ve > vs && (p[ve - 1] == ' ' || (p[ve - 1] >= '\t' && p[ve - 1] <= '\r'))) ve--;
                if (ve == vs) bad_length = 1;
                unsigned long long v = 0;
                for (Py_ssize_t j = vs; j < ve && !bad_length; j++) {
                    if (p[j] < '0' || p[j] > '9') bad_length = 1;
                    else if (v < (1ULL << 50)) v = v * 10 + (unsigned)(p[j] - '0'); /* saturate: ends the payload */
                }
                if (!bad_length) blen = v;
            } else {
                while (ve > vs && (p[ve - 1] == ' ' || p[ve - 1] == '\t')) ve--;
                span *dst = which == 0 ? &host : which == 1 ? &rng : &ua;
                dst->p = p + vs;
                dst->len = ve - vs;
            }
        }
    }
    if (bad_length) return R_BAD_CONTENT_LENGTH;
    /* HTTP/1.0 may omit Host: the caller keys it on the destination address */
    int http10 = llen - sp2 - 1 == 8 && h[sp2 + 8] == '0';
    if (host.len == 0 && !http10 && !(target.len >= 7 && memcmp(target.p, "http://", 7) == 0)
        && !(target.len >= 8 && memcmp(target.p, "https://", 8) == 0))
        return R_NO_HOST;
    if (!is_ascii(target.p, target.len) || !is_ascii(host.p, host.len) || !is_ascii(rng.p, rng.len))
        return R_NON_ASCII;
    out->method = m;
    out->target = target;
    out->host = host;
    out->rng = rng;
    out->ua = ua;
    *body = blen > (unsigned long long)PY_SSIZE_T_MAX / 2 ? PY_SSIZE_T_MAX / 2 : (Py_ssize_t)blen;
    return R_NONE;
}

/* What parse_requests finds in one payload, as spans into it: heads, reasons, the cut rest. */
typedef struct {
    head *h;
    int *r;
    Py_ssize_t nh, caph, nr, capr, rest_off, rest_len;
    head h0[16];
    int r0[16];
} heads_t;

static void heads_init(heads_t *t) {
    t->h = t->h0;
    t->r = t->r0;
    t->caph = t->capr = 16;
    t->nh = t->nr = 0;
    t->rest_off = -1;
    t->rest_len = 0;
}

static void heads_free(heads_t *t) {
    if (t->h != t->h0) PyMem_Free(t->h);
    if (t->r != t->r0) PyMem_Free(t->r);
}

static int push_reject(heads_t *t, int why) {
    if (t->nr == t->capr) {
        int *r = PyMem_Malloc(sizeof(int) * (size_t)(t->capr * 2));
        if (r == NULL) { PyErr_NoMemory(); return -1; }
        memcpy(r, t->r, sizeof(int) * (size_t)t->nr);
        if (t->r != t->r0) PyMem_Free(t->r);
        t->r = r;
        t->capr *= 2;
    }
    t->r[t->nr++] = why;
    return 0;
}

static head *push_head(heads_t *t) {
    if (t->nh == t->caph) {
        head *h = PyMem_Malloc(sizeof(head) * (size_t)(t->caph * 2));
        if (h == NULL) { PyErr_NoMemory(); return NULL; }
        memcpy(h, t->h, sizeof(head) * (size_t)t->nh);
        if (t->h != t->h0) PyMem_Free(t->h);
        t->h = h;
        t->caph *= 2;
    }
    return &t->h[t->nh++];
}

/* parse.parse_requests on p[0:n], rule for rule; -1 on a memory error. */
static int walk_heads(const uint8_t *p, Py_ssize_t n, heads_t *t) {
    Py_ssize_t pos = 0;
    while (pos < n) {
        Py_ssize_t end = find_crlfcrlf(p, pos, n);
        if (end < 0) {
            const uint8_t *r = p + pos;
            Py_ssize_t rlen = n - pos;
            if (looks_like_request(r, rlen)) {
                if (rlen > MAX_HEAD) return push_reject(t, R_HEAD_TOO_LARGE);
                t->rest_off = pos;
                t->rest_len = rlen;
                return 0;
            }
            for (Py_ssize_t i = 0; i < rlen; i++)
                if (r[i] != '\r' && r[i] != '\n') return push_reject(t, R_NOT_HTTP);
            return 0;
        }
        if (end - pos > MAX_HEAD) return push_reject(t, R_HEAD_TOO_LARGE);
        head one;
        Py_ssize_t body = 0;
        int why = parse_head(p + pos, end - pos, &one, &body);
        pos = end + 4;
        if (why != R_NONE) {
            if (push_reject(t, why) < 0) return -1;
            if (why == R_NOT_HTTP) return 0; /* a body or binary data: nothing after it is a new head */
            continue;
        }
        head *slot = push_head(t);
        if (slot == NULL) return -1;
        *slot = one;
        pos = body >= n - pos ? n : pos + body; /* skip a body so a pipelined head after it is found */
    }
    return 0;
}

/* (method, target, host, range, user_agent) as HttpRequest holds them */
static PyObject *head_tuple(const head *h) {
    PyObject *t = PyTuple_New(5);
    if (t == NULL) return NULL;
    Py_INCREF(method_str[h->method]);
    PyTuple_SET_ITEM(t, 0, method_str[h->method]);
    PyObject *items[4] = {ascii_str(h->target.p, h->target.len), ascii_str(h->host.p, h->host.len),
                          ascii_str(h->rng.p, h->rng.len),
                          PyUnicode_DecodeLatin1((const char *)h->ua.p, h->ua.len, NULL)};
    for (int j = 0; j < 4; j++) {
        if (items[j] == NULL) {
            for (int q = j + 1; q < 4; q++) Py_XDECREF(items[q]);
            Py_DECREF(t);
            return NULL;
        }
        PyTuple_SET_ITEM(t, j + 1, items[j]);
    }
    return t;
}

/* parse_requests on p[0:n] as Python objects; reasons from `table` (bare or "drop."-prefixed). */
static PyObject *requests_of(const uint8_t *p, Py_ssize_t n, PyObject *payload_obj, PyObject **table) {
    heads_t t;
    heads_init(&t);
    PyObject *reqs = NULL, *rejects = NULL, *rest = NULL;
    if (walk_heads(p, n, &t) < 0) goto fail;
    if ((reqs = PyList_New(t.nh)) == NULL || (rejects = PyList_New(t.nr)) == NULL) goto fail;
    for (Py_ssize_t i = 0; i < t.nh; i++) {
        PyObject *req = head_tuple(&t.h[i]);
        if (req == NULL) goto fail;
        PyList_SET_ITEM(reqs, i, req);
    }
    for (Py_ssize_t i = 0; i < t.nr; i++) {
        Py_INCREF(table[t.r[i]]);
        PyList_SET_ITEM(rejects, i, table[t.r[i]]);
    }
    if (t.rest_off == 0 && payload_obj != NULL) { /* payload[0:] is the payload itself */
        Py_INCREF(payload_obj);
        rest = payload_obj;
    } else if (t.rest_off >= 0) {
        rest = PyBytes_FromStringAndSize((const char *)p + t.rest_off, t.rest_len);
    } else {
        Py_INCREF(empty_bytes);
        rest = empty_bytes;
    }
    if (rest == NULL) goto fail;
    heads_free(&t);
    return Py_BuildValue("(NNN)", reqs, rejects, rest);
fail:
    heads_free(&t);
    Py_XDECREF(reqs);
    Py_XDECREF(rejects);
    return NULL;
}

/* ---- Python entry points */

static PyObject *py_parse_requests(PyObject *self, PyObject *arg) {
    (void)self;
    Py_buffer buf;
    if (PyObject_GetBuffer(arg, &buf, PyBUF_SIMPLE) < 0) return NULL;
    PyObject *res = requests_of(buf.buf, buf.len, PyBytes_CheckExact(arg) ? arg : NULL, reason_bare);
    PyBuffer_Release(&buf);
    return res;
}

static PyObject *segment_tuple(const segment *s, PyObject *payload, PyObject *kind, PyObject *parsed) {
    PyObject *src = address(s, s->src);
    if (src == NULL) return NULL;
    PyObject *dst = address(s, s->dst);
    if (dst == NULL) { Py_DECREF(src); return NULL; }
    if (kind == NULL) /* parse_frame's shape: Segment(src, dst, sport, dport, payload, seq, flags) */
        return Py_BuildValue("(NNIIOkI)", src, dst, s->sport, s->dport, payload, (unsigned long)s->seq, s->flags);
    return Py_BuildValue("(NNIIkOOOI)", src, dst, s->sport, s->dport, (unsigned long)s->seq, payload, kind, parsed,
                         s->flags);
}

static PyObject *py_parse_frame(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer buf;
    PyObject *lt;
    long long linktype;
    if (!PyArg_ParseTuple(args, "y*O", &buf, &lt)) return NULL;
    if (linktype_arg(lt, &linktype) < 0) { PyBuffer_Release(&buf); return NULL; }
    segment s;
    int why = frame_segment(buf.buf, buf.len, linktype, &s);
    PyObject *res;
    if (why != R_NONE) {
        Py_INCREF(reason_bare[why]);
        res = reason_bare[why];
    } else {
        PyObject *payload = PyBytes_FromStringAndSize((const char *)buf.buf + s.pay_off, s.pay_end - s.pay_off);
        res = payload == NULL ? NULL : segment_tuple(&s, payload, NULL, NULL);
        Py_XDECREF(payload);
    }
    PyBuffer_Release(&buf);
    return res;
}

static PyObject *kind_obj[3];

/* The per-frame hot path. portmap: 65536 bytes, 0 other / 1 HTTP / 2 TLS per destination port.
 * strict (ignored addresses configured): other-port and no-payload are decided in Python, after
 * the address check, so they come back as tuples too. */
static PyObject *py_scan(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "scan(frame, linktype, portmap, strict)");
        return NULL;
    }
    PyObject *frame = args[0];
    long long linktype;
    if (!PyBytes_Check(frame)) {
        PyErr_SetString(PyExc_TypeError, "frame must be bytes");
        return NULL;
    }
    if (linktype_arg(args[1], &linktype) < 0) return NULL;
    if (!PyBytes_Check(args[2]) || PyBytes_GET_SIZE(args[2]) != 65536) {
        PyErr_SetString(PyExc_TypeError, "portmap must be 65536 bytes");
        return NULL;
    }
    const uint8_t *portmap = (const uint8_t *)PyBytes_AS_STRING(args[2]);
    int strict = PyObject_IsTrue(args[3]);
    const uint8_t *f = (const uint8_t *)PyBytes_AS_STRING(frame);
    Py_ssize_t n = PyBytes_GET_SIZE(frame);
    segment s;
    int why = frame_segment(f, n, linktype, &s);
    if (why != R_NONE) {
        Py_INCREF(reason_drop[why]);
        return reason_drop[why];
    }
    int kind = portmap[s.dport];
    Py_ssize_t plen = s.pay_end - s.pay_off;
    /* a SYN to an HTTP port starts the flow's sequence numbers: Python records it */
    if (!strict && (kind == 0 || (kind == 1 && plen == 0 && !(s.flags & 0x02)))) {
        why = kind == 0 ? R_OTHER_PORT : R_NO_PAYLOAD;
        Py_INCREF(reason_drop[why]);
        return reason_drop[why];
    }
    PyObject *payload = PyBytes_FromStringAndSize((const char *)f + s.pay_off, plen);
    if (payload == NULL) return NULL;
    PyObject *parsed;
    if (kind == 1 && plen > 0) {
        parsed = requests_of((const uint8_t *)PyBytes_AS_STRING(payload), plen, payload, reason_drop);
        if (parsed == NULL) { Py_DECREF(payload); return NULL; }
    } else {
        Py_INCREF(Py_None);
        parsed = Py_None;
    }
    PyObject *res = segment_tuple(&s, payload, kind_obj[kind > 2 ? 0 : kind], parsed);
    Py_DECREF(payload);
    Py_DECREF(parsed);
    return res;
}

/* Classic pcap records from a buffer holding the whole file, read the way scapy's RawPcapReader
 * reads them (frames cut at 65535 bytes, a short last record kept as it is). */
static PyObject *py_pcap_records(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer buf;
    Py_ssize_t off, limit;
    int big;
    PyObject *lt;
    if (!PyArg_ParseTuple(args, "y*npOn", &buf, &off, &big, &lt, &limit)) return NULL;
    PyObject *out = PyList_New(0);
    if (out == NULL) { PyBuffer_Release(&buf); return NULL; }
    const uint8_t *p = buf.buf;
    Py_ssize_t n = buf.len;
    while (off >= 0 && n - off >= 16 && PyList_GET_SIZE(out) < limit) {
        const uint8_t *h = p + off;
        uint32_t v[4];
        for (int i = 0; i < 4; i++) {
            const uint8_t *q = h + 4 * i;
            v[i] = big ? ((uint32_t)q[0] << 24 | (uint32_t)q[1] << 16 | (uint32_t)q[2] << 8 | q[3])
                       : ((uint32_t)q[3] << 24 | (uint32_t)q[2] << 16 | (uint32_t)q[1] << 8 | q[0]);
        }
        Py_ssize_t caplen = (Py_ssize_t)v[2], avail = n - off - 16;
        Py_ssize_t take = caplen < avail ? caplen : avail;
        if (take > MTU) take = MTU;
        double ts = (double)v[0] + (double)v[1] / 1e6; /* capture.py's _ts, same arithmetic */
        PyObject *rec = Py_BuildValue("(y#dO)", (const char *)h + 16, take, ts, lt);
        if (rec == NULL || PyList_Append(out, rec) < 0) {
            Py_XDECREF(rec);
            Py_DECREF(out);
            PyBuffer_Release(&buf);
            return NULL;
        }
        Py_DECREF(rec);
        off = caplen < avail ? off + 16 + caplen : n;
    }
    PyBuffer_Release(&buf);
    return Py_BuildValue("(Nn)", out, off);
}

/* ---- FastPath: FrameParser.events for the common frame, entirely in C.
 *
 * It reads the parser's own state (counters, memo dicts, held partial heads, the hasher) and
 * decides a frame when C can: a drop, a ClientHello, or HTTP requests whose cache-key entry is
 * memoized or computable here. Then it counts exactly what the Python path would count and
 * returns the events. Anything else (a head to hold or to reassemble, an absolute-form target,
 * a query parameter name not seen yet, filter rules) returns None before touching any counter,
 * and events.py runs the Python path for that frame.
 *
 * Its own memos are keyed by bytes straight from the frame, so a repeated request costs no
 * string objects: (host, target) -> the entry the parser's memo holds, user agent -> class,
 * client address -> id within the current id period. All three cache pure functions. */

#define IGN_MAX 16 /* more ignored addresses than this: the set of strings is asked instead */

typedef struct {
    PyObject_HEAD
    PyObject *portmap, *counters, *entries, *uas, *partials, *hasher, *ignored, *event_type, *params, *ua_class;
    PyObject *fentries, *fuas, *fclients, *fhosts, *fparams; /* the byte-keyed memos */
    PyObject *hold;                       /* FrameParser._hold */
    PyObject *flows, *ooo;                /* FrameParser._next (flow -> (next seq, ts)) and ._ooo */
    Py_ssize_t max_flows;
    double flow_ttl;
    PyObject *pend_key[64];               /* counter updates of this call, applied when it returns */
    Py_ssize_t pend_n[64];
    int npend;
    double rotation, fc_epoch, ttl;
    int raw, rules_on, fc_valid;
    /* the ignored addresses as packed bytes (ign_packed): compared without making strings */
    uint8_t ign4[IGN_MAX][4], ign6[IGN_MAX][16];
    int n_ign4, n_ign6, ign_packed;
} FastPath;

#define FAST_MEMO_MAX 65536 /* events.py's _MEMO_MAX */

static int memo_put(PyObject *memo, PyObject *key, PyObject *value) {
    if (PyDict_GET_SIZE(memo) >= FAST_MEMO_MAX) PyDict_Clear(memo);
    return PyDict_SetItem(memo, key, value);
}

static PyObject *s_next_seq, *s_ts, *s_data, *s_reassembled, *s_gap, *s_retrans;
static PyObject *s_packets, *s_requests, *s_method, *s_ignored_address, *s_epoch, *s_memo, *s_bad_url, *s_client_id,
    *s_tls, *s_tls_hosts, *s_not_hello, *s_bad_sni;

static int bump(PyObject *counters, PyObject *key, Py_ssize_t by) {
    PyObject *v = PyDict_GetItemWithError(counters, key); /* borrowed */
    PyObject *nv;
    if (v == NULL) {
        if (PyErr_Occurred()) return -1;
        nv = PyLong_FromSsize_t(by);
    } else {
        PyObject *inc = PyLong_FromSsize_t(by);
        if (inc == NULL) return -1;
        nv = PyNumber_Add(v, inc);
        Py_DECREF(inc);
    }
    if (nv == NULL) return -1;
    int rc = PyDict_SetItem(counters, key, nv);
    Py_DECREF(nv);
    return rc;
}

/* Counter updates are summed per key during one call (events, events_many, pcap_events) and
 * added to the Counter when it returns: the same totals, a few dict updates per batch. */
static int pend_flush(FastPath *self) {
    int rc = 0;
    for (int i = 0; i < self->npend; i++) {
        if (rc == 0 && bump(self->counters, self->pend_key[i], self->pend_n[i]) < 0) rc = -1;
        Py_DECREF(self->pend_key[i]);
    }
    self->npend = 0;
    return rc;
}

static int count(FastPath *self, PyObject *key, Py_ssize_t by) {
    for (int i = 0; i < self->npend; i++)
        if (self->pend_key[i] == key) {
            self->pend_n[i] += by;
            return 0;
        }
    if (self->npend == 64 && pend_flush(self) < 0) return -1;
    Py_INCREF(key);
    self->pend_key[self->npend] = key;
    self->pend_n[self->npend++] = by;
    return 0;
}

static PyObject *drop1(FastPath *self, PyObject *reason) {
    if (count(self, s_packets, 1) < 0 || count(self, reason, 1) < 0) return NULL;
    return PyList_New(0);
}

/* float // float exactly as CPython computes it (Objects/floatobject.c, _float_div_mod) */
static double py_floordiv(double vx, double wx) {
    double mod = fmod(vx, wx), div = (vx - mod) / wx;
    if (mod && ((wx < 0) != (mod < 0))) div -= 1.0;
    if (div) {
        double fl = floor(div);
        return div - fl > 0.5 ? fl + 1.0 : fl;
    }
    return copysign(0.0, vx / wx);
}

/* Whether the segment's source or destination is an ignored address (packed form). */
static int ignored_packed(const FastPath *self, const segment *s) {
    if (s->family == AF_INET) {
        for (int i = 0; i < self->n_ign4; i++)
            if (!memcmp(s->src, self->ign4[i], 4) || !memcmp(s->dst, self->ign4[i], 4)) return 1;
        return 0;
    }
    for (int i = 0; i < self->n_ign6; i++)
        if (!memcmp(s->src, self->ign6[i], 16) || !memcmp(s->dst, self->ign6[i], 16)) return 1;
    return 0;
}

/* Pack the ignored addresses: 1 if every entry could be decided (packed, or dropped because no
 * frame's address prints as it: the text is not what inet_ntop gives back), 0 to keep asking
 * the set of strings (an entry that is no str, too many entries). Equal to `src in ignored`. */
static int pack_ignored(FastPath *self, PyObject *ignored) {
    self->n_ign4 = self->n_ign6 = 0;
    if (ignored == Py_None) return 1;
    PyObject *it = PyObject_GetIter(ignored), *item;
    if (it == NULL) return -1;
    int ok = 1;
    while (ok && (item = PyIter_Next(it)) != NULL) {
        const char *text = PyUnicode_Check(item) ? PyUnicode_AsUTF8(item) : NULL;
        if (text == NULL) {
            PyErr_Clear();
            ok = 0;
        } else {
            uint8_t buf[16];
            char back[INET6_ADDRSTRLEN];
            int fam = inet_pton(AF_INET, text, buf) == 1 ? AF_INET : inet_pton(AF_INET6, text, buf) == 1 ? AF_INET6 : 0;
            if (fam && inet_ntop(fam, buf, back, sizeof back) != NULL && strcmp(back, text) == 0) {
                if (fam == AF_INET && self->n_ign4 < IGN_MAX) memcpy(self->ign4[self->n_ign4++], buf, 4);
                else if (fam == AF_INET6 && self->n_ign6 < IGN_MAX) memcpy(self->ign6[self->n_ign6++], buf, 16);
                else ok = 0;
            } /* else: never equal to a printed address, never matches */
        }
        Py_DECREF(item);
    }
    Py_DECREF(it);
    if (PyErr_Occurred()) return -1;
    return ok;
}

/* The client id for src at ts, borrowed from the hasher's memo; on a miss (new address, new
 * period, ts not a float) hasher.client_id(src, ts) itself is called, with the same side
 * effects the Python path would have at this point, and a new reference is parked in *owned. */
static PyObject *client_of(FastPath *self, PyObject *src, PyObject *ts, PyObject **owned) {
    if (self->raw) return src;
    if (PyFloat_CheckExact(ts)) {
        double e = py_floordiv(PyFloat_AS_DOUBLE(ts), self->rotation);
        PyObject *cur = PyObject_GetAttr(self->hasher, s_epoch);
        if (cur == NULL) return NULL;
        int overflow = 0;
        long long have = PyLong_AsLongLongAndOverflow(cur, &overflow);
        Py_DECREF(cur);
        if (have == -1 && PyErr_Occurred()) return NULL;
        if (!overflow && e > -4e18 && e < 4e18 && have == (long long)e) {
            PyObject *memo = PyObject_GetAttr(self->hasher, s_memo);
            if (memo == NULL) return NULL;
            PyObject *cid = PyDict_Check(memo) ? PyDict_GetItemWithError(memo, src) : NULL;
            Py_DECREF(memo); /* the hasher keeps the dict (and so the id) alive */
            if (cid != NULL || PyErr_Occurred()) return cid;
        }
    }
    *owned = PyObject_CallMethodObjArgs(self->hasher, s_client_id, src, ts, NULL);
    return *owned;
}

/* parse.parse_sni: the server name of a ClientHello in one segment, as a span of the payload;
 * 0 when the reference returns None (not a ClientHello, no SNI, cut short, not ASCII). */
static int sni_c(const uint8_t *p, Py_ssize_t n, const uint8_t **name, Py_ssize_t *name_len) {
    if (n < 43 || p[0] != 0x16 || p[1] != 0x03 || p[5] != 0x01) return 0;
    Py_ssize_t rec = 5 + (((Py_ssize_t)p[3] << 8) | p[4]);
    Py_ssize_t end = n < rec ? n : rec;
    Py_ssize_t pos = 5 + 4 + 2 + 32; /* record header, handshake header, client_version, random */
    if (pos >= n) return 0;          /* each index past the end is the reference's IndexError */
    pos += 1 + p[pos];               /* session id */
    if (pos + 1 >= n) return 0;
    pos += 2 + (((Py_ssize_t)p[pos] << 8) | p[pos + 1]); /* cipher suites */
    if (pos >= n) return 0;
    pos += 1 + p[pos]; /* compression methods */
    if (pos + 1 >= n) return 0;
    Py_ssize_t ext = pos + 2 + (((Py_ssize_t)p[pos] << 8) | p[pos + 1]);
    Py_ssize_t ext_end = end < ext ? end : ext;
    pos += 2;
    while (pos + 4 <= ext_end) {
        unsigned etype = ((unsigned)p[pos] << 8) | p[pos + 1];
        Py_ssize_t elen = ((Py_ssize_t)p[pos + 2] << 8) | p[pos + 3];
        pos += 4;
        if (etype == 0) { /* server_name: list length, then (type, length, name)* */
            Py_ssize_t q = pos + 2, stop = pos + elen < ext_end ? pos + elen : ext_end;
            while (q + 3 <= stop) {
                unsigned ntype = p[q];
                Py_ssize_t nlen = ((Py_ssize_t)p[q + 1] << 8) | p[q + 2];
                Py_ssize_t have = n - (q + 3);
                if (have > nlen) have = nlen;
                if (have < 0) have = 0;
                if (ntype == 0 && have == nlen && nlen) {
                    if (!is_ascii(p + q + 3, nlen)) return 0; /* UnicodeDecodeError */
                    *name = p + q + 3;
                    *name_len = nlen;
                    return 1;
                }
                q += 3 + nlen;
            }
            return 0;
        }
        pos += elen;
    }
    return 0;
}

/* heatcache.cachekey.split_host for an ASCII Host header: the lower-case name into `name` (at
 * most 260 bytes) and the port. 0: valid, 1: BadUrl, 2: only Python can tell (IPv6 literal). */
static int is_strip_space(uint8_t c) { /* str.strip()'s whitespace, ASCII part */
    return c == ' ' || (c >= '\t' && c <= '\r') || (c >= 0x1c && c <= 0x1f);
}

static int split_host_c(const uint8_t *h, Py_ssize_t n, char *name, Py_ssize_t *name_len, long *port, long dflt) {
    while (n > 0 && is_strip_space(h[0])) { h++; n--; }
    while (n > 0 && is_strip_space(h[n - 1])) n--;
    if (n == 0 || n > 260) return 1;
    if (h[0] == '[') return 2;
    const uint8_t *colon = memchr(h, ':', (size_t)n);
    Py_ssize_t nl = colon ? colon - h : n;
    *port = dflt;
    if (colon) { /* _port: all digits and 0 < port < 65536 */
        Py_ssize_t pl = n - nl - 1;
        if (pl == 0) return 1;
        long v = 0;
        for (Py_ssize_t i = 0; i < pl; i++) {
            uint8_t c = colon[1 + i];
            if (c < '0' || c > '9') return 1;
            if (v < 1000000) v = v * 10 + (c - '0');
        }
        if (!(v > 0 && v < 65536)) return 1;
        *port = v;
    }
    while (nl > 0 && h[nl - 1] == '.') nl--;
    /* _HOST_RE: 1..253 chars, dot-separated labels [a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])? */
    if (nl < 1 || nl > 253) return 1;
    Py_ssize_t start = 0;
    for (Py_ssize_t i = 0; i <= nl; i++) {
        uint8_t c = i < nl ? h[i] : '.';
        if (c >= 'A' && c <= 'Z') c = (uint8_t)(c + 32);
        if (c == '.') {
            Py_ssize_t len = i - start;
            if (len < 1 || len > 63 || name[start] == '-' || name[i - 1] == '-') return 1;
            if (i < nl) name[i] = '.';
            start = i + 1;
            continue;
        }
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-')) return 1;
        name[i] = (char)c;
    }
    *name_len = nl;
    return 0;
}

/* FrameParser._entry for an origin-form target, computed in C as cache_key does: split_host,
 * path and query split at "?" and "#", query parameters kept or dropped by the parser's
 * per-(host, name) memo (params), the default port dropped. New reference to the entry, or
 * NULL: without an error, Python must compute it. */
/* split_host of a Host header, memoized by its bytes: (lower-case name, authority as the key
 * writes it) or None for BadUrl, borrowed; NULL without an error for an IPv6 literal (Python). */
static PyObject *host_info(FastPath *self, const head *h) {
    PyObject *kb = PyBytes_FromStringAndSize((const char *)h->host.p, h->host.len);
    if (kb == NULL) return NULL;
    PyObject *info = PyDict_GetItemWithError(self->fhosts, kb);
    if (info != NULL || PyErr_Occurred()) {
        Py_DECREF(kb);
        return info;
    }
    char name[264], auth[272];
    Py_ssize_t name_len = 0;
    long port = 80;
    int rc = split_host_c(h->host.p, h->host.len, name, &name_len, &port, 80);
    if (rc == 2) {
        Py_DECREF(kb);
        return NULL;
    }
    if (rc == 1) {
        info = Py_None;
        Py_INCREF(info);
    } else {
        Py_ssize_t alen = name_len; /* host_with_port: the default port dropped */
        memcpy(auth, name, (size_t)name_len);
        if (port != 80) alen += snprintf(auth + alen, sizeof auth - (size_t)alen, ":%ld", port);
        PyObject *n = PyUnicode_FromStringAndSize(name, name_len), *a = n ? PyUnicode_FromStringAndSize(auth, alen) : NULL;
        info = a ? PyTuple_Pack(2, n, a) : NULL;
        Py_XDECREF(n);
        Py_XDECREF(a);
        if (info != NULL) PyObject_GC_UnTrack(info);
    }
    if (info != NULL && memo_put(self->fhosts, kb, info) < 0) Py_CLEAR(info);
    Py_XDECREF(info); /* fhosts holds it */
    Py_DECREF(kb);
    return info;
}

/* keep/drop of one query parameter name for a host (the parser's params memo, which Python
 * fills), borrowed Py_True/Py_False; NULL without an error for a name not decided yet. */
static PyObject *param_keep(FastPath *self, PyObject *host_name, const char *pname, Py_ssize_t plen) {
    Py_ssize_t hl = PyUnicode_GET_LENGTH(host_name);
    PyObject *kb = PyBytes_FromStringAndSize(NULL, hl + 1 + plen);
    if (kb == NULL) return NULL;
    char *k = PyBytes_AS_STRING(kb);
    memcpy(k, PyUnicode_DATA(host_name), (size_t)hl);
    k[hl] = 0;
    memcpy(k + hl + 1, pname, (size_t)plen);
    PyObject *keep = PyDict_GetItemWithError(self->fparams, kb);
    if (keep == NULL && !PyErr_Occurred()) {
        PyObject *name = PyUnicode_FromStringAndSize(pname, plen);
        PyObject *pk = name ? PyTuple_Pack(2, host_name, name) : NULL;
        Py_XDECREF(name);
        keep = pk ? PyDict_GetItemWithError(self->params, pk) : NULL;
        Py_XDECREF(pk);
        if (keep != NULL && memo_put(self->fparams, kb, keep) < 0) keep = NULL;
    }
    Py_DECREF(kb);
    return keep;
}

static PyObject *compute_entry(FastPath *self, const head *h, PyObject *target) {
    if (self->rules_on || !PyUnicode_IS_ASCII(target)) return NULL;
    const char *t = (const char *)PyUnicode_DATA(target);
    Py_ssize_t tlen = PyUnicode_GET_LENGTH(target);
    if ((tlen >= 7 && memcmp(t, "http://", 7) == 0) || (tlen >= 8 && memcmp(t, "https://", 8) == 0))
        return NULL; /* absolute-form: rare, Python */
    PyObject *entry = NULL, *info = Py_None;
    if (tlen > 0 && t[0] == '/') {
        info = host_info(self, h);
        if (info == NULL) return NULL;
    }
    if (info == Py_None) { /* BadUrl: not origin-form, or a hostile Host */
        entry = s_bad_url;
        Py_INCREF(entry);
    } else {
        PyObject *host_name = PyTuple_GET_ITEM(info, 0), *authority = PyTuple_GET_ITEM(info, 1);
        const char *auth = (const char *)PyUnicode_DATA(authority);
        Py_ssize_t alen = PyUnicode_GET_LENGTH(authority);
        const char *qm = memchr(t, '?', (size_t)tlen);
        Py_ssize_t q = qm ? qm - t : tlen;
        const char *hash = memchr(t, '#', (size_t)q);
        Py_ssize_t path_len = hash ? hash - t : q;
        const char *qs = qm ? qm + 1 : t + tlen, *qe = t + tlen;
        const char *qh = memchr(qs, '#', (size_t)(qe - qs));
        if (qh) qe = qh;
        char *key = PyMem_Malloc((size_t)(7 + alen + tlen + 2));
        if (key == NULL) { PyErr_NoMemory(); return NULL; }
        memcpy(key, "http://", 7);
        memcpy(key + 7, auth, (size_t)alen);
        memcpy(key + 7 + alen, t, (size_t)path_len);
        Py_ssize_t base = 7 + alen + path_len, klen = base;
        const char *p = qs;
        while (p < qe) {
            const char *amp = memchr(p, '&', (size_t)(qe - p));
            const char *stop = amp ? amp : qe;
            if (stop > p) {
                const char *eq = memchr(p, '=', (size_t)(stop - p));
                PyObject *keep = param_keep(self, host_name, p, (eq ? eq : stop) - p);
                if (keep == NULL) { klen = -1; break; } /* a new parameter name (or an error): Python */
                if (keep == Py_True) {
                    key[klen] = klen == base ? '?' : '&';
                    klen++;
                    memcpy(key + klen, p, (size_t)(stop - p));
                    klen += stop - p;
                }
            }
            if (amp == NULL) break;
            p = amp + 1;
        }
        if (klen < 0 || PyErr_Occurred()) { PyMem_Free(key); return NULL; }
        PyObject *k = PyUnicode_FromStringAndSize(key, klen);
        PyMem_Free(key);
        PyObject *url = k ? PyUnicode_New(7 + alen + tlen, 127) : NULL; /* http://authority/target */
        if (url != NULL) {
            char *u = (char *)PyUnicode_DATA(url);
            memcpy(u, "http://", 7);
            memcpy(u + 7, auth, (size_t)alen);
            memcpy(u + 7 + alen, t, (size_t)tlen);
        }
        entry = url ? PyTuple_Pack(4, k, authority, target, url) : NULL;
        Py_XDECREF(k);
        Py_XDECREF(url);
        if (entry == NULL) return NULL;
        PyObject_GC_UnTrack(entry); /* strings only: no cycle, and the collector never walks the memo */
    }
    return entry;
}

/* The memo entry for one head, borrowed (the byte-keyed memo holds it); NULL without an error
 * when only Python can compute it. */
static PyObject *fast_entry(FastPath *self, const head *h) {
    PyObject *kb = PyBytes_FromStringAndSize(NULL, h->host.len + 1 + h->target.len);
    if (kb == NULL) return NULL;
    char *k = PyBytes_AS_STRING(kb);
    memcpy(k, h->host.p, (size_t)h->host.len);
    k[h->host.len] = 0; /* never in a header value or a target */
    memcpy(k + h->host.len + 1, h->target.p, (size_t)h->target.len);
    PyObject *entry = PyDict_GetItemWithError(self->fentries, kb);
    if (entry != NULL || PyErr_Occurred()) {
        Py_DECREF(kb);
        return entry;
    }
    PyObject *host = NULL, *target = ascii_str(h->target.p, h->target.len);
    PyObject *mk = NULL;
    if (target != NULL) {
        entry = compute_entry(self, h, target);
        if (entry == NULL && !PyErr_Occurred() && (host = ascii_str(h->host.p, h->host.len)) != NULL
            && (mk = PyTuple_Pack(2, host, target)) != NULL) {
            entry = PyDict_GetItemWithError(self->entries, mk); /* what the Python path computed */
            Py_XINCREF(entry);
        }
    }
    if (entry != NULL && memo_put(self->fentries, kb, entry) < 0) Py_CLEAR(entry);
    Py_XDECREF(entry); /* fentries holds it */
    Py_XDECREF(mk);
    Py_XDECREF(host);
    Py_XDECREF(target);
    Py_DECREF(kb);
    return entry;
}

/* ua_class(user_agent), borrowed from the byte-keyed memo; NULL on an error. */
static PyObject *fast_ua(FastPath *self, const head *h) {
    PyObject *kb = PyBytes_FromStringAndSize((const char *)h->ua.p, h->ua.len);
    if (kb == NULL) return NULL;
    PyObject *cls = PyDict_GetItemWithError(self->fuas, kb);
    if (cls == NULL && !PyErr_Occurred()) {
        PyObject *ua = PyUnicode_DecodeLatin1((const char *)h->ua.p, h->ua.len, NULL);
        cls = ua ? PyObject_CallOneArg(self->ua_class, ua) : NULL;
        Py_XDECREF(ua);
        if (cls != NULL && memo_put(self->fuas, kb, cls) < 0) Py_CLEAR(cls);
        Py_XDECREF(cls); /* fuas holds it */
    }
    Py_DECREF(kb);
    return cls;
}

/* The client id of the frame's source, borrowed; NULL on an error. *src is made on demand. */
static PyObject *fast_client(FastPath *self, const segment *s, PyObject **src, PyObject *ts, PyObject **owned) {
    if (self->raw || !PyFloat_CheckExact(ts)) {
        if (*src == NULL && (*src = address(s, s->src)) == NULL) return NULL;
        return client_of(self, *src, ts, owned);
    }
    double e = py_floordiv(PyFloat_AS_DOUBLE(ts), self->rotation);
    if (!self->fc_valid || e != self->fc_epoch) { /* a new id period: ids of the last one are no use */
        PyDict_Clear(self->fclients);
        self->fc_epoch = e;
        self->fc_valid = 1;
    }
    PyObject *kb = PyBytes_FromStringAndSize((const char *)s->src, s->family == AF_INET ? 4 : 16);
    if (kb == NULL) return NULL;
    PyObject *cid = PyDict_GetItemWithError(self->fclients, kb);
    if (cid == NULL && !PyErr_Occurred()) {
        if (*src != NULL || (*src = address(s, s->src)) != NULL) {
            cid = client_of(self, *src, ts, owned);
            if (cid != NULL && memo_put(self->fclients, kb, cid) < 0) cid = NULL;
        }
    }
    Py_DECREF(kb);
    return cid;
}

/* The frame's flow in FrameParser._next: *fk gets its key (events.flow_key: both addresses
 * packed, then both ports). 0: a new flow (or one idle past the TTL), 1: known, *next its next
 * sequence number, 2: only Python can tell (a new flow with the table full, a value or a time
 * it did not store), -1: an error. */
static int flow_state(FastPath *self, const segment *s, PyObject *ts, PyObject **fk, uint32_t *next) {
    int alen = s->family == AF_INET ? 4 : 16;
    if (*fk == NULL) {
        *fk = PyBytes_FromStringAndSize(NULL, 2 * alen + 4);
        if (*fk == NULL) return -1;
        uint8_t *k = (uint8_t *)PyBytes_AS_STRING(*fk);
        memcpy(k, s->src, (size_t)alen);
        memcpy(k + alen, s->dst, (size_t)alen);
        k += 2 * alen;
        k[0] = (uint8_t)(s->sport >> 8); k[1] = (uint8_t)s->sport;
        k[2] = (uint8_t)(s->dport >> 8); k[3] = (uint8_t)s->dport;
    }
    if (!PyFloat_CheckExact(ts)) return 2;
    PyObject *st = PyDict_GetItemWithError(self->flows, *fk); /* borrowed */
    if (st == NULL) {
        if (PyErr_Occurred()) return -1;
        return PyDict_GET_SIZE(self->flows) >= self->max_flows ? 2 : 0;
    }
    if (!PyTuple_CheckExact(st) || PyTuple_GET_SIZE(st) != 2 || !PyLong_CheckExact(PyTuple_GET_ITEM(st, 0))
        || !PyFloat_CheckExact(PyTuple_GET_ITEM(st, 1)))
        return 2;
    if (PyFloat_AS_DOUBLE(ts) - PyFloat_AS_DOUBLE(PyTuple_GET_ITEM(st, 1)) > self->flow_ttl)
        return PyDict_GET_SIZE(self->ooo) ? 2 : 0; /* idle too long: starts over (Python drops what waited) */
    unsigned long v = PyLong_AsUnsignedLong(PyTuple_GET_ITEM(st, 0));
    if (v == (unsigned long)-1 && PyErr_Occurred()) { PyErr_Clear(); return 2; }
    *next = (uint32_t)v;
    return 1;
}

/* FrameParser._set_next for a flow flow_state said is known or fits: flows[fk] = (next, ts). */
static int set_flow(FastPath *self, PyObject *fk, uint32_t next, PyObject *ts) {
    PyObject *n = PyLong_FromUnsignedLong((unsigned long)next);
    if (n == NULL) return -1;
    PyObject *v = PyTuple_New(2);
    if (v == NULL) { Py_DECREF(n); return -1; }
    PyTuple_SET_ITEM(v, 0, n);
    Py_INCREF(ts);
    PyTuple_SET_ITEM(v, 1, ts);
    PyObject_GC_UnTrack(v);
    int rc = PyDict_SetItem(self->flows, fk, v);
    Py_DECREF(v);
    return rc;
}

/* One frame: its events (a new list), None (Python decides it), or NULL on an error. */
static PyObject *frame_events(FastPath *self, const uint8_t *f, Py_ssize_t flen, PyObject *ts, long long linktype) {
    segment s;
    int why = frame_segment(f, flen, linktype, &s);
    if (why == R_IP_FRAGMENT) Py_RETURN_NONE; /* reassembled in Python (sniffer.reassembly) */
    if (why != R_NONE) return drop1(self, reason_drop[why]);
    int kind = ((const uint8_t *)PyBytes_AS_STRING(self->portmap))[s.dport];
    Py_ssize_t plen = s.pay_end - s.pay_off;
    PyObject *src = NULL, *dst = NULL, *out = NULL, *res = NULL, *cid_owned = NULL;
    PyObject *flow = NULL, *part = NULL, *glued = NULL, *fk = NULL;
    uint32_t next_seq = 0;
    heads_t heads;
    int heads_used = 0, n_entry_drops = 0;
    PyObject *entry_drops[8];
    if (self->ign_packed) {
        if (ignored_packed(self, &s)) { res = drop1(self, s_ignored_address); goto done; }
    } else if (self->ignored != Py_None && PySet_GET_SIZE(self->ignored)) {
        if ((src = address(&s, s.src)) == NULL || (dst = address(&s, s.dst)) == NULL) goto done;
        int hit = PySet_Contains(self->ignored, src);
        if (hit == 0) hit = PySet_Contains(self->ignored, dst);
        if (hit < 0) goto done;
        if (hit) { res = drop1(self, s_ignored_address); goto done; }
    }
    if (kind == 0) { res = drop1(self, reason_drop[R_OTHER_PORT]); goto done; }
    if (kind == 1 && (s.flags & 0x02)) { /* a SYN (re)starts the flow: FrameParser._syn */
        if (plen || !PyFloat_CheckExact(ts)) { res = Py_None; Py_INCREF(res); goto done; } /* data on a SYN: Python */
        int st = flow_state(self, &s, ts, &fk, &next_seq);
        if (st < 0) goto done;
        int waiting = PyDict_GET_SIZE(self->ooo) ? PyDict_Contains(self->ooo, fk) : 0;
        if (waiting < 0) goto done;
        if (st == 2 || waiting) {
            res = Py_None; /* table full, or out-of-order segments to drop: Python */
            Py_INCREF(res);
            goto done;
        }
        if (set_flow(self, fk, s.seq + 1u, ts) < 0) goto done;
    }
    if (plen == 0) { res = drop1(self, reason_drop[R_NO_PAYLOAD]); goto done; }
    if (kind == 2) { /* TLS: FrameParser._tls */
        const uint8_t *sni;
        Py_ssize_t sni_len;
        if (!sni_c(f + s.pay_off, plen, &sni, &sni_len)) { res = drop1(self, s_not_hello); goto done; }
        char name[264];
        Py_ssize_t name_len = 0;
        long port;
        int rc = split_host_c(sni, sni_len, name, &name_len, &port, 443);
        if (rc == 1) { res = drop1(self, s_bad_sni); goto done; }
        if (rc == 2 || self->rules_on) { res = Py_None; Py_INCREF(res); goto done; } /* Python decides */
        if (src == NULL && (src = address(&s, s.src)) == NULL) goto done;
        PyObject *cid = client_of(self, src, ts, &cid_owned);
        if (cid == NULL) goto done;
        PyObject *host = PyUnicode_FromStringAndSize(name, name_len);
        PyObject *key = host ? PyUnicode_FromFormat("https://%U/", host) : NULL;
        PyObject *ev = key ? ((PyTypeObject *)self->event_type)->tp_alloc((PyTypeObject *)self->event_type, 9) : NULL;
        if (ev != NULL) {
            PyObject *items[9] = {ts, cid, s_tls, host, empty_str, key, key, empty_str, empty_str};
            for (int j = 0; j < 9; j++) {
                Py_INCREF(items[j]);
                PyTuple_SET_ITEM(ev, j, items[j]);
            }
            PyObject_GC_UnTrack(ev);
        }
        Py_XDECREF(host);
        Py_XDECREF(key);
        if (ev == NULL) goto done;
        if (count(self, s_packets, 1) < 0 || count(self, s_tls_hosts, 1) < 0
            || (res = PyList_New(1)) == NULL) {
            Py_DECREF(ev);
            goto done;
        }
        PyList_SET_ITEM(res, 0, ev);
        goto done;
    }
    /* FrameParser._order: next in order (or a new flow) goes on, a whole retransmission is
     * dropped here; anything else (out of order, partly resent, far off) is Python's */
    {
        int st = flow_state(self, &s, ts, &fk, &next_seq);
        if (st < 0) goto done;
        int waiting = PyDict_GET_SIZE(self->ooo) ? PyDict_Contains(self->ooo, fk) : 0;
        if (waiting < 0) goto done;
        if (waiting) st = 2;
        if (st == 1) {
            int32_t d = (int32_t)(s.seq - next_seq);
            if (d < 0 && d > -(1 << 24) && (int64_t)d + plen <= 0) { res = drop1(self, s_retrans); goto done; }
            if (d != 0) st = 2;
        }
        if (st == 2) { res = Py_None; Py_INCREF(res); goto done; }
    }
    /* FrameParser._events_compiled's reassembly, decided here and applied at the end: a cut head
     * waiting for this flow is glued in front of the payload (or dropped as a gap) */
    const uint8_t *pp = f + s.pay_off;
    Py_ssize_t pn = plen;
    int glue = 0;
    if (PyDict_GET_SIZE(self->partials)) {
        if (src == NULL && (src = address(&s, s.src)) == NULL) goto done;
        if (dst == NULL && (dst = address(&s, s.dst)) == NULL) goto done;
        if ((flow = Py_BuildValue("(OIOI)", src, s.sport, dst, s.dport)) == NULL) goto done;
        part = PyDict_GetItemWithError(self->partials, flow);
        if (part == NULL && PyErr_Occurred()) goto done;
        Py_XINCREF(part);
        if (part != NULL) {
            PyObject *nseq = PyObject_GetAttr(part, s_next_seq), *pts = PyObject_GetAttr(part, s_ts);
            PyObject *data = PyObject_GetAttr(part, s_data);
            int ok = nseq && pts && data && PyLong_Check(nseq) && PyFloat_CheckExact(pts) && PyBytes_Check(data)
                     && PyFloat_CheckExact(ts);
            if (ok) {
                unsigned long long want = PyLong_AsUnsignedLongLong(nseq);
                if (want == (unsigned long long)-1 && PyErr_Occurred()) PyErr_Clear(); /* never equal */
                glue = want == s.seq && PyFloat_AS_DOUBLE(ts) - PyFloat_AS_DOUBLE(pts) <= self->ttl ? 1 : -1;
                if (glue == 1) {
                    Py_ssize_t dl = PyBytes_GET_SIZE(data);
                    glued = PyBytes_FromStringAndSize(NULL, dl + plen);
                    if (glued != NULL) {
                        memcpy(PyBytes_AS_STRING(glued), PyBytes_AS_STRING(data), (size_t)dl);
                        memcpy(PyBytes_AS_STRING(glued) + dl, pp, (size_t)plen);
                        pp = (const uint8_t *)PyBytes_AS_STRING(glued);
                        pn = dl + plen;
                    }
                }
            }
            Py_XDECREF(nseq);
            Py_XDECREF(pts);
            Py_XDECREF(data);
            if (PyErr_Occurred()) goto done;
            if (!ok) { res = Py_None; Py_INCREF(res); goto done; } /* not what events.py stores: Python */
        }
    }
    heads_init(&heads);
    heads_used = 1;
    if (walk_heads(pp, pn, &heads) < 0) goto done;
    Py_ssize_t methods_dropped = 0;
    if ((out = PyList_New(0)) == NULL) goto done;
    PyObject *cid = NULL;
    for (Py_ssize_t i = 0; i < heads.nh; i++) {
        const head *h = &heads.h[i];
        if (h->method > 1) { methods_dropped++; continue; } /* not GET (0) or HEAD (1) */
        if (h->host.len == 0) { res = Py_None; Py_INCREF(res); goto done; } /* HTTP/1.0, no Host: Python */
        PyObject *entry = fast_entry(self, h);
        if (entry == NULL) {
            if (!PyErr_Occurred()) { res = Py_None; Py_INCREF(res); } /* Python computes the key */
            goto done;
        }
        if (PyUnicode_Check(entry)) { /* a memoized drop reason ("drop.bad-url", ...) */
            if (n_entry_drops == 8) { res = Py_None; Py_INCREF(res); goto done; }
            Py_INCREF(entry);
            entry_drops[n_entry_drops++] = entry;
            continue;
        }
        if (!PyTuple_Check(entry) || PyTuple_GET_SIZE(entry) != 4) { res = Py_None; Py_INCREF(res); goto done; }
        PyObject *key = PyTuple_GET_ITEM(entry, 0), *authority = PyTuple_GET_ITEM(entry, 1);
        PyObject *path = PyTuple_GET_ITEM(entry, 2), *url = PyTuple_GET_ITEM(entry, 3);
        Py_INCREF(entry); /* fast_ua below may call Python */
        PyObject *ua = fast_ua(self, h);
        if (ua == NULL || (cid == NULL && (cid = fast_client(self, &s, &src, ts, &cid_owned)) == NULL)) {
            Py_DECREF(entry);
            goto done;
        }
        PyObject *rng = ascii_str(h->rng.p, h->rng.len);
        /* RequestEvent(ts, client, method, host, path, url, cache_key, range, ua_class): a tuple
         * subtype filled in place, as tuple.__new__ does */
        PyObject *ev = rng ? ((PyTypeObject *)self->event_type)->tp_alloc((PyTypeObject *)self->event_type, 9) : NULL;
        if (ev != NULL) {
            PyObject *items[9] = {ts, cid, method_str[h->method], authority, path, url, key, rng, ua};
            for (int j = 0; j < 9; j++) {
                Py_INCREF(items[j]);
                PyTuple_SET_ITEM(ev, j, items[j]);
            }
            PyObject_GC_UnTrack(ev); /* a float and strings: nothing for the cycle collector */
        }
        Py_XDECREF(rng);
        Py_DECREF(entry);
        if (ev == NULL) goto done;
        int rc = PyList_Append(out, ev);
        Py_DECREF(ev);
        if (rc < 0) goto done;
    }
    /* decided: the flow's next sequence number, the reassembly, a cut head held, the counters */
    if (set_flow(self, fk, s.seq + (uint32_t)plen, ts) < 0) goto done;
    if (part != NULL) {
        if (PyDict_DelItem(self->partials, flow) < 0) goto done;
        if (count(self, glue == 1 ? s_reassembled : s_gap, 1) < 0) goto done;
    }
    if (heads.rest_off >= 0) { /* FrameParser._hold(flow, next_seq, rest, ts) */
        if (src == NULL && (src = address(&s, s.src)) == NULL) goto done;
        if (dst == NULL && (dst = address(&s, s.dst)) == NULL) goto done;
        if (flow == NULL && (flow = Py_BuildValue("(OIOI)", src, s.sport, dst, s.dport)) == NULL) goto done;
        PyObject *rest = PyBytes_FromStringAndSize((const char *)pp + heads.rest_off, heads.rest_len);
        PyObject *nseq = rest ? PyLong_FromUnsignedLong((unsigned long)((s.seq + (uint64_t)plen) & 0xFFFFFFFFu)) : NULL;
        PyObject *r = nseq ? PyObject_CallFunctionObjArgs(self->hold, flow, nseq, rest, ts, NULL) : NULL;
        Py_XDECREF(rest);
        Py_XDECREF(nseq);
        if (r == NULL) goto done;
        Py_DECREF(r);
    }
    if (count(self, s_packets, 1) < 0) goto done;
    for (Py_ssize_t i = 0; i < heads.nr; i++)
        if (count(self, reason_drop[heads.r[i]], 1) < 0) goto done;
    if (methods_dropped && count(self, s_method, methods_dropped) < 0) goto done;
    for (int i = 0; i < n_entry_drops; i++)
        if (count(self, entry_drops[i], 1) < 0) goto done;
    if (count(self, s_requests, PyList_GET_SIZE(out)) < 0) goto done;
    res = out;
    out = NULL;
done:
    Py_XDECREF(fk);
    Py_XDECREF(flow);
    Py_XDECREF(part);
    Py_XDECREF(glued);
    for (int i = 0; i < n_entry_drops; i++) Py_DECREF(entry_drops[i]);
    if (heads_used) heads_free(&heads);
    Py_XDECREF(cid_owned);
    Py_XDECREF(src);
    Py_XDECREF(dst);
    Py_XDECREF(out);
    return res;
}

static PyObject *fp_events(FastPath *self, PyObject *const *args, Py_ssize_t nargs) {
    long long linktype;
    if (nargs != 3 || !PyBytes_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "events(frame: bytes, ts, linktype)");
        return NULL;
    }
    if (linktype_arg(args[2], &linktype) < 0) return NULL;
    PyObject *res = frame_events(self, (const uint8_t *)PyBytes_AS_STRING(args[0]), PyBytes_GET_SIZE(args[0]),
                                 args[1], linktype);
    if (pend_flush(self) < 0) Py_CLEAR(res);
    return res;
}

static int extend_events(PyObject *out, PyObject *evs) {
    if (!PyList_Check(evs)) {
        PyErr_SetString(PyExc_TypeError, "events must be a list");
        return -1;
    }
    Py_ssize_t n = PyList_GET_SIZE(out), k = PyList_GET_SIZE(evs);
    return k == 0 ? 0 : k == 1 ? PyList_Append(out, PyList_GET_ITEM(evs, 0)) : PyList_SetSlice(out, n, n, evs);
}

/* Classic pcap records read as pcap_records reads them, each frame through frame_events without
 * a bytes object or a record tuple; only frames for fallback(frame, ts, linktype) get them.
 * Returns (events, next offset, frames read, ts of the last frame or None). */
static PyObject *fp_pcap_events(FastPath *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "pcap_events(buf, offset, big_endian, linktype, limit, fallback)");
        return NULL;
    }
    Py_ssize_t off = PyLong_AsSsize_t(args[1]), limit = PyLong_AsSsize_t(args[4]);
    int big = PyObject_IsTrue(args[2]);
    long long linktype;
    if ((off == -1 || limit == -1 || big < 0) && PyErr_Occurred()) return NULL;
    if (linktype_arg(args[3], &linktype) < 0) return NULL;
    PyObject *lt = args[3], *fallback = args[5], *last = NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) return NULL;
    PyObject *out = PyList_New(0);
    const uint8_t *p = view.buf;
    Py_ssize_t n = view.len, count = 0;
    while (out != NULL && off >= 0 && n - off >= 16 && count < limit) {
        const uint8_t *h = p + off;
        uint32_t v[4];
        for (int i = 0; i < 4; i++) {
            const uint8_t *q = h + 4 * i;
            v[i] = big ? ((uint32_t)q[0] << 24 | (uint32_t)q[1] << 16 | (uint32_t)q[2] << 8 | q[3])
                       : ((uint32_t)q[3] << 24 | (uint32_t)q[2] << 16 | (uint32_t)q[1] << 8 | q[0]);
        }
        Py_ssize_t caplen = (Py_ssize_t)v[2], avail = n - off - 16;
        Py_ssize_t take = caplen < avail ? caplen : avail;
        if (take > MTU) take = MTU;
        PyObject *ts = PyFloat_FromDouble((double)v[0] + (double)v[1] / 1e6); /* capture.py's _ts */
        PyObject *evs = ts ? frame_events(self, h + 16, take, ts, linktype) : NULL;
        if (evs == Py_None) {
            Py_DECREF(evs);
            PyObject *frame = PyBytes_FromStringAndSize((const char *)h + 16, take);
            PyObject *call[3] = {frame, ts, lt};
            evs = frame ? PyObject_Vectorcall(fallback, call, 3, NULL) : NULL;
            Py_XDECREF(frame);
        }
        if (evs == NULL || extend_events(out, evs) < 0) Py_CLEAR(out);
        Py_XDECREF(evs);
        Py_XSETREF(last, ts);
        off = caplen < avail ? off + 16 + caplen : n;
        count++;
    }
    PyBuffer_Release(&view);
    if (pend_flush(self) < 0) Py_CLEAR(out);
    if (out == NULL) {
        Py_XDECREF(last);
        return NULL;
    }
    if (last == NULL) {
        last = Py_None;
        Py_INCREF(last);
    }
    return Py_BuildValue("(NnnN)", out, off, count, last);
}

/* events() over a list of (frame, ts, linktype) records: one call per batch instead of one per
 * frame. Frames C cannot decide go to fallback(frame, ts, linktype), the Python path, in order. */
static PyObject *fp_events_many(FastPath *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || !PyList_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "events_many(records: list, fallback)");
        return NULL;
    }
    PyObject *records = args[0], *fallback = args[1], *out = PyList_New(0);
    for (Py_ssize_t i = 0; out != NULL && i < PyList_GET_SIZE(records); i++) {
        PyObject *rec = PyList_GET_ITEM(records, i);
        long long linktype;
        if (!PyTuple_Check(rec) || PyTuple_GET_SIZE(rec) != 3 || !PyBytes_Check(PyTuple_GET_ITEM(rec, 0))) {
            PyErr_SetString(PyExc_TypeError, "records are (frame: bytes, ts, linktype) tuples");
            Py_CLEAR(out);
            break;
        }
        if (linktype_arg(PyTuple_GET_ITEM(rec, 2), &linktype) < 0) {
            Py_CLEAR(out);
            break;
        }
        Py_INCREF(rec); /* the record stays alive even if the fallback changes the list */
        PyObject *frame = PyTuple_GET_ITEM(rec, 0);
        PyObject *evs = frame_events(self, (const uint8_t *)PyBytes_AS_STRING(frame), PyBytes_GET_SIZE(frame),
                                     PyTuple_GET_ITEM(rec, 1), linktype);
        if (evs == Py_None) {
            Py_DECREF(evs);
            evs = PyObject_Vectorcall(fallback, &PyTuple_GET_ITEM(rec, 0), 3, NULL);
        }
        Py_DECREF(rec);
        if (evs == NULL || extend_events(out, evs) < 0) Py_CLEAR(out);
        Py_XDECREF(evs);
    }
    if (pend_flush(self) < 0) Py_CLEAR(out);
    return out;
}

static int fp_init(FastPath *self, PyObject *args, PyObject *kwds) {
    static char *kw[] = {"portmap", "counters", "entries", "uas", "partials", "hasher", "rotation_s", "raw",
                         "ignored", "event_type", "params", "rules_on", "ua_class", "hold", "partial_ttl_s", "flows",
                         "ooo", "max_flows", "flow_ttl_s", NULL};
    PyObject *portmap, *counters, *entries, *uas, *partials, *hasher, *ignored, *event_type, *params, *ua_class, *hold;
    PyObject *flows, *ooo;
    Py_ssize_t max_flows;
    double rotation, ttl, flow_ttl;
    int raw, rules_on;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "SO!O!O!O!OdpOOO!pOOdO!O!nd:FastPath", kw, &portmap, &PyDict_Type,
                                     &counters, &PyDict_Type, &entries, &PyDict_Type, &uas, &PyDict_Type, &partials,
                                     &hasher, &rotation, &raw, &ignored, &event_type, &PyDict_Type, &params,
                                     &rules_on, &ua_class, &hold, &ttl, &PyDict_Type, &flows, &PyDict_Type, &ooo,
                                     &max_flows, &flow_ttl))
        return -1;
    if (PyBytes_GET_SIZE(portmap) != 65536) {
        PyErr_SetString(PyExc_ValueError, "portmap must be 65536 bytes");
        return -1;
    }
    if (!PyType_Check(event_type) || !PyType_IsSubtype((PyTypeObject *)event_type, &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "event_type must be a tuple subclass (RequestEvent)");
        return -1;
    }
    if (ignored != Py_None && !PyAnySet_Check(ignored)) {
        PyErr_SetString(PyExc_TypeError, "ignored must be a set, a frozenset or None");
        return -1;
    }
    if (!(rotation > 0)) {
        PyErr_SetString(PyExc_ValueError, "rotation_s must be positive");
        return -1;
    }
    PyObject **slots[] = {&self->portmap, &self->counters, &self->entries, &self->uas, &self->partials,
                          &self->hasher, &self->ignored, &self->event_type, &self->params, &self->ua_class,
                          &self->hold, &self->flows, &self->ooo};
    PyObject *vals[] = {portmap, counters, entries, uas, partials, hasher, ignored, event_type, params, ua_class, hold,
                        flows, ooo};
    for (int i = 0; i < 13; i++) {
        Py_INCREF(vals[i]);
        Py_XSETREF(*slots[i], vals[i]);
    }
    PyObject **memos[] = {&self->fentries, &self->fuas, &self->fclients, &self->fhosts, &self->fparams};
    for (int i = 0; i < 5; i++) {
        PyObject *d = PyDict_New();
        if (d == NULL) return -1;
        Py_XSETREF(*memos[i], d);
    }
    int packed = pack_ignored(self, ignored);
    if (packed < 0) return -1;
    self->ign_packed = packed;
    self->fc_valid = 0;
    self->ttl = ttl;
    self->max_flows = max_flows;
    self->flow_ttl = flow_ttl;
    self->rotation = rotation;
    self->raw = raw;
    self->rules_on = rules_on;
    return 0;
}

static int fp_traverse(FastPath *self, visitproc visit, void *arg) {
    Py_VISIT(self->portmap); Py_VISIT(self->counters); Py_VISIT(self->entries); Py_VISIT(self->uas);
    Py_VISIT(self->partials); Py_VISIT(self->hasher); Py_VISIT(self->ignored); Py_VISIT(self->event_type);
    Py_VISIT(self->params); Py_VISIT(self->ua_class); Py_VISIT(self->fentries); Py_VISIT(self->fuas);
    Py_VISIT(self->fclients); Py_VISIT(self->hold); Py_VISIT(self->fhosts); Py_VISIT(self->fparams);
    Py_VISIT(self->flows); Py_VISIT(self->ooo);
    for (int i = 0; i < self->npend; i++) Py_VISIT(self->pend_key[i]);
    return 0;
}

static int fp_clear(FastPath *self) {
    Py_CLEAR(self->portmap); Py_CLEAR(self->counters); Py_CLEAR(self->entries); Py_CLEAR(self->uas);
    Py_CLEAR(self->partials); Py_CLEAR(self->hasher); Py_CLEAR(self->ignored); Py_CLEAR(self->event_type);
    Py_CLEAR(self->params); Py_CLEAR(self->ua_class); Py_CLEAR(self->fentries); Py_CLEAR(self->fuas);
    Py_CLEAR(self->fclients); Py_CLEAR(self->hold); Py_CLEAR(self->fhosts); Py_CLEAR(self->fparams);
    Py_CLEAR(self->flows); Py_CLEAR(self->ooo);
    for (int i = 0; i < self->npend; i++) Py_CLEAR(self->pend_key[i]);
    self->npend = 0;
    return 0;
}

static void fp_dealloc(FastPath *self) {
    PyObject_GC_UnTrack(self);
    fp_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef fp_methods[] = {
    {"events", (PyCFunction)(void (*)(void))fp_events, METH_FASTCALL,
     "events(frame, ts, linktype): the frame's events (state updated), or None: run the Python path."},
    {"pcap_events", (PyCFunction)(void (*)(void))fp_pcap_events, METH_FASTCALL,
     "pcap_events(buf, offset, big_endian, linktype, limit, fallback): events of pcap records."},
    {"events_many", (PyCFunction)(void (*)(void))fp_events_many, METH_FASTCALL,
     "events_many(records, fallback): the events of a list of (frame, ts, linktype), in order."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject FastPathType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "sniffer._fastpath.FastPath",
    .tp_basicsize = sizeof(FastPath),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "FrameParser.events for frames decided by memo hits alone (see the C source).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)fp_init,
    .tp_dealloc = (destructor)fp_dealloc,
    .tp_traverse = (traverseproc)fp_traverse,
    .tp_clear = (inquiry)fp_clear,
    .tp_methods = fp_methods,
};

static PyMethodDef methods[] = {
    {"parse_frame", py_parse_frame, METH_VARARGS, "parse.parse_frame, compiled: a segment tuple or a reason."},
    {"parse_requests", py_parse_requests, METH_O, "parse.parse_requests, compiled."},
    {"scan", (PyCFunction)(void (*)(void))py_scan, METH_FASTCALL,
     "One frame: a 'drop.<reason>' counter name, or (src, dst, sport, dport, seq, payload, kind, parsed)."},
    {"pcap_records", py_pcap_records, METH_VARARGS, "Classic pcap records from a whole-file buffer."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "sniffer._fastpath",
                                    "Compiled fast path of sniffer/parse.py (see the C source).", -1, methods,
                                    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__fastpath(void) {
    for (int i = 0; i < R_COUNT; i++) {
        reason_bare[i] = PyUnicode_InternFromString(reason_names[i]);
        reason_drop[i] = PyUnicode_FromFormat("drop.%s", reason_names[i]);
        if (reason_bare[i] == NULL || reason_drop[i] == NULL) return NULL;
        PyUnicode_InternInPlace(&reason_drop[i]);
    }
    for (int i = 0; i < N_METHODS; i++)
        if ((method_str[i] = PyUnicode_InternFromString(method_names[i])) == NULL) return NULL;
    for (int i = 0; i < 3; i++)
        if ((kind_obj[i] = PyLong_FromLong(i)) == NULL) return NULL;
    empty_bytes = PyBytes_FromStringAndSize(NULL, 0);
    empty_str = PyUnicode_New(0, 0);
    if (empty_bytes == NULL || empty_str == NULL) return NULL;
    const char *names[] = {"packets", "requests", "drop.method", "drop.ignored-address", "_epoch", "_memo",
                           "drop.bad-url", "client_id", "TLS", "tls-hosts", "drop.not-client-hello", "drop.bad-sni"};
    PyObject **objs[] = {&s_packets, &s_requests, &s_method, &s_ignored_address, &s_epoch, &s_memo, &s_bad_url,
                         &s_client_id, &s_tls, &s_tls_hosts, &s_not_hello, &s_bad_sni};
    for (int i = 0; i < 12; i++)
        if ((*objs[i] = PyUnicode_InternFromString(names[i])) == NULL) return NULL;
    const char *more[] = {"next_seq", "ts", "data", "reassembled", "drop.reassembly-gap", "drop.retransmission"};
    PyObject **more_objs[] = {&s_next_seq, &s_ts, &s_data, &s_reassembled, &s_gap, &s_retrans};
    for (int i = 0; i < 6; i++)
        if ((*more_objs[i] = PyUnicode_InternFromString(more[i])) == NULL) return NULL;
    if (PyType_Ready(&FastPathType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    Py_INCREF(&FastPathType);
    if (PyModule_AddObject(m, "FastPath", (PyObject *)&FastPathType) < 0) return NULL;
    if (PyModule_AddIntConstant(m, "MAX_HEAD", MAX_HEAD) < 0) return NULL;
    return m;
}
