/* streams._fold: the compiled hot path of streams/heat.py and streams/windows.py.
 *
 * The Python code is the reference and the specification: these functions do exactly what
 * PartitionHeat.fold's counting part, Heat.add_many and the state encoding of take_dirty do,
 * on the same Python objects (the Heat/KeyHeat instances, their `panes` and `clients` dicts,
 * their HyperLogLog sketches), so everything else (rules.decide, stats, expiry, recovery,
 * replay) is unchanged. tests/streams/test_fold_compiled.py folds randomized inputs (late
 * events, grace, the cap -> sketch transition, expiry) through both and compares every result
 * and every state record.
 *
 *   fold(batch, too_old, step, spec, cap, keys, key_new, hosts, host_new, sizes,
 *        dirty_keys, dirty_hosts, touched_hosts, cache, watermark, unanswered, min_clients)
 *       -> (late, [(cache_key, KeyHeat, newest ts)])
 *     Counts one message's events (RequestEvent tuples or plain lists of >= 7 fields): events
 *     older than too_old are late (counted, dropped); every event counts in its host's heat
 *     (when hosts is not None), GET/HEAD events in their key's heat; a missing heat is made by
 *     key_new(name) / host_new(name) (PartitionHeat.key / .host: they load the slot). Returns
 *     the touched keys, in first-appearance order, that pass the cheap necessary conditions of
 *     PartitionHeat.fold (admitted and still fetching -> out; with min_clients >= 0, fewer
 *     exact clients than that -> out); the caller decides on them with rules.decide.
 *   fold_hosts(batches, step, spec, cap, hosts, host_new, dirty_hosts, touched_hosts) -> None
 *     PartitionHeat.apply_hosts: the host heat of many messages' events at once (fold is given
 *     hosts=None by PartitionHeat, which keeps the messages until their hosts are read).
 *   top_keys(keys, first, n) -> [(cache_key, requests)]
 *     PartitionHeat.top_keys: the n keys with the most requests in panes >= first.
 *   encode_slot(names, heats, cache, fallback, key_fields) -> bytes
 *     The JSON object {name: heat JSON, ...} of a state slot, names in iteration order. A heat's
 *     JSON is taken from cache (dict name -> bytes, may be None) or encoded here (exact mode) or
 *     by fallback(heat) (sketch mode: orjson.dumps(heat.to_json())), and stored in cache.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stdint.h>
#include <string.h>

static PyObject *s_panes, *s_sketches, *s_clients, *s_admitted, *s_url, *s_fetching, *s_to_sketches, *s_sketch, *s_add, *s_get;

/* Python's float floor division (Objects/floatobject.c _float_div_mod), so panes are the same */
static double py_floordiv(double vx, double wx) {
    double mod = fmod(vx, wx);
    double div = (vx - mod) / wx;
    if (mod) {
        if ((wx < 0) != (mod < 0)) {
            div -= 1.0;
        }
    }
    double floordiv;
    if (div) {
        floordiv = floor(div);
        if (div - floordiv > 0.5) floordiv += 1.0;
    } else {
        floordiv = copysign(0.0, vx / wx);
    }
    return floordiv;
}

static int is_ascii_str(PyObject *o, const char *lit, Py_ssize_t n) {
    if (!PyUnicode_Check(o) || PyUnicode_GET_LENGTH(o) != n || PyUnicode_KIND(o) != PyUnicode_1BYTE_KIND) return 0;
    return memcmp(PyUnicode_DATA(o), lit, (size_t)n) == 0;
}

/* the fields of one event: a tuple (RequestEvent) or a list, at least 7 long */
static PyObject **event_fields(PyObject *ev) {
    if (PyTuple_Check(ev)) {
        if (PyTuple_GET_SIZE(ev) >= 7) return &PyTuple_GET_ITEM(ev, 0);
    } else if (PyList_Check(ev)) {
        if (PyList_GET_SIZE(ev) >= 7) return &PyList_GET_ITEM(ev, 0);
    }
    PyErr_SetString(PyExc_TypeError, "a request event must be a tuple or list of at least 7 fields");
    return NULL;
}

static int event_ts(PyObject *o, double *out) {
    double v = PyFloat_Check(o) ? PyFloat_AS_DOUBLE(o) : PyFloat_AsDouble(o);
    if (v == -1.0 && PyErr_Occurred()) return -1;
    *out = v;
    return 0;
}

static int add_to_long(PyObject *list, Py_ssize_t i, long long n) {
    PyObject *old = PyList_GET_ITEM(list, i);
    PyObject *nv;
    if (PyLong_CheckExact(old)) {
        int overflow = 0;
        long long v = PyLong_AsLongLongAndOverflow(old, &overflow);
        if (v == -1 && PyErr_Occurred()) return -1;
        if (!overflow && !((n > 0 && v > LLONG_MAX - n) || (n < 0 && v < LLONG_MIN - n))) {
            nv = PyLong_FromLongLong(v + n);
        } else {
            PyObject *add = PyLong_FromLongLong(n);
            if (!add) return -1;
            nv = PyNumber_Add(old, add);
            Py_DECREF(add);
        }
    } else {
        PyObject *add = PyLong_FromLongLong(n);
        if (!add) return -1;
        nv = PyNumber_Add(old, add);
        Py_DECREF(add);
    }
    if (!nv) return -1;
    PyList_SET_ITEM(list, i, nv);
    Py_DECREF(old);
    return 0;
}

static int flush_counts(PyObject *counts, long long req, long long tls, long long nbytes, int with_bytes) {
    if (!counts) return 0;
    if (!PyList_Check(counts) || PyList_GET_SIZE(counts) < 3) {
        PyErr_SetString(PyExc_TypeError, "pane counts must be a list of 3 ints");
        return -1;
    }
    if (req && add_to_long(counts, 0, req) < 0) return -1;
    if (tls && add_to_long(counts, 1, tls) < 0) return -1;
    if (with_bytes && add_to_long(counts, 2, nbytes) < 0) return -1;
    return 0;
}

/* The last pane computed (for any heat: a message's events are mostly in one pane) and its
 * bounds [pane * step, (pane + 1) * step). They are exact doubles when step is an integer and
 * the products are below 2^53; Python's float ts // step is the floor of the exact quotient, so a
 * ts within them has that pane. Otherwise the bounds are empty (no ts is in them). */
static double pb_step = 0.0, pb_lo = INFINITY, pb_hi = -INFINITY;
static long long pb_pane = 0;

static void pane_bounds(long long pane, double step) {
    pb_step = step;
    pb_pane = pane;
    pb_lo = INFINITY;
    pb_hi = -INFINITY;
    if (step > 0 && step < 9007199254740992.0 && step == floor(step) && pane > -(1LL << 40) && pane < (1LL << 40)) {
        double lo = (double)pane * step, hi = (double)(pane + 1) * step;
        if (fabs(lo) < 9007199254740992.0 && fabs(hi) < 9007199254740992.0) {
            pb_lo = lo;
            pb_hi = hi;
        }
    }
}

