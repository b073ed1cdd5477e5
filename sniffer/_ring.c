/* sniffer._ring: PACKET_MMAP (TPACKET_V3) receive ring on an AF_PACKET socket.
 *
 * The kernel writes frames into blocks of a ring shared with this process; one read() hands a
 * whole block (many frames) to Python instead of one recvfrom() per frame. The socket keeps its
 * BPF filter and binding (sniffer/capture.py's LiveCapture opens it); the ring only replaces how
 * frames are taken off it.
 *
 *   Ring(fd, block_size=1 MiB, block_nr=16, retire_ms=20, outgoing=False)
 *   .read(timeout_ms) -> [(frame, ts, 1)]   frames of the next filled block; [] on timeout
 *   .close()
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <linux/if_packet.h>
#include <poll.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>

#ifndef TPACKET3_HDRLEN
#error "TPACKET_V3 headers needed (Linux >= 3.2)"
#endif

typedef struct {
    PyObject_HEAD
    int fd;
    uint8_t *map;
    size_t map_len;
    unsigned block_size, block_nr, cur;
    int outgoing;
    PyObject *linktype;
} Ring;

static int ring_init(Ring *self, PyObject *args, PyObject *kwds) {
    static char *kw[] = {"fd", "block_size", "block_nr", "retire_ms", "outgoing", NULL};
    int fd;
    unsigned block_size = 1u << 20, block_nr = 16, retire_ms = 20;
    int outgoing = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "i|IIIp:Ring", kw, &fd, &block_size, &block_nr, &retire_ms,
                                     &outgoing))
        return -1;
    if (self->map != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Ring is already open");
        return -1;
    }
    if (block_size < 4096 || block_size % 4096 || block_nr < 2) {
        PyErr_SetString(PyExc_ValueError, "block_size must be a multiple of 4096, block_nr at least 2");
        return -1;
    }
    int version = TPACKET_V3;
    if (setsockopt(fd, SOL_PACKET, PACKET_VERSION, &version, sizeof version) < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    struct tpacket_req3 req;
    memset(&req, 0, sizeof req);
    req.tp_block_size = block_size;
    req.tp_block_nr = block_nr;
    req.tp_frame_size = 2048; /* only a hint for V3: frames are packed into the block */
    req.tp_frame_nr = (block_size / 2048) * block_nr;
    req.tp_retire_blk_tov = retire_ms; /* a block is handed over when full or this old */
    if (setsockopt(fd, SOL_PACKET, PACKET_RX_RING, &req, sizeof req) < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    size_t len = (size_t)block_size * block_nr;
    void *map = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (map == MAP_FAILED) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    self->fd = fd;
    self->map = map;
    self->map_len = len;
    self->block_size = block_size;
    self->block_nr = block_nr;
    self->cur = 0;
    self->outgoing = outgoing;
    Py_XSETREF(self->linktype, PyLong_FromLong(1)); /* Ethernet, as LiveCapture's frames */
    return self->linktype == NULL ? -1 : 0;
}

static PyObject *ring_read(Ring *self, PyObject *arg) {
    int timeout = (int)PyLong_AsLong(arg);
    if (timeout == -1 && PyErr_Occurred()) return NULL;
    if (self->map == NULL) {
        PyErr_SetString(PyExc_ValueError, "Ring is closed");
        return NULL;
    }
    struct tpacket_block_desc *bd = (struct tpacket_block_desc *)(self->map + (size_t)self->cur * self->block_size);
    if (!(__atomic_load_n(&bd->hdr.bh1.block_status, __ATOMIC_ACQUIRE) & TP_STATUS_USER)) {
        struct pollfd pfd = {.fd = self->fd, .events = POLLIN | POLLERR, .revents = 0};
        int rc;
        Py_BEGIN_ALLOW_THREADS
        rc = poll(&pfd, 1, timeout);
        Py_END_ALLOW_THREADS
        if (rc < 0 && errno != EINTR) return PyErr_SetFromErrno(PyExc_OSError);
        if (rc < 0 && PyErr_CheckSignals() < 0) return NULL;
        if (!(__atomic_load_n(&bd->hdr.bh1.block_status, __ATOMIC_ACQUIRE) & TP_STATUS_USER)) return PyList_New(0);
    }
    uint32_t n = bd->hdr.bh1.num_pkts;
    PyObject *out = PyList_New(0);
    const uint8_t *p = (const uint8_t *)bd + bd->hdr.bh1.offset_to_first_pkt;
    for (uint32_t i = 0; out != NULL && i < n; i++) {
        const struct tpacket3_hdr *h = (const struct tpacket3_hdr *)p;
        const struct sockaddr_ll *sll = (const struct sockaddr_ll *)(p + TPACKET_ALIGN(sizeof(struct tpacket3_hdr)));
        /* the host's own packets are skipped unless asked for, as LiveCapture.frames does */
        if (self->outgoing || sll->sll_pkttype != PACKET_OUTGOING) {
            double ts = (double)h->tp_sec + (double)h->tp_nsec / 1e9;
            PyObject *rec = Py_BuildValue("(y#dO)", (const char *)p + h->tp_mac, (Py_ssize_t)h->tp_snaplen, ts,
                                          self->linktype);
            if (rec == NULL || PyList_Append(out, rec) < 0) Py_CLEAR(out);
            Py_XDECREF(rec);
        }
        p += h->tp_next_offset;
    }
    /* give the block back to the kernel and move on */
    __atomic_store_n(&bd->hdr.bh1.block_status, TP_STATUS_KERNEL, __ATOMIC_RELEASE);
    self->cur = (self->cur + 1) % self->block_nr;
    return out;
}

static PyObject *ring_close(Ring *self, PyObject *unused) {
    (void)unused;
    if (self->map != NULL) {
        munmap(self->map, self->map_len);
        self->map = NULL;
    }
    Py_RETURN_NONE;
}

static void ring_dealloc(Ring *self) {
    if (self->map != NULL) munmap(self->map, self->map_len);
    Py_XDECREF(self->linktype);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef ring_methods[] = {
    {"read", (PyCFunction)ring_read, METH_O, "read(timeout_ms): frames of the next filled block, [] on timeout."},
    {"close", (PyCFunction)ring_close, METH_NOARGS, "Unmap the ring (the socket stays open)."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject RingType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "sniffer._ring.Ring",
    .tp_basicsize = sizeof(Ring),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A TPACKET_V3 receive ring on an AF_PACKET socket.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)ring_init,
    .tp_dealloc = (destructor)ring_dealloc,
    .tp_methods = ring_methods,
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "sniffer._ring",
                                    "PACKET_MMAP (TPACKET_V3) receive ring (see the C source).", -1, NULL,
                                    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__ring(void) {
    if (PyType_Ready(&RingType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    Py_INCREF(&RingType);
    if (PyModule_AddObject(m, "Ring", (PyObject *)&RingType) < 0) return NULL;
    return m;
}
