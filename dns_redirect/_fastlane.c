/* dns_redirect._fastlane: the DNS server's compiled UDP lane.
 *
 * Drains the UDP socket with recvmmsg() in batches and answers, with sendmmsg(), the queries
 * whose answer the Python side already decided and taught the lane (Lane.learn): a table from
 * the query after its id, with the question name lower-cased, to the full answer bytes. The
 * answer sent is the query's id + the template's header + the query's own question bytes (0x20
 * case kept) + the rest of the template: byte for byte what the Python fast path would send.
 *
 * Before the table, every datagram passes the campus ACL (non-campus: handed to Python, which
 * answers REFUSED) and a per-client token bucket (over the limit: dropped here). Everything the
 * lane does not know (new or malformed questions, non-campus sources, expired templates) is
 * returned to Python unchanged, with its source address, in arrival order.
 *
 * The Python side owns invalidation: it calls clear() whenever the index version or the edge's
 * health changes, and gives forwarded answers a deadline (their TTL age changes every second).
 */

#define _GNU_SOURCE
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#define MAX_BATCH 64
#define RX_SIZE 65536   /* a whole UDP payload: what Python receives is never cut */
#define DNS_HEADER 12
#define BUCKET_SLOTS (1u << 17)  /* open addressing, power of two */
#define BUCKET_PROBES 8

typedef struct {
    int is_v4;             /* matches IPv4 (and IPv4-mapped) clients only, like ipaddress does */
    uint8_t net[16];       /* IPv4 as ::ffff:a.b.c.d */
    int prefix;            /* in 128-bit terms */
} AclNet;

typedef struct {
    uint8_t addr[16];
    uint8_t used;
    double tokens;
    double last;
} Bucket;

typedef struct {
    PyObject_HEAD
    int fd;
    int batch;
    Py_ssize_t max_entries;
    PyObject *table;       /* dict: normalized query (bytes) -> (answer bytes, deadline float, kind int) */
    AclNet *nets;
    Py_ssize_t n_nets;
    double rate, burst;    /* rate <= 0: unlimited */
    Bucket *buckets;
    uint8_t *rx;           /* MAX_BATCH * RX_SIZE */
    uint8_t *keybuf;       /* RX_SIZE: one normalized query */
    struct mmsghdr msgs[MAX_BATCH];
    struct iovec rx_iov[MAX_BATCH];
    struct sockaddr_storage peers[MAX_BATCH];
    int busy;              /* inside drain(): the buffers above are in use (GIL released around syscalls) */
    /* counters, read by Python after each drain */
    unsigned long long steered, cache_hits, limited, send_dropped;
} Lane;

static double now_monotonic(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);  /* the clock time.monotonic() reads on Linux */
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* The client address in 16-byte form; *is_v4 for IPv4 and IPv4-mapped IPv6. 0 if unknown family. */
static int client_key(const struct sockaddr_storage *ss, uint8_t out[16], int *is_v4) {
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)ss;
        memset(out, 0, 10);
        out[10] = out[11] = 0xff;
        memcpy(out + 12, &sin->sin_addr, 4);
        *is_v4 = 1;
        return 1;
    }
    if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)ss;
        memcpy(out, &sin6->sin6_addr, 16);
        static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
        *is_v4 = memcmp(out, mapped, 12) == 0;
        return 1;
    }
    return 0;
}

static int prefix_match(const uint8_t *a, const uint8_t *b, int prefix) {
    int whole = prefix / 8, rest = prefix % 8;
    if (memcmp(a, b, (size_t)whole) != 0)
        return 0;
    if (rest == 0)
        return 1;
    uint8_t mask = (uint8_t)(0xff << (8 - rest));
    return (a[whole] & mask) == (b[whole] & mask);
}

static int acl_allowed(const Lane *self, const uint8_t key[16], int is_v4) {
    for (Py_ssize_t i = 0; i < self->n_nets; i++) {
        const AclNet *n = &self->nets[i];
        if (n->is_v4 == is_v4 && prefix_match(key, n->net, n->prefix))
            return 1;
    }
    return 0;
}

static uint32_t addr_hash(const uint8_t a[16]) {
    uint32_t h = 2166136261u;  /* FNV-1a */
    for (int i = 0; i < 16; i++) {
        h ^= a[i];
        h *= 16777619u;
    }
    return h;
}