/* Heat.add_many over the events at idx[0..n) of items: the newest ts */
static int add_many(PyObject *heat, PyObject **items, const Py_ssize_t *idx, Py_ssize_t n, double step,
                    long long nbytes, PyObject *spec, Py_ssize_t cap, double *newest_out) {
    int rc = -1;
    PyObject *panes = PyObject_GetAttr(heat, s_panes);
    PyObject *clients = NULL, *pane_obj = NULL, *counts = NULL, *sketch = NULL, *sketches = NULL, *sketch_add = NULL;
    if (!panes) return -1;
    if (!PyDict_Check(panes)) {
        PyErr_SetString(PyExc_TypeError, "heat.panes must be a dict");
        goto done;
    }
    clients = PyObject_GetAttr(heat, s_clients);
    if (!clients) goto done;
    if (clients == Py_None) {
        Py_CLEAR(clients);
    } else if (!PyDict_Check(clients)) {
        PyErr_SetString(PyExc_TypeError, "heat.clients must be a dict or None");
        goto done;
    }
    double newest = -INFINITY;
    int have_pane = 0, have_sketch = 0;
    long long cur = 0, sketch_pane = 0, acc_req = 0, acc_tls = 0, acc_bytes = 0;
    for (Py_ssize_t j = 0; j < n; j++) {
        PyObject **f = event_fields(items[idx[j]]);
        if (!f) goto done;
        double ts;
        if (event_ts(f[0], &ts) < 0) goto done;
        if (ts > newest) newest = ts;
        long long pane;
        if (step == pb_step && ts >= pb_lo && ts < pb_hi) {
            pane = pb_pane;  /* in the last pane's bounds: ts // step is that pane, without fmod */
        } else {
            double pd = py_floordiv(ts, step);
            if (!isfinite(pd) || pd > 9e18 || pd < -9e18) {
                PyErr_SetString(PyExc_ValueError, "request ts out of range");
                goto done;
            }
            pane = (long long)pd;
            pane_bounds(pane, step);
        }
        if (!have_pane || pane != cur) {
            if (flush_counts(counts, acc_req, acc_tls, acc_bytes, nbytes != 0) < 0) goto done;
            acc_req = acc_tls = acc_bytes = 0;
            Py_CLEAR(counts);
            Py_CLEAR(pane_obj);
            pane_obj = PyLong_FromLongLong(pane);
            if (!pane_obj) goto done;
            counts = PyDict_GetItemWithError(panes, pane_obj);
            if (counts) {
                Py_INCREF(counts);
            } else {
                if (PyErr_Occurred()) goto done;
                counts = PyList_New(3);
                if (counts) {
                    for (Py_ssize_t z = 0; z < 3; z++) PyList_SET_ITEM(counts, z, PyLong_FromLong(0));  /* small ints: never NULL */
                }
                if (!counts || PyDict_SetItem(panes, pane_obj, counts) < 0) goto done;
            }
            cur = pane;
            have_pane = 1;
        }
        acc_req += 1;
        if (is_ascii_str(f[2], "TLS", 3)) acc_tls += 1;
        acc_bytes += nbytes;
        PyObject *client = f[1];
        if (clients) {
            PyObject *seen = PyDict_GetItemWithError(clients, client);
            int newer;
            if (seen) {
                long long sp = PyLong_AsLongLong(seen);
                if (sp == -1 && PyErr_Occurred()) goto done;
                newer = sp < pane;
            } else {
                if (PyErr_Occurred()) goto done;
                newer = 1;
            }
            if (newer) {
                if (PyDict_SetItem(clients, client, pane_obj) < 0) goto done;
                if (PyDict_GET_SIZE(clients) > cap) {
                    PyObject *r = PyObject_CallMethodOneArg(heat, s_to_sketches, spec);
                    if (!r) goto done;
                    Py_DECREF(r);
                    Py_CLEAR(clients);
                }
            }
        } else {
            if (!have_sketch || pane != sketch_pane) {
                Py_CLEAR(sketch);
                /* the pane's sketch from heat.sketches; Heat._sketch (Python) only makes a new one */
                if (!sketches) {
                    sketches = PyObject_GetAttr(heat, s_sketches);
                    if (!sketches) goto done;
                }
                sketch = PyDict_Check(sketches) ? PyDict_GetItemWithError(sketches, pane_obj) : NULL;
                if (sketch) {
                    Py_INCREF(sketch);
                } else {
                    if (PyErr_Occurred()) goto done;
                    PyObject *args[3] = {heat, pane_obj, spec};
                    sketch = PyObject_VectorcallMethod(s_sketch, args, 3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
                    if (!sketch) goto done;
                }
                sketch_pane = pane;
                have_sketch = 1;
                Py_CLEAR(sketch_add);
                sketch_add = PyObject_GetAttr(sketch, s_add);  /* looked up once per pane run */
                if (!sketch_add) goto done;
            }
            PyObject *r = PyObject_Vectorcall(sketch_add, &client, 1, NULL);
            if (!r) goto done;
            Py_DECREF(r);
        }
    }
    if (flush_counts(counts, acc_req, acc_tls, acc_bytes, nbytes != 0) < 0) goto done;
    *newest_out = newest;
    rc = 0;
done:
    Py_XDECREF(panes);
    Py_XDECREF(clients);
    Py_XDECREF(pane_obj);
    Py_XDECREF(counts);
    Py_XDECREF(sketch);
    Py_XDECREF(sketch_add);
    Py_XDECREF(sketches);
    return rc;
}

/* groups of event indexes by name, in first-appearance order */
typedef struct {
    PyObject *index;  /* name -> group number */
    PyObject **names; /* borrowed from the events */
    Py_ssize_t *head, *tail, *count;
    Py_ssize_t n;
} Groups;

static int groups_init(Groups *g, Py_ssize_t cap) {
    memset(g, 0, sizeof(*g));
    g->index = PyDict_New();
    if (cap < 1) cap = 1;
    g->names = PyMem_Malloc(sizeof(PyObject *) * (size_t)cap);
    g->head = PyMem_Malloc(sizeof(Py_ssize_t) * (size_t)cap);
    g->tail = PyMem_Malloc(sizeof(Py_ssize_t) * (size_t)cap);
    g->count = PyMem_Malloc(sizeof(Py_ssize_t) * (size_t)cap);
    if (!g->index || !g->names || !g->head || !g->tail || !g->count) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

static void groups_free(Groups *g) {
    Py_XDECREF(g->index);
    PyMem_Free(g->names);
    PyMem_Free(g->head);
    PyMem_Free(g->tail);
    PyMem_Free(g->count);
}

static int groups_add(Groups *g, PyObject *name, Py_ssize_t ev, Py_ssize_t *next) {
    PyObject *got = PyDict_GetItemWithError(g->index, name);
    next[ev] = -1;
    if (got) {
        Py_ssize_t k = PyLong_AsSsize_t(got);
        next[g->tail[k]] = ev;
        g->tail[k] = ev;
        g->count[k]++;
        return 0;
    }
    if (PyErr_Occurred()) return -1;
    PyObject *num = PyLong_FromSsize_t(g->n);
    if (!num) return -1;
    int r = PyDict_SetItem(g->index, name, num);
    Py_DECREF(num);
    if (r < 0) return -1;
    g->names[g->n] = name;
    g->head[g->n] = g->tail[g->n] = ev;
    g->count[g->n] = 1;
    g->n++;
    return 0;
}

/* the event indexes of group k, in order, into buf */
static void group_events(const Groups *g, Py_ssize_t k, const Py_ssize_t *next, Py_ssize_t *buf) {
    Py_ssize_t m = 0;
    for (Py_ssize_t e = g->head[k]; e >= 0; e = next[e]) buf[m++] = e;
}

static PyObject *get_or_new(PyObject *table, PyObject *name, PyObject *make) {
    PyObject *heat = PyDict_GetItemWithError(table, name);
    if (heat && PyObject_IsTrue(heat) == 1) {
        Py_INCREF(heat);
        return heat;
    }
    if (PyErr_Occurred()) return NULL;
    return PyObject_CallOneArg(make, name);
}

/* each host group's events added to its Heat in hosts (made by host_new when missing), the
 * host marked dirty and touched: what fold and fold_hosts both do with their host groups */
static int count_hosts(const Groups *gh, const Py_ssize_t *next, Py_ssize_t *buf, PyObject **items,
                       PyObject *hosts, PyObject *host_new, double step, PyObject *spec, Py_ssize_t cap,
                       PyObject *dirty_hosts, PyObject *touched_hosts) {
    for (Py_ssize_t k = 0; k < gh->n; k++) {
        PyObject *name = gh->names[k];
        PyObject *heat = get_or_new(hosts, name, host_new);
        if (!heat) return -1;
        group_events(gh, k, next, buf);
        double newest;
        int r = add_many(heat, items, buf, gh->count[k], step, 0, spec, cap, &newest);
        Py_DECREF(heat);
        if (r < 0 || PySet_Add(dirty_hosts, name) < 0 || PySet_Add(touched_hosts, name) < 0) return -1;
    }
    return 0;
}

static PyObject *fold(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 17) {
        PyErr_SetString(PyExc_TypeError, "fold() takes 17 arguments");
        return NULL;
    }
    PyObject *batch = args[0];
    double too_old = PyFloat_AsDouble(args[1]);
    double step = PyFloat_AsDouble(args[2]);
    PyObject *spec = args[3];
    Py_ssize_t cap = PyLong_AsSsize_t(args[4]);
    PyObject *keys = args[5], *key_new = args[6], *hosts = args[7], *host_new = args[8], *sizes = args[9];
    PyObject *dirty_keys = args[10], *dirty_hosts = args[11], *touched_hosts = args[12], *cache = args[13];
    double wm = PyFloat_AsDouble(args[14]);
    double unanswered = PyFloat_AsDouble(args[15]);
    Py_ssize_t min_clients = PyLong_AsSsize_t(args[16]);
    if (PyErr_Occurred()) return NULL;
    if (!PyDict_Check(keys) || (hosts != Py_None && !PyDict_Check(hosts)) || !PyDict_Check(cache) ||
        !PySet_Check(dirty_keys) || !PySet_Check(dirty_hosts) || !PySet_Check(touched_hosts)) {
        PyErr_SetString(PyExc_TypeError, "fold(): keys/hosts/cache must be dicts and the dirty sets sets");
        return NULL;
    }
    if (step <= 0) {
        PyErr_SetString(PyExc_ValueError, "step must be > 0");
        return NULL;
    }
    PyObject *seq = PySequence_Fast(batch, "batch must be a sequence");
    if (!seq) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject **items = PySequence_Fast_ITEMS(seq);
    PyObject *out = NULL, *cands = NULL;
    Groups gh, gk;
    int gh_ok = 0, gk_ok = 0;
    Py_ssize_t *next_h = PyMem_Malloc(sizeof(Py_ssize_t) * (size_t)(n + 1));
    Py_ssize_t *next_k = PyMem_Malloc(sizeof(Py_ssize_t) * (size_t)(n + 1));
    Py_ssize_t *buf = PyMem_Malloc(sizeof(Py_ssize_t) * (size_t)(n + 1));
    if (!next_h || !next_k || !buf) {
        PyErr_NoMemory();
        goto done;
    }
    if (groups_init(&gh, n) < 0) goto done;
    gh_ok = 1;
    if (groups_init(&gk, n) < 0) goto done;
    gk_ok = 1;
    long long late = 0;
    int do_hosts = hosts != Py_None;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject **f = event_fields(items[i]);
        if (!f) goto done;
        double ts;
        if (event_ts(f[0], &ts) < 0) goto done;
        if (ts < too_old) {
            late++;
            continue;
        }
        if (do_hosts && groups_add(&gh, f[3], i, next_h) < 0) goto done;
        if (is_ascii_str(f[2], "GET", 3) || is_ascii_str(f[2], "HEAD", 4)) {
            if (groups_add(&gk, f[6], i, next_k) < 0) goto done;
        }
    }
    if (count_hosts(&gh, next_h, buf, items, hosts, host_new, step, spec, cap, dirty_hosts, touched_hosts) < 0)
        goto done;
    cands = PyList_New(0);
    if (!cands) goto done;
    for (Py_ssize_t k = 0; k < gk.n; k++) {
        PyObject *ck = gk.names[k];
        PyObject *kh = get_or_new(keys, ck, key_new);
        if (!kh) goto done;
        long long nbytes = 0;
        if (sizes != Py_None) {
            PyObject *sz = PyObject_CallOneArg(sizes, ck);
            if (!sz) {
                Py_DECREF(kh);
                goto done;
            }
            nbytes = PyLong_AsLongLong(sz);
            Py_DECREF(sz);
            if (nbytes == -1 && PyErr_Occurred()) {
                Py_DECREF(kh);
                goto done;
            }
        }
        group_events(&gk, k, next_k, buf);
        double newest;
        if (add_many(kh, items, buf, gk.count[k], step, nbytes, spec, cap, &newest) < 0) {
            Py_DECREF(kh);
            goto done;
        }
        PyObject **last = event_fields(items[gk.tail[k]]);
        if (PyObject_SetAttr(kh, s_url, last[5]) < 0 || PySet_Add(dirty_keys, ck) < 0) {
            Py_DECREF(kh);
            goto done;
        }
        /* PartitionHeat.fold's cheap necessary conditions (it checks them again) */
        int keep = 1;
        PyObject *adm = PyObject_GetAttr(kh, s_admitted);
        if (!adm) {
            Py_DECREF(kh);
            goto done;
        }
        double admitted = PyFloat_AsDouble(adm);
        Py_DECREF(adm);
        if (admitted == -1.0 && PyErr_Occurred()) {
            Py_DECREF(kh);
            goto done;
        }
        if (admitted != 0.0) {
            PyObject *view = PyDict_GetItemWithError(cache, ck);
            int fetching = 1;
            if (view) {
                PyObject *fv = PyObject_GetAttr(view, s_fetching);
                if (!fv) {
                    Py_DECREF(kh);
                    goto done;
                }
                fetching = PyObject_IsTrue(fv);
                Py_DECREF(fv);
                if (fetching < 0) {
                    Py_DECREF(kh);
                    goto done;
                }
            } else if (PyErr_Occurred()) {
                Py_DECREF(kh);
                goto done;
            }
            if (fetching && !(unanswered != 0.0 && wm >= admitted + unanswered)) keep = 0;
        }
        if (keep && min_clients >= 0) {
            PyObject *cl = PyObject_GetAttr(kh, s_clients);
            if (!cl) {
                Py_DECREF(kh);
                goto done;
            }
            if (PyDict_Check(cl) && PyDict_GET_SIZE(cl) < min_clients) keep = 0;
            Py_DECREF(cl);
        }
        if (keep) {
            PyObject *nw = PyFloat_FromDouble(newest);
            PyObject *t = nw ? PyTuple_Pack(3, ck, kh, nw) : NULL;
            Py_XDECREF(nw);
            if (!t || PyList_Append(cands, t) < 0) {
                Py_XDECREF(t);
                Py_DECREF(kh);
                goto done;
            }
            Py_DECREF(t);
        }
        Py_DECREF(kh);
    }
    out = Py_BuildValue("(LO)", late, cands);
done:
    Py_XDECREF(cands);
    if (gh_ok) groups_free(&gh);
    if (gk_ok) groups_free(&gk);
    PyMem_Free(next_h);
    PyMem_Free(next_k);
    PyMem_Free(buf);
    Py_DECREF(seq);
    return out;
}