/* The same token bucket as policy.RateLimiter; a full neighbourhood forgets its stalest client. */
static int bucket_allow(Lane *self, const uint8_t key[16], double now) {
    if (self->rate <= 0)
        return 1;
    uint32_t h = addr_hash(key);
    Bucket *slot = NULL, *stalest = NULL;
    for (uint32_t i = 0; i < BUCKET_PROBES; i++) {
        Bucket *b = &self->buckets[(h + i) & (BUCKET_SLOTS - 1)];
        if (b->used && memcmp(b->addr, key, 16) == 0) {
            slot = b;
            break;
        }
        if (!b->used) {
            if (stalest == NULL || stalest->used)
                stalest = b;
        } else if (stalest == NULL || (stalest->used && b->last < stalest->last)) {
            stalest = b;
        }
    }
    if (slot == NULL) {
        slot = stalest;
        memcpy(slot->addr, key, 16);
        slot->used = 1;
        slot->tokens = self->burst;
        slot->last = now;
    }
    double tokens = slot->tokens + (now - slot->last) * self->rate;
    if (tokens > self->burst)
        tokens = self->burst;
    int ok = tokens >= 1.0;
    if (ok)
        tokens -= 1.0;
    slot->tokens = tokens;
    slot->last = now;
    return ok;
}

/* Copy the query after its id into out, question name lower-cased; *qend = just past the
 * question. 0 when there is no plain question (no table entry can match it). */
static int normalize(const uint8_t *raw, Py_ssize_t n, uint8_t *out, Py_ssize_t *qend) {
    if (n < DNS_HEADER + 5)
        return 0;
    Py_ssize_t pos = DNS_HEADER;
    for (;;) {
        if (pos >= n)
            return 0;
        uint8_t len = raw[pos];
        if (len == 0) {
            pos++;
            break;
        }
        if (len > 63)  /* a pointer or reserved bits: never in a learned query */
            return 0;
        pos += 1 + len;
    }
    if (pos + 4 > n)
        return 0;
    memcpy(out, raw + 2, (size_t)(n - 2));
    for (Py_ssize_t i = DNS_HEADER; i < pos; i++) {  /* length bytes are <= 63, below 'A' */
        uint8_t c = out[i - 2];
        if (c >= 'A' && c <= 'Z')
            out[i - 2] = (uint8_t)(c + 32);
    }
    *qend = pos + 4;
    return 1;
}

static PyObject *peer_tuple(const struct sockaddr_storage *ss) {
    char host[INET6_ADDRSTRLEN];
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)ss;
        inet_ntop(AF_INET, &sin->sin_addr, host, sizeof host);
        return Py_BuildValue("(si)", host, (int)ntohs(sin->sin_port));
    }
    if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)ss;
        inet_ntop(AF_INET6, &sin6->sin6_addr, host, sizeof host);
        return Py_BuildValue("(siII)", host, (int)ntohs(sin6->sin6_port), (unsigned)ntohl(sin6->sin6_flowinfo),
                             (unsigned)sin6->sin6_scope_id);
    }
    return Py_BuildValue("(si)", "0.0.0.0", 0);
}

static int Lane_init(Lane *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"fd", "networks", "rate", "burst", "batch", "max_entries", NULL};
    int fd, batch = MAX_BATCH;
    PyObject *networks;
    double rate, burst;
    Py_ssize_t max_entries = 50000;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "iOdd|in", kwlist, &fd, &networks, &rate, &burst, &batch,
                                     &max_entries))
        return -1;
    if (batch < 1 || batch > MAX_BATCH) {
        PyErr_Format(PyExc_ValueError, "batch must be in 1..%d", MAX_BATCH);
        return -1;
    }
    PyObject *seq = PySequence_Fast(networks, "networks must be a sequence of (is_v4, net16, prefix)");
    if (seq == NULL)
        return -1;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(seq);
    AclNet *nets = PyMem_Calloc((size_t)(count ? count : 1), sizeof(AclNet));
    if (nets == NULL) {
        Py_DECREF(seq);
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        int is_v4, prefix;
        const char *net;
        Py_ssize_t len;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(seq, i), "py#i", &is_v4, &net, &len, &prefix)) {
            Py_DECREF(seq);
            PyMem_Free(nets);
            return -1;
        }
        if (len != 16 || prefix < 0 || prefix > 128) {
            Py_DECREF(seq);
            PyMem_Free(nets);
            PyErr_SetString(PyExc_ValueError, "each network needs 16 address bytes and a prefix in 0..128");
            return -1;
        }
        nets[i].is_v4 = is_v4;
        memcpy(nets[i].net, net, 16);
        nets[i].prefix = prefix;
    }
    Py_DECREF(seq);
    PyMem_Free(self->nets);
    self->nets = nets;
    self->n_nets = count;
    if (self->buckets == NULL)
        self->buckets = PyMem_Calloc(BUCKET_SLOTS, sizeof(Bucket));
    if (self->rx == NULL)
        self->rx = PyMem_Malloc((size_t)MAX_BATCH * RX_SIZE);
    if (self->keybuf == NULL)
        self->keybuf = PyMem_Malloc(RX_SIZE);
    if (self->table == NULL)
        self->table = PyDict_New();
    if (self->buckets == NULL || self->rx == NULL || self->keybuf == NULL || self->table == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    self->fd = fd;
    self->batch = batch;
    self->max_entries = max_entries;
    self->rate = rate;
    self->burst = burst;
    for (int i = 0; i < MAX_BATCH; i++) {
        self->rx_iov[i].iov_base = self->rx + (size_t)i * RX_SIZE;
        self->rx_iov[i].iov_len = RX_SIZE;
    }
    return 0;
}

static void Lane_dealloc(Lane *self) {
    Py_XDECREF(self->table);
    PyMem_Free(self->nets);
    PyMem_Free(self->buckets);
    PyMem_Free(self->rx);
    PyMem_Free(self->keybuf);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Send what is ready; a full socket buffer drops the rest, as it would drop any UDP answer. */
static void flush(Lane *self, struct mmsghdr *out, int count) {
    int sent = 0;
    while (sent < count) {
        int r;
        Py_BEGIN_ALLOW_THREADS
        r = sendmmsg(self->fd, out + sent, (unsigned)(count - sent), MSG_DONTWAIT);
        Py_END_ALLOW_THREADS
        if (r < 0) {
            if (errno == EINTR)
                continue;
            /* EAGAIN or a per-destination error (EPERM from a firewall, ...): skip one */
            self->send_dropped++;
            sent++;
            continue;
        }
        sent += r;
    }
}

static PyObject *Lane_drain(Lane *self, PyObject *args) {
    int rounds = 4;
    if (!PyArg_ParseTuple(args, "|i", &rounds))
        return NULL;
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "Lane.drain() is already running in another thread");
        return NULL;
    }
    PyObject *slow = PyList_New(0);
    if (slow == NULL)
        return NULL;
    self->busy = 1;
    uint8_t *keybuf = self->keybuf;
    struct mmsghdr out[MAX_BATCH];
    struct iovec out_iov[MAX_BATCH][4];
    PyObject *held[MAX_BATCH];  /* answers referenced by out_iov until sent */

    for (int round = 0; round < rounds; round++) {
        for (int i = 0; i < self->batch; i++) {
            memset(&self->msgs[i].msg_hdr, 0, sizeof(struct msghdr));
            self->msgs[i].msg_hdr.msg_name = &self->peers[i];
            self->msgs[i].msg_hdr.msg_namelen = sizeof(struct sockaddr_storage);
            self->msgs[i].msg_hdr.msg_iov = &self->rx_iov[i];
            self->msgs[i].msg_hdr.msg_iovlen = 1;
        }
        int got;
        Py_BEGIN_ALLOW_THREADS
        got = recvmmsg(self->fd, self->msgs, (unsigned)self->batch, MSG_DONTWAIT, NULL);
        Py_END_ALLOW_THREADS
        if (got <= 0)
            break;  /* EAGAIN (drained) or an error the Python path would not act on either */
        double now = now_monotonic();
        int n_out = 0;
        for (int i = 0; i < got; i++) {
            const uint8_t *raw = self->rx_iov[i].iov_base;
            Py_ssize_t n = (Py_ssize_t)self->msgs[i].msg_len;
            uint8_t ckey[16];
            int is_v4 = 0, known = client_key(&self->peers[i], ckey, &is_v4);
            int answered = 0;
            if (known && acl_allowed(self, ckey, is_v4)) {
                if (!bucket_allow(self, ckey, now)) {
                    self->limited++;
                    continue;  /* dropped: a spoofed-source flood gets nothing to reflect */
                }
                Py_ssize_t qend;
                if (normalize(raw, n, keybuf, &qend)) {
                    PyObject *key = PyBytes_FromStringAndSize((const char *)keybuf, n - 2);
                    if (key == NULL)
                        goto fail;
                    PyObject *entry = PyDict_GetItemWithError(self->table, key);  /* borrowed */
                    Py_DECREF(key);
                    if (entry == NULL && PyErr_Occurred())
                        goto fail;
                    if (entry != NULL && PyFloat_AS_DOUBLE(PyTuple_GET_ITEM(entry, 1)) > now) {
                        PyObject *answer = PyTuple_GET_ITEM(entry, 0);
                        const char *a = PyBytes_AS_STRING(answer);
                        Py_ssize_t alen = PyBytes_GET_SIZE(answer);
                        struct iovec *iov = out_iov[n_out];
                        iov[0].iov_base = (void *)raw;  /* the client's id */
                        iov[0].iov_len = 2;
                        iov[1].iov_base = (void *)(a + 2);  /* flags and counts */
                        iov[1].iov_len = DNS_HEADER - 2;
                        iov[2].iov_base = (void *)(raw + DNS_HEADER);  /* the client's question, its case */
                        iov[2].iov_len = (size_t)(qend - DNS_HEADER);
                        iov[3].iov_base = (void *)(a + qend);
                        iov[3].iov_len = (size_t)(alen - qend);
                        memset(&out[n_out].msg_hdr, 0, sizeof(struct msghdr));
                        out[n_out].msg_hdr.msg_name = &self->peers[i];
                        out[n_out].msg_hdr.msg_namelen = self->msgs[i].msg_hdr.msg_namelen;
                        out[n_out].msg_hdr.msg_iov = iov;
                        out[n_out].msg_hdr.msg_iovlen = 4;
                        Py_INCREF(answer);
                        held[n_out++] = answer;
                        if (PyLong_AsLong(PyTuple_GET_ITEM(entry, 2)) == 1)
                            self->cache_hits++;
                        else
                            self->steered++;
                        answered = 1;
                    }
                }
            }
            if (!answered) {
                PyObject *item = Py_BuildValue("(y#N)", (const char *)raw, n, peer_tuple(&self->peers[i]));
                if (item == NULL || PyList_Append(slow, item) < 0) {
                    Py_XDECREF(item);
                    goto fail;
                }
                Py_DECREF(item);
            }
            continue;
        fail:
            flush(self, out, n_out);
            for (int k = 0; k < n_out; k++)
                Py_DECREF(held[k]);
            Py_DECREF(slow);
            self->busy = 0;
            return NULL;
        }
        flush(self, out, n_out);
        for (int k = 0; k < n_out; k++)
            Py_DECREF(held[k]);
        if (got < self->batch)
            break;  /* the socket is empty: back to the event loop */
    }
    self->busy = 0;
    return slow;
}