/* fold_hosts(batches, step, spec, cap, hosts, host_new, dirty_hosts, touched_hosts) -> None:
 * PartitionHeat.apply_hosts (its reference): the events of [(batch, too_old)], those not older
 * than their batch's too_old, counted in their host's heat, grouped per host over all batches
 * (each host's events in their order), the hosts added to dirty_hosts and touched_hosts. */
static PyObject *fold_hosts(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 8) {
        PyErr_SetString(PyExc_TypeError, "fold_hosts() takes 8 arguments");
        return NULL;
    }
    double step = PyFloat_AsDouble(args[1]);
    PyObject *spec = args[2];
    Py_ssize_t cap = PyLong_AsSsize_t(args[3]);
    PyObject *hosts = args[4], *host_new = args[5], *dirty_hosts = args[6], *touched_hosts = args[7];
    if (PyErr_Occurred()) return NULL;
    if (!PyDict_Check(hosts) || !PySet_Check(dirty_hosts) || !PySet_Check(touched_hosts)) {
        PyErr_SetString(PyExc_TypeError, "fold_hosts(): hosts must be a dict and the dirty sets sets");
        return NULL;
    }
    if (step <= 0) {
        PyErr_SetString(PyExc_ValueError, "step must be > 0");
        return NULL;
    }
    PyObject *outer = PySequence_Fast(args[0], "batches must be a sequence");
    if (!outer) return NULL;
    Py_ssize_t nb = PySequence_Fast_GET_SIZE(outer);
    PyObject **seqs = PyMem_Calloc((size_t)nb + 1, sizeof(PyObject *));
    double *too_old = PyMem_Calloc((size_t)nb + 1, sizeof(double));
    PyObject **items = NULL, *result = NULL;
    Py_ssize_t *next = NULL, *buf = NULL;
    Groups gh;
    int gh_ok = 0;
    if (!seqs || !too_old) {
        PyErr_NoMemory();
        goto done;
    }
    Py_ssize_t total = 0;
    for (Py_ssize_t b = 0; b < nb; b++) {
        PyObject *pair = PySequence_Fast_GET_ITEM(outer, b);
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) {
            PyErr_SetString(PyExc_TypeError, "batches must hold (batch, too_old) tuples");
            goto done;
        }
        seqs[b] = PySequence_Fast(PyTuple_GET_ITEM(pair, 0), "batch must be a sequence");
        if (!seqs[b]) goto done;
        too_old[b] = PyFloat_AsDouble(PyTuple_GET_ITEM(pair, 1));
        if (too_old[b] == -1.0 && PyErr_Occurred()) goto done;
        total += PySequence_Fast_GET_SIZE(seqs[b]);
    }
    items = PyMem_Malloc(sizeof(PyObject *) * (size_t)(total + 1));
    next = PyMem_Malloc(sizeof(Py_ssize_t) * (size_t)(total + 1));
    buf = PyMem_Malloc(sizeof(Py_ssize_t) * (size_t)(total + 1));
    if (!items || !next || !buf) {
        PyErr_NoMemory();
        goto done;
    }
    if (groups_init(&gh, total) < 0) goto done;
    gh_ok = 1;
    Py_ssize_t m = 0;
    for (Py_ssize_t b = 0; b < nb; b++) {
        Py_ssize_t n = PySequence_Fast_GET_SIZE(seqs[b]);
        PyObject **evs = PySequence_Fast_ITEMS(seqs[b]);
        for (Py_ssize_t i = 0; i < n; i++) {
            PyObject **f = event_fields(evs[i]);
            if (!f) goto done;
            double ts;
            if (event_ts(f[0], &ts) < 0) goto done;
            if (ts < too_old[b]) continue;
            items[m] = evs[i];
            if (groups_add(&gh, f[3], m, next) < 0) goto done;
            m++;
        }
    }
    if (count_hosts(&gh, next, buf, items, hosts, host_new, step, spec, cap, dirty_hosts, touched_hosts) < 0)
        goto done;
    result = Py_NewRef(Py_None);
done:
    if (gh_ok) groups_free(&gh);
    if (seqs) {
        for (Py_ssize_t b = 0; b < nb; b++) Py_XDECREF(seqs[b]);
    }
    PyMem_Free(seqs);
    PyMem_Free(too_old);
    PyMem_Free(items);
    PyMem_Free(next);
    PyMem_Free(buf);
    Py_DECREF(outer);
    return result;
}

/* ---- JSON encoding (what orjson.dumps(heat.to_json()) gives, for heats in exact mode) */
typedef struct {
    char *buf;
    size_t len, cap;
} Buf;

static int buf_grow(Buf *b, size_t need) {
    if (b->len + need <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + need) cap *= 2;
    char *nb = PyMem_Realloc(b->buf, cap);
    if (!nb) {
        PyErr_NoMemory();
        return -1;
    }
    b->buf = nb;
    b->cap = cap;
    return 0;
}

static int buf_put(Buf *b, const char *s, size_t n) {
    if (buf_grow(b, n) < 0) return -1;
    memcpy(b->buf + b->len, s, n);
    b->len += n;
    return 0;
}

static int buf_ll(Buf *b, PyObject *o) {
    long long v = PyLong_AsLongLong(o);
    if (v == -1 && PyErr_Occurred()) return -1;
    /* the last number written, again: a key's clients mostly carry the same few panes */
    static long long last_v = 0;
    static char last_s[24] = "0";
    static size_t last_n = 1;
    if (v == last_v) return buf_put(b, last_s, last_n);
    /* by hand: snprintf was most of a flush (a key holds up to client_cap panes of clients) */
    char tmp[24];
    char *end = tmp + sizeof tmp, *w = end;
    unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
    do {
        *--w = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (v < 0) *--w = '-';
    last_v = v;
    last_n = (size_t)(end - w);
    memcpy(last_s, w, last_n);
    return buf_put(b, w, last_n);
}

static int buf_str(Buf *b, PyObject *o) {
    if (!PyUnicode_Check(o)) {
        PyErr_SetString(PyExc_TypeError, "expected a str");
        return -1;
    }
    Py_ssize_t n;
    const char *s = PyUnicode_AsUTF8AndSize(o, &n);
    if (!s) return -1;
    if (buf_grow(b, (size_t)n * 6 + 2) < 0) return -1;
    char *w = b->buf + b->len;
    *w++ = '"';
    Py_ssize_t clean = 0;  /* the common case: nothing to escape, one copy */
    while (clean < n && (unsigned char)s[clean] >= 0x20 && s[clean] != '"' && s[clean] != '\\') clean++;
    memcpy(w, s, (size_t)clean);
    w += clean;
    for (Py_ssize_t i = clean; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
            *w++ = '\\';
            *w++ = (char)c;
        } else if (c < 0x20) {
            *w++ = '\\';
            switch (c) {
                case '\b': *w++ = 'b'; break;
                case '\f': *w++ = 'f'; break;
                case '\n': *w++ = 'n'; break;
                case '\r': *w++ = 'r'; break;
                case '\t': *w++ = 't'; break;
                default: {
                    static const char hex[] = "0123456789abcdef";
                    *w++ = 'u';
                    *w++ = '0';
                    *w++ = '0';
                    *w++ = hex[c >> 4];
                    *w++ = hex[c & 15];
                }
            }
        } else {
            *w++ = (char)c;
        }
    }
    *w++ = '"';
    b->len = (size_t)(w - b->buf);
    return 0;
}