static PyObject *Lane_learn(Lane *self, PyObject *args) {
    const char *query, *answer_buf;
    Py_ssize_t qlen, alen;
    PyObject *answer;
    double deadline;
    int kind;
    if (!PyArg_ParseTuple(args, "y#Sdi", &query, &qlen, &answer, &deadline, &kind))
        return NULL;
    answer_buf = PyBytes_AS_STRING(answer);
    alen = PyBytes_GET_SIZE(answer);
    if (qlen > RX_SIZE)
        Py_RETURN_FALSE;
    uint8_t *keybuf = PyMem_Malloc((size_t)qlen);
    if (keybuf == NULL)
        return PyErr_NoMemory();
    Py_ssize_t qend;
    int ok = normalize((const uint8_t *)query, qlen, keybuf, &qend);
    /* the answer must carry this very question at the same place: the splice relies on it */
    if (ok && alen < qend)
        ok = 0;
    if (ok) {
        for (Py_ssize_t i = DNS_HEADER; i < qend; i++) {
            uint8_t a = (uint8_t)answer_buf[i], q = (uint8_t)query[i];
            if (i < qend - 4 && a >= 'A' && a <= 'Z')  /* the name's case only, not type and class */
                a = (uint8_t)(a + 32);
            if (i < qend - 4 && q >= 'A' && q <= 'Z')
                q = (uint8_t)(q + 32);
            if (a != q) {
                ok = 0;
                break;
            }
        }
    }
    if (!ok) {
        PyMem_Free(keybuf);
        Py_RETURN_FALSE;
    }
    PyObject *key = PyBytes_FromStringAndSize((const char *)keybuf, qlen - 2);
    PyMem_Free(keybuf);
    if (key == NULL)
        return NULL;
    if (PyDict_GET_SIZE(self->table) >= self->max_entries)
        PyDict_Clear(self->table);
    PyObject *entry = Py_BuildValue("(Odi)", answer, deadline, kind);
    int r = entry == NULL ? -1 : PyDict_SetItem(self->table, key, entry);
    Py_XDECREF(entry);
    Py_DECREF(key);
    if (r < 0)
        return NULL;
    Py_RETURN_TRUE;
}