static int buf_float(Buf *b, PyObject *o) {
    double v = PyFloat_AsDouble(o);
    if (v == -1.0 && PyErr_Occurred()) return -1;
    if (!isfinite(v)) {
        PyErr_SetString(PyExc_ValueError, "cannot encode a non-finite float");
        return -1;
    }
    /* repr (shortest round trip, as orjson writes it) is ~600 instructions; a key's admission
     * time is the same flush after flush: renderings cached by the double's bits */
    enum { FC_SIZE = 4096 };
    static struct { uint64_t bits; uint8_t n; char s[31]; } fc[FC_SIZE];  /* n = 0: empty */
    uint64_t bits;
    memcpy(&bits, &v, sizeof bits);
    uint64_t h = bits * 0x9E3779B97F4A7C15ULL;
    size_t slot = (size_t)(h >> 52);  /* 12 bits: FC_SIZE */
    if (fc[slot].n && fc[slot].bits == bits) return buf_put(b, fc[slot].s, fc[slot].n);
    char *s = PyOS_double_to_string(v, 'r', 0, Py_DTSF_ADD_DOT_0, NULL);
    if (!s) return -1;
    size_t n = strlen(s);
    int r = buf_put(b, s, n);
    if (n < sizeof fc[slot].s) {
        fc[slot].bits = bits;
        fc[slot].n = (uint8_t)n;
        memcpy(fc[slot].s, s, n);
    }
    PyMem_Free(s);
    return r;
}

/* {"p":[[pane,req,tls,bytes],...],"c":{client:pane,...}[,"u":url,"a":admitted]} */
static int encode_exact(Buf *b, PyObject *heat, PyObject *panes, PyObject *clients, int key_fields) {
    if (buf_put(b, "{\"p\":[", 6) < 0) return -1;
    Py_ssize_t pos = 0;
    PyObject *pk, *pv;
    int first = 1;
    while (PyDict_Next(panes, &pos, &pk, &pv)) {
        if (!PyList_Check(pv) || PyList_GET_SIZE(pv) != 3) {
            PyErr_SetString(PyExc_TypeError, "pane counts must be a list of 3 ints");
            return -1;
        }
        if ((!first && buf_put(b, ",", 1) < 0) || buf_put(b, "[", 1) < 0 || buf_ll(b, pk) < 0) return -1;
        for (Py_ssize_t i = 0; i < 3; i++) {
            if (buf_put(b, ",", 1) < 0 || buf_ll(b, PyList_GET_ITEM(pv, i)) < 0) return -1;
        }
        if (buf_put(b, "]", 1) < 0) return -1;
        first = 0;
    }
    if (buf_put(b, "],\"c\":{", 7) < 0) return -1;
    pos = 0;
    first = 1;
    while (PyDict_Next(clients, &pos, &pk, &pv)) {
        if ((!first && buf_put(b, ",", 1) < 0) || buf_str(b, pk) < 0 || buf_put(b, ":", 1) < 0 || buf_ll(b, pv) < 0)
            return -1;
        first = 0;
    }
    if (buf_put(b, "}", 1) < 0) return -1;
    if (key_fields) {
        PyObject *url = PyObject_GetAttr(heat, s_url);
        if (!url) return -1;
        int r = buf_put(b, ",\"u\":", 5) < 0 || buf_str(b, url) < 0;
        Py_DECREF(url);
        if (r) return -1;
        PyObject *adm = PyObject_GetAttr(heat, s_admitted);
        if (!adm) return -1;
        r = buf_put(b, ",\"a\":", 5) < 0 || buf_float(b, adm) < 0;
        Py_DECREF(adm);
        if (r) return -1;
    }
    return buf_put(b, "}", 1);
}

static PyObject *heat_json(PyObject *heat, PyObject *fallback, int key_fields) {
    PyObject *panes = PyObject_GetAttr(heat, s_panes);
    if (!panes) return NULL;
    PyObject *clients = PyObject_GetAttr(heat, s_clients);
    if (!clients) {
        Py_DECREF(panes);
        return NULL;
    }
    PyObject *out = NULL;
    if (clients == Py_None || !PyDict_Check(clients) || !PyDict_Check(panes)) {
        out = PyObject_CallOneArg(fallback, heat);  /* sketch mode: the Python encoder */
    } else {
        /* one buffer for every key (the module is used under the GIL only): no allocation per key */
        static Buf scratch;
        scratch.len = 0;
        if (encode_exact(&scratch, heat, panes, clients, key_fields) == 0)
            out = PyBytes_FromStringAndSize(scratch.buf, (Py_ssize_t)scratch.len);
        if (scratch.cap > (1u << 20)) {  /* a huge key: do not keep its buffer */
            PyMem_Free(scratch.buf);
            scratch.buf = NULL;
            scratch.len = scratch.cap = 0;
        }
    }
    Py_DECREF(panes);
    Py_DECREF(clients);
    if (out && !PyBytes_Check(out)) {
        Py_DECREF(out);
        PyErr_SetString(PyExc_TypeError, "fallback must return bytes");
        return NULL;
    }
    return out;
}

static PyObject *encode_slot(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "encode_slot() takes 5 arguments");
        return NULL;
    }
    PyObject *names = args[0], *heats = args[1], *cache = args[2], *fallback = args[3];
    int key_fields = PyObject_IsTrue(args[4]);
    if (key_fields < 0) return NULL;
    if (!PyDict_Check(heats) || (cache != Py_None && !PyDict_Check(cache))) {
        PyErr_SetString(PyExc_TypeError, "encode_slot(): heats and cache must be dicts");
        return NULL;
    }
    PyObject *it = PyObject_GetIter(names);
    if (!it) return NULL;
    Buf b = {0};
    PyObject *name, *result = NULL;
    int first = 1, failed = 0;
    if (buf_put(&b, "{", 1) < 0) failed = 1;
    while (!failed && (name = PyIter_Next(it))) {
        PyObject *raw = cache != Py_None ? PyDict_GetItemWithError(cache, name) : NULL;
        if (raw) {
            Py_INCREF(raw);
        } else if (!PyErr_Occurred()) {
            PyObject *heat = PyDict_GetItemWithError(heats, name);
            if (!heat) {
                if (!PyErr_Occurred()) PyErr_SetObject(PyExc_KeyError, name);
            } else {
                raw = heat_json(heat, fallback, key_fields);
                if (raw && cache != Py_None && PyDict_SetItem(cache, name, raw) < 0) Py_CLEAR(raw);
            }
        }
        if (!raw || !PyBytes_Check(raw) || (!first && buf_put(&b, ",", 1) < 0) || buf_str(&b, name) < 0 ||
            buf_put(&b, ":", 1) < 0 || buf_put(&b, PyBytes_AS_STRING(raw), (size_t)PyBytes_GET_SIZE(raw)) < 0) {
            if (raw && !PyBytes_Check(raw)) PyErr_SetString(PyExc_TypeError, "cached heat JSON must be bytes");
            failed = 1;
        }
        first = 0;
        Py_XDECREF(raw);
        Py_DECREF(name);
    }
    Py_DECREF(it);
    if (!failed && !PyErr_Occurred() && buf_put(&b, "}", 1) == 0)
        result = PyBytes_FromStringAndSize(b.buf, (Py_ssize_t)b.len);
    PyMem_Free(b.buf);
    return result;
}


/* ---- top_keys(keys, first, n) -> [(key, requests)]: PartitionHeat.top_keys (its reference):
 * the n keys with the most requests in panes >= first, most first, ties in the keys' order. */
static PyObject *top_keys(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 3 || !PyDict_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "top_keys(keys: dict, first: int, n: int)");
        return NULL;
    }
    PyObject *keys = args[0];
    long long first = PyLong_AsLongLong(args[1]);
    Py_ssize_t n = PyLong_AsSsize_t(args[2]);
    if (PyErr_Occurred()) return NULL;
    if (n < 0) n = 0;
    if (n > PyDict_GET_SIZE(keys)) n = PyDict_GET_SIZE(keys);
    PyObject **names = PyMem_Calloc((size_t)n + 1, sizeof(PyObject *));
    long long *counts = PyMem_Calloc((size_t)n + 1, sizeof(long long));
    PyObject *out = NULL;
    Py_ssize_t have = 0;
    if (!names || !counts) {
        PyErr_NoMemory();
        goto done;
    }
    Py_ssize_t pos = 0;
    PyObject *ck, *heat;
    while (n && PyDict_Next(keys, &pos, &ck, &heat)) {
        PyObject *panes = PyObject_GetAttr(heat, s_panes);
        if (!panes) goto done;
        if (!PyDict_Check(panes)) {
            Py_DECREF(panes);
            PyErr_SetString(PyExc_TypeError, "heat.panes must be a dict");
            goto done;
        }
        long long total = 0;
        Py_ssize_t pp = 0;
        PyObject *pk, *pv;
        while (PyDict_Next(panes, &pp, &pk, &pv)) {
            long long pane = PyLong_AsLongLong(pk);
            if (pane == -1 && PyErr_Occurred()) {
                Py_DECREF(panes);
                goto done;
            }
            if (pane < first) continue;
            if (!PyList_Check(pv) || PyList_GET_SIZE(pv) < 1) {
                Py_DECREF(panes);
                PyErr_SetString(PyExc_TypeError, "pane counts must be a list of 3 ints");
                goto done;
            }
            long long c = PyLong_AsLongLong(PyList_GET_ITEM(pv, 0));
            if (c == -1 && PyErr_Occurred()) {
                Py_DECREF(panes);
                goto done;
            }
            total += c;
        }
        Py_DECREF(panes);
        /* insert after every kept key with at least as many requests (stable, like sorted) */
        if (have == n && total <= counts[n - 1]) continue;
        Py_ssize_t at = have < n ? have : n - 1;
        while (at > 0 && counts[at - 1] < total) at--;
        if (have == n) {
            Py_DECREF(names[n - 1]);
        } else {
            have++;
        }
        memmove(names + at + 1, names + at, sizeof(PyObject *) * (size_t)(have - 1 - at));
        memmove(counts + at + 1, counts + at, sizeof(long long) * (size_t)(have - 1 - at));
        Py_INCREF(ck);
        names[at] = ck;
        counts[at] = total;
    }
    out = PyList_New(have);
    if (!out) goto done;
    for (Py_ssize_t i = 0; i < have; i++) {
        PyObject *t = Py_BuildValue("(OL)", names[i], counts[i]);
        if (!t) {
            Py_CLEAR(out);
            goto done;
        }
        PyList_SET_ITEM(out, i, t);
    }
done:
    if (names) {
        for (Py_ssize_t i = 0; i < have; i++) Py_XDECREF(names[i]);
    }
    PyMem_Free(names);
    PyMem_Free(counts);
    return out;
}