/* The UDP clients' bucket for a client known by its address text (a TCP peer): one bucket per
 * client whichever transport it uses, as with the Python path's single RateLimiter. */
static PyObject *Lane_allow(Lane *self, PyObject *args) {
    const char *text;
    if (!PyArg_ParseTuple(args, "s", &text))
        return NULL;
    char host[INET6_ADDRSTRLEN + 1];
    size_t len = strcspn(text, "%");  /* a scope id does not make another client */
    if (len >= sizeof host) {
        PyErr_Format(PyExc_ValueError, "not an IP address: %s", text);
        return NULL;
    }
    memcpy(host, text, len);
    host[len] = 0;
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    if (inet_pton(AF_INET, host, &((struct sockaddr_in *)&ss)->sin_addr) == 1) {
        ss.ss_family = AF_INET;
    } else if (inet_pton(AF_INET6, host, &((struct sockaddr_in6 *)&ss)->sin6_addr) == 1) {
        ss.ss_family = AF_INET6;
    } else {
        PyErr_Format(PyExc_ValueError, "not an IP address: %s", text);
        return NULL;
    }
    uint8_t key[16];
    int is_v4;
    client_key(&ss, key, &is_v4);
    return PyBool_FromLong(bucket_allow(self, key, now_monotonic()));
}

static PyObject *Lane_clear(Lane *self, PyObject *Py_UNUSED(ignored)) {
    PyDict_Clear(self->table);
    Py_RETURN_NONE;
}

static PyObject *Lane_take_counters(Lane *self, PyObject *Py_UNUSED(ignored)) {
    PyObject *r = Py_BuildValue("(KKKK)", self->steered, self->cache_hits, self->limited, self->send_dropped);
    self->steered = self->cache_hits = self->limited = self->send_dropped = 0;
    return r;
}

static Py_ssize_t Lane_len(Lane *self) {
    return PyDict_GET_SIZE(self->table);
}

static PyMethodDef Lane_methods[] = {
    {"drain", (PyCFunction)Lane_drain, METH_VARARGS,
     "drain(rounds=4) -> list of (datagram, address) for the Python path; answers known ones"},
    {"learn", (PyCFunction)Lane_learn, METH_VARARGS,
     "learn(query, answer, deadline, kind) -> bool: answer this question (any id, any case) until deadline"},
    {"allow", (PyCFunction)Lane_allow, METH_VARARGS,
     "allow(address) -> bool: take a token from this client's bucket (the one its UDP queries use)"},
    {"clear", (PyCFunction)Lane_clear, METH_NOARGS, "forget every learned answer"},
    {"take_counters", (PyCFunction)Lane_take_counters, METH_NOARGS,
     "(steered, cache_hits, rate_limited, send_dropped) since the last call"},
    {NULL, NULL, 0, NULL},
};

static PySequenceMethods Lane_as_sequence = {.sq_length = (lenfunc)Lane_len};

static PyTypeObject LaneType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "dns_redirect._fastlane.Lane",
    .tp_basicsize = sizeof(Lane),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The compiled UDP lane of one socket: ACL, rate limit, learned answers, recvmmsg/sendmmsg.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Lane_init,
    .tp_dealloc = (destructor)Lane_dealloc,
    .tp_methods = Lane_methods,
    .tp_as_sequence = &Lane_as_sequence,
};

static struct PyModuleDef fastlane_module = {
    PyModuleDef_HEAD_INIT, "_fastlane", "The DNS server's compiled UDP lane (recvmmsg/sendmmsg).", -1, NULL,
};

PyMODINIT_FUNC PyInit__fastlane(void) {
    if (PyType_Ready(&LaneType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&fastlane_module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&LaneType);
    if (PyModule_AddObject(m, "Lane", (PyObject *)&LaneType) < 0) {
        Py_DECREF(&LaneType);
        Py_DECREF(m);
        return NULL;
    }
    if (PyModule_AddIntConstant(m, "MAX_BATCH", MAX_BATCH) < 0 || PyModule_AddIntConstant(m, "KIND_STEERED", 0) < 0 ||
        PyModule_AddIntConstant(m, "KIND_CACHE_HIT", 1) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