/* ---- rows(raw): a `requests` message (RequestBatch JSON) straight to the fold's rows.
 *
 * heatcache.contract.decode(raw, RequestBatch) is the reference: whenever this returns rows,
 * the contract accepts the message and its events, as tuples, equal the rows (ts a float, the
 * 8 strings equal). It accepts only a plain subset of what the contract accepts (no escapes,
 * ASCII only, no negative numbers, no duplicate/unknown/replay fields) and returns None for
 * everything else: the caller then decodes with the contract (which accepts it or gives the
 * dead-letter reason). tests/streams/test_rows_compiled.py holds the two to this.
 *
 * Why: orjson.loads + the contract's checks make 9 Python objects per event (most of a
 * worker's time); here the strings repeat across messages (clients, hosts, keys), so each is
 * made once and taken from a bounded, direct-mapped cache of the strings made before.
 */
#define RC_BITS 17
#define RC_SIZE (1u << RC_BITS)
static PyObject **rc_str;  /* RC_SIZE slots: a str or NULL */
static uint64_t *rc_hash;

static uint64_t span_hash(const char *s, Py_ssize_t n) {
    uint64_t h = 0x9E3779B97F4A7C15ULL ^ (uint64_t)n;
    Py_ssize_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, s + i, 8);
        h = (h ^ w) * 0xff51afd7ed558ccdULL;
        h ^= h >> 32;
    }
    uint64_t w = 0;
    memcpy(&w, s + i, (size_t)(n - i));
    h = (h ^ w) * 0xc4ceb9fe1a85ec53ULL;
    h ^= h >> 29;
    return h;
}

/* the str of an ASCII span (new reference), from the cache when it was made before */
static PyObject *span_str(const char *s, Py_ssize_t n) {
    uint64_t h = span_hash(s, n);
    size_t i = (size_t)(h & (RC_SIZE - 1));
    PyObject *o = rc_str[i];
    if (o && rc_hash[i] == h && PyUnicode_GET_LENGTH(o) == n && memcmp(PyUnicode_DATA(o), s, (size_t)n) == 0) {
        Py_INCREF(o);
        return o;
    }
    PyObject *made = PyUnicode_New(n, 127);
    if (!made) return NULL;
    memcpy(PyUnicode_DATA(made), s, (size_t)n);
    Py_XSETREF(rc_str[i], made);
    rc_hash[i] = h;
    Py_INCREF(made);
    return made;
}

#define MAX_TS 4102444800.0
#define MAX_BATCH_EVENTS 100000
/* heatcache.contract.REQUEST_FIELD_CAPS (test_rows_compiled checks they agree) */
static const Py_ssize_t FIELD_CAPS[8] = {256, 32, 262, 8192, 8192, 8192, 256, 64};

enum { ROW_OK = 0, ROW_OTHER = 1, ROW_ERR = -1 };  /* parsed / not in the plain subset / exception */

typedef struct {
    const char *p, *end;
} Cursor;

static void ws(Cursor *c) {
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r')) c->p++;
}

static int lit(Cursor *c, char ch) {
    ws(c);
    if (c->p < c->end && *c->p == ch) {
        c->p++;
        return 1;
    }
    return 0;
}

/* a string of printable ASCII without escapes: its span */
static int plain_string(Cursor *c, const char **s, Py_ssize_t *n) {
    ws(c);
    if (c->p >= c->end || *c->p != '"') return ROW_OTHER;
    const char *q = ++c->p;
    /* eight bytes at a time while none is special ('"', '\\', < 0x20, >= 0x80), then on from the
     * first special byte with the byte loop (the same checks). The lowest flagged byte of a word
     * is its first special one: the subtractions borrow upwards only, so a false flag can only
     * follow a true one (little-endian: lower bytes come first). */
    const uint64_t ones = 0x0101010101010101ULL, highs = 0x8080808080808080ULL;
    while (q + 8 <= c->end) {
        uint64_t w;
        memcpy(&w, q, 8);
        uint64_t quote = w ^ (ones * '"'), slash = w ^ (ones * '\\');
        uint64_t special = (w | ((w - ones * 0x20) & ~w) | ((quote - ones) & ~quote) | ((slash - ones) & ~slash)) & highs;
        if (special) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
            q += __builtin_ctzll(special) >> 3;
#endif
            break;
        }
        q += 8;
    }
    while (q < c->end) {
        unsigned char ch = (unsigned char)*q;
        if (ch == '"') break;
        if (ch < 0x20 || ch >= 0x80 || ch == '\\') return ROW_OTHER;
        q++;
    }
    if (q >= c->end) return ROW_OTHER;
    *s = c->p;
    *n = q - c->p;
    c->p = q + 1;
    return ROW_OK;
}

static int is_digit(char ch) { return ch >= '0' && ch <= '9'; }

/* a JSON number >= 0 (no sign): its span, and whether it is an integer literal */
static int plain_number(Cursor *c, const char **s, Py_ssize_t *n, int *integer) {
    ws(c);
    const char *q = c->p, *start = q;
    if (q >= c->end || !is_digit(*q)) return ROW_OTHER;
    if (*q == '0') {
        q++;
    } else {
        while (q < c->end && is_digit(*q)) q++;
    }
    *integer = 1;
    if (q < c->end && *q == '.') {
        q++;
        if (q >= c->end || !is_digit(*q)) return ROW_OTHER;
        while (q < c->end && is_digit(*q)) q++;
        *integer = 0;
    }
    if (q < c->end && (*q == 'e' || *q == 'E')) {
        q++;
        if (q < c->end && (*q == '+' || *q == '-')) q++;
        if (q >= c->end || !is_digit(*q)) return ROW_OTHER;
        while (q < c->end && is_digit(*q)) q++;
        *integer = 0;
    }
    *s = start;
    *n = q - start;
    c->p = q;
    return ROW_OK;
}

static int span_is(const char *s, Py_ssize_t n, const char *lit_s) {
    return (size_t)n == strlen(lit_s) && memcmp(s, lit_s, (size_t)n) == 0;
}

/* digits[.digits] with at most 15 digits in all: its value as strtod gives it, without strtod.
 * The digits as an integer m < 10^15 < 2^53 and 10^k (k <= 15) are exact doubles, so m / 10^k,
 * one correctly rounded division, is the double nearest the decimal (Clinger's fast path):
 * what PyOS_string_to_double returns. 0 = not that form (the caller uses strtod). */
static int short_decimal(const char *s, Py_ssize_t n, double *out) {
    static const double pow10[16] = {1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15};
    uint64_t m = 0;
    int digits = 0, frac = -1;
    for (Py_ssize_t i = 0; i < n; i++) {
        char ch = s[i];
        if (ch >= '0' && ch <= '9') {
            m = m * 10 + (uint64_t)(ch - '0');
            if (++digits > 15) return 0;
            if (frac >= 0) frac++;
        } else if (ch == '.' && frac < 0) {
            frac = 0;
        } else {
            return 0;  /* an exponent */
        }
    }
    if (!digits) return 0;
    *out = (double)m / pow10[frac > 0 ? frac : 0];
    return 1;
}

/* one event: [ts, 8 plain strings] -> a 9-tuple into *out */
static int parse_row(Cursor *c, PyObject **out) {
    if (!lit(c, '[')) return ROW_OTHER;
    const char *s;
    Py_ssize_t n;
    int integer;
    if (plain_number(c, &s, &n, &integer) != ROW_OK || n > 40) return ROW_OTHER;
    double ts;
    if (!short_decimal(s, n, &ts)) {
        char tmp[48];
        memcpy(tmp, s, (size_t)n);
        tmp[n] = '\0';
        char *endp = NULL;
        ts = PyOS_string_to_double(tmp, &endp, NULL);
        if (ts == -1.0 && PyErr_Occurred()) {
            PyErr_Clear();
            return ROW_OTHER;
        }
        if (endp != tmp + n) return ROW_OTHER;
    }
    if (!isfinite(ts) || !(ts >= 0.0 && ts <= MAX_TS)) return ROW_OTHER;
    const char *fs[8];
    Py_ssize_t fn[8];
    for (int i = 0; i < 8; i++) {
        if (!lit(c, ',') || plain_string(c, &fs[i], &fn[i]) != ROW_OK || fn[i] > FIELD_CAPS[i]) return ROW_OTHER;
    }
    if (!lit(c, ']')) return ROW_OTHER;
    PyObject *row = PyTuple_New(9);
    if (!row) return ROW_ERR;
    PyObject *f0 = PyFloat_FromDouble(ts);
    if (!f0) {
        Py_DECREF(row);
        return ROW_ERR;
    }
    PyTuple_SET_ITEM(row, 0, f0);
    for (int i = 0; i < 8; i++) {
        PyObject *str = span_str(fs[i], fn[i]);
        if (!str) {
            Py_DECREF(row);
            return ROW_ERR;
        }
        PyTuple_SET_ITEM(row, i + 1, str);
    }
    /* a float and strs: it cannot be part of a cycle, so the cyclic GC need not track it (the
     * GC would untrack it at its first collection, after visiting it; 100 per message) */
    PyObject_GC_UnTrack(row);
    *out = row;
    return ROW_OK;
}

static int parse_events(Cursor *c, PyObject *rows) {
    if (!lit(c, '[')) return ROW_OTHER;
    if (lit(c, ']')) return ROW_OK;
    for (;;) {
        if (PyList_GET_SIZE(rows) >= MAX_BATCH_EVENTS) return ROW_OTHER;
        PyObject *row = NULL;
        int r = parse_row(c, &row);
        if (r != ROW_OK) return r;
        if (PyList_Append(rows, row) < 0) {
            Py_DECREF(row);
            return ROW_ERR;
        }
        Py_DECREF(row);
        if (lit(c, ']')) return ROW_OK;
        if (!lit(c, ',')) return ROW_OTHER;
    }
}

static int parse_batch(Cursor *c, PyObject *rows) {
    int seen_v = 0, seen_kind = 0, seen_bucket = 0, seen_events = 0;
    if (!lit(c, '{')) return ROW_OTHER;
    if (lit(c, '}')) return ROW_OTHER;
    for (;;) {
        const char *k, *s;
        Py_ssize_t kn, n;
        int integer;
        if (plain_string(c, &k, &kn) != ROW_OK || !lit(c, ':')) return ROW_OTHER;
        if (span_is(k, kn, "v") && !seen_v) {
            seen_v = 1;
            if (plain_number(c, &s, &n, &integer) != ROW_OK || !integer || !span_is(s, n, "1")) return ROW_OTHER;
        } else if (span_is(k, kn, "kind") && !seen_kind) {
            seen_kind = 1;
            if (plain_string(c, &s, &n) != ROW_OK || !span_is(s, n, "batch")) return ROW_OTHER;
        } else if (span_is(k, kn, "bucket") && !seen_bucket) {
            seen_bucket = 1;
            if (plain_number(c, &s, &n, &integer) != ROW_OK || !integer || n > 5) return ROW_OTHER;
            long v = 0;
            for (Py_ssize_t i = 0; i < n; i++) v = v * 10 + (s[i] - '0');
            if (v > 65535) return ROW_OTHER;
        } else if (span_is(k, kn, "events") && !seen_events) {
            seen_events = 1;
            int r = parse_events(c, rows);
            if (r != ROW_OK) return r;
        } else {
            return ROW_OTHER;  /* unknown, repeated, or replay's sizes/statuses: the contract decides */
        }
        if (lit(c, '}')) break;
        if (!lit(c, ',')) return ROW_OTHER;
    }
    ws(c);
    if (c->p != c->end || !seen_v || !seen_kind || !seen_bucket) return ROW_OTHER;
    return ROW_OK;
}

static PyObject *rows(PyObject *self, PyObject *raw) {
    (void)self;
    if (!PyBytes_Check(raw)) Py_RETURN_NONE;
    Cursor c = {PyBytes_AS_STRING(raw), PyBytes_AS_STRING(raw) + PyBytes_GET_SIZE(raw)};
    PyObject *out = PyList_New(0);
    if (!out) return NULL;
    int r = parse_batch(&c, out);
    if (r == ROW_OK) return out;
    Py_DECREF(out);
    if (r == ROW_ERR) return NULL;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"fold", (PyCFunction)(void (*)(void))fold, METH_FASTCALL,
     "Count one message's events into the heats; (late, [(key, heat, newest ts)] candidates)."},
    {"encode_slot", (PyCFunction)(void (*)(void))encode_slot, METH_FASTCALL,
     "The JSON object of one state slot (bytes)."},
    {"fold_hosts", (PyCFunction)(void (*)(void))fold_hosts, METH_FASTCALL,
     "Count pending (batch, too_old) events in their hosts' heat, grouped per host."},
    {"top_keys", (PyCFunction)(void (*)(void))top_keys, METH_FASTCALL,
     "The n keys with the most requests in panes >= first: [(key, requests)]."},
    {"rows", (PyCFunction)rows, METH_O,
     "A RequestBatch message's events as 9-tuples, or None when it is not in the plain subset."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "streams._fold", "Compiled fold of streams/heat.py.", -1,
                                    methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__fold(void) {
#define INTERN(var, s) if (!(var = PyUnicode_InternFromString(s))) return NULL
    INTERN(s_panes, "panes");
    INTERN(s_sketches, "sketches");
    INTERN(s_clients, "clients");
    INTERN(s_admitted, "admitted");
    INTERN(s_url, "url");
    INTERN(s_fetching, "fetching");
    INTERN(s_to_sketches, "_to_sketches");
    INTERN(s_sketch, "_sketch");
    INTERN(s_add, "add");
    INTERN(s_get, "get");
#undef INTERN
    rc_str = PyMem_Calloc(RC_SIZE, sizeof(PyObject *));
    rc_hash = PyMem_Calloc(RC_SIZE, sizeof(uint64_t));
    if (!rc_str || !rc_hash) return PyErr_NoMemory();
    return PyModule_Create(&module);
}
