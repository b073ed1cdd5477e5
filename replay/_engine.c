/* replay._engine: the compiled twin of replay/engine.py's request loop and of
 * replay/storepolicy.py's StorePolicy.
 *
 * The Python code is the reference and the specification. This module decides nothing itself:
 * every decision is still the production code, called here exactly where engine.run calls it:
 *   - admission: streams' PartitionHeat (its _fold_compiled, i.e. the same streams._fold the
 *     worker runs, or _fold_reference; rule_for_key, decide, _admit, on_cache_event), with
 *     PartitionHeat.fold's own bookkeeping (offsets, watermark, late, the cheap checks) done
 *     here as it does it; any other admission (the oracle) through its Python fold;
 *   - quota: cachestore.quota.plan_space; in-path fill: dns_redirect.hits.may_fill;
 *   - steering: dns_redirect CacheIndex.apply / is_steered and never_steer;
 *   - eviction: StorePolicy below, the same lazy heap over the catalog's columns as
 *     replay/storepolicy.py (itself held to cachestore.policy.choose_victims), with
 *     cachestore.policy.rank computed the same way (log2, the same operations in the same order).
 * tests/replay/test_compiled.py holds the two to identical results (every Result field, the
 * admissions, the cache at the end; the policy's victims on random operations).
 *
 *   StorePolicy(half_life_s, new_weight, heat_weight, size_exponent): insert, access, remove,
 *       evict, used_bytes, len(), in  (replay.storepolicy.StorePolicy's interface)
 *   loop(ctx) -> (hits, bytes_local, prefetches, bytes_prefetched, fills, bytes_filled,
 *       fetch_failures, refused, evictions, never_hit): engine.run's loop over the batches; ctx
 *       is the dict engine._compiled_loop builds (the containers are filled in place).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stdint.h>
#include <string.h>

/* ---------------------------------------------------------------- StorePolicy */

typedef struct {
    PyObject *key; /* owned */
    Py_ssize_t kid; /* the loop's key number (-1 when inserted through the Python API) */
    long long size, hits, heat;
    double last_hit, fetched_at;
    unsigned long long version;
    int cached;
} Row;

typedef struct {
    double rank;
    Py_ssize_t row;
    unsigned long long version;
} Entry;

typedef struct {
    PyObject_HEAD
    double half_life, new_weight, heat_weight, size_exponent;
    PyObject *index; /* key -> row number */
    Row *rows;
    Py_ssize_t nrows, caprows;
    Entry *heap;
    Py_ssize_t nheap, capheap;
    Py_ssize_t cached;
    long long used_bytes;
} SP;

static PyTypeObject SPType;

/* cachestore.policy.rank of the row as StorePolicy._rank counts it */
static double sp_rank(const SP *p, const Row *r) {
    double count = (double)r->hits + p->heat_weight * (double)r->heat;
    if (!(count > 0)) count = p->new_weight;
    double last = r->fetched_at > r->last_hit ? r->fetched_at : r->last_hit;
    double c = 1e-12 > count ? 1e-12 : count;
    double size = r->size > 1 ? (double)r->size : 1.0;
    return log2(c) + last / p->half_life - p->size_exponent * log2(size);
}

/* (rank, key, version) < (rank, key, version), as Python compares the tuples */
static int entry_lt(const SP *p, const Entry *a, const Entry *b, int *err) {
    if (a->rank != b->rank) return a->rank < b->rank;
    if (a->row != b->row) {
        int c = PyUnicode_Compare(p->rows[a->row].key, p->rows[b->row].key);
        if (c == -1 && PyErr_Occurred()) {
            *err = 1;
            return 0;
        }
        return c < 0;
    }
    return a->version < b->version;
}

static int heap_push(SP *p, Entry e) {
    if (p->nheap == p->capheap) {
        Py_ssize_t cap = p->capheap ? p->capheap * 2 : 1024;
        Entry *nh = PyMem_Realloc(p->heap, sizeof(Entry) * (size_t)cap);
        if (!nh) {
            PyErr_NoMemory();
            return -1;
        }
        p->heap = nh;
        p->capheap = cap;
    }
    Py_ssize_t i = p->nheap++;
    int err = 0;
    while (i > 0) {
        Py_ssize_t parent = (i - 1) / 2;
        if (!entry_lt(p, &e, &p->heap[parent], &err)) break;
        p->heap[i] = p->heap[parent];
        i = parent;
    }
    p->heap[i] = e;
    return err ? -1 : 0;
}

static int sift_down(SP *p, Py_ssize_t i) {
    Py_ssize_t n = p->nheap;
    Entry e = p->heap[i];
    int err = 0;
    for (;;) {
        Py_ssize_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && entry_lt(p, &p->heap[c + 1], &p->heap[c], &err)) c++;
        if (!entry_lt(p, &p->heap[c], &e, &err)) break;
        p->heap[i] = p->heap[c];
        i = c;
    }
    p->heap[i] = e;
    return err ? -1 : 0;
}

static int heap_pop(SP *p, Entry *out) {
    *out = p->heap[0];
    p->nheap--;
    if (p->nheap > 0) {
        p->heap[0] = p->heap[p->nheap];
        return sift_down(p, 0);
    }
    return 0;
}

/* StorePolicy._push: a new entry at the row's rank; now and then drop the stale ones */
static int sp_push(SP *p, Py_ssize_t ri) {
    Row *r = &p->rows[ri];
    r->version++;
    Entry e = {sp_rank(p, r), ri, r->version};
    if (heap_push(p, e) < 0) return -1;
    if (p->nheap > 4 * p->cached + 1024) {
        Py_ssize_t m = 0;
        for (Py_ssize_t k = 0; k < p->nrows; k++) {
            if (p->rows[k].cached) {
                Entry f = {sp_rank(p, &p->rows[k]), k, p->rows[k].version};
                p->heap[m++] = f;
            }
        }
        p->nheap = m;
        for (Py_ssize_t k = m / 2 - 1; k >= 0; k--)
            if (sift_down(p, k) < 0) return -1;
    }
    return 0;
}

/* the row of key, -1 if none (-2 on error) */
static Py_ssize_t sp_find(SP *p, PyObject *key) {
    PyObject *got = PyDict_GetItemWithError(p->index, key);
    if (!got) return PyErr_Occurred() ? -2 : -1;
    return PyLong_AsSsize_t(got);
}

/* the row of key, made when missing (-1 on error) */
static Py_ssize_t sp_row(SP *p, PyObject *key, Py_ssize_t kid) {
    Py_ssize_t ri = sp_find(p, key);
    if (ri == -2) return -1;
    if (ri == -1) {
        if (!PyUnicode_Check(key)) {
            PyErr_SetString(PyExc_TypeError, "cache keys must be str");
            return -1;
        }
        if (p->nrows == p->caprows) {
            Py_ssize_t cap = p->caprows ? p->caprows * 2 : 1024;
            Row *nr = PyMem_Realloc(p->rows, sizeof(Row) * (size_t)cap);
            if (!nr) {
                PyErr_NoMemory();
                return -1;
            }
            p->rows = nr;
            p->caprows = cap;
        }
        PyObject *num = PyLong_FromSsize_t(p->nrows);
        if (!num) return -1;
        int rc = PyDict_SetItem(p->index, key, num);
        Py_DECREF(num);
        if (rc < 0) return -1;
        ri = p->nrows++;
        Row *r = &p->rows[ri];
        memset(r, 0, sizeof(*r));
        Py_INCREF(key);
        r->key = key;
        r->kid = kid;
    }
    return ri;
}

/* StorePolicy.insert on row ri */
static int sp_insert_row(SP *p, Py_ssize_t ri, long long size, double now, long long heat) {
    if (p->rows[ri].cached) {
        p->used_bytes -= p->rows[ri].size;
        p->cached--;
    }
    Row *r = &p->rows[ri];
    r->size = size;
    r->fetched_at = now;
    r->heat = heat;
    r->cached = 1;
    p->used_bytes += size;
    p->cached++;
    return sp_push(p, ri);
}

static int sp_insert(SP *p, PyObject *key, long long size, double now, long long heat) {
    Py_ssize_t ri = sp_row(p, key, -1);
    return ri < 0 ? -1 : sp_insert_row(p, ri, size, now, heat);
}

static int sp_access_row(SP *p, Py_ssize_t ri, double now) {
    Row *r = &p->rows[ri];
    double before = (double)r->hits + p->heat_weight * (double)r->heat;
    r->hits++;
    if (now > r->last_hit) r->last_hit = now;
    if (before <= 0 && 0 < p->new_weight && before + 1 < p->new_weight) return sp_push(p, ri);
    return 0;
}

static int sp_access(SP *p, PyObject *key, double now) {
    Py_ssize_t ri = sp_find(p, key);
    if (ri < 0) {
        if (ri == -1) PyErr_SetObject(PyExc_KeyError, key);
        return -1;
    }
    return sp_access_row(p, ri, now);
}

typedef struct {
    Py_ssize_t *v;
    Py_ssize_t n, cap;
} Rows;

/* StorePolicy.evict: the victims' rows, in order, into out */
static int sp_evict(SP *p, long long need, Rows *out) {
    long long freed = 0;
    out->n = 0;
    while (freed < need && p->nheap > 0) {
        Entry e;
        if (heap_pop(p, &e) < 0) return -1;
        Row *r = &p->rows[e.row];
        if (!r->cached || r->version != e.version) continue;
        double current = sp_rank(p, r);
        if (current > e.rank) {
            Entry f = {current, e.row, e.version};
            if (heap_push(p, f) < 0) return -1;
            continue;
        }
        r->cached = 0;
        p->used_bytes -= r->size;
        p->cached--;
        freed += r->size;
        if (out->n == out->cap) {
            Py_ssize_t cap = out->cap ? out->cap * 2 : 64;
            Py_ssize_t *nv = PyMem_Realloc(out->v, sizeof(Py_ssize_t) * (size_t)cap);
            if (!nv) {
                PyErr_NoMemory();
                return -1;
            }
            out->v = nv;
            out->cap = cap;
        }
        out->v[out->n++] = e.row;
    }
    return 0;
}

static int sp_init(SP *self, PyObject *args, PyObject *kwds) {
    static char *kw[] = {"half_life_s", "new_weight", "heat_weight", "size_exponent", NULL};
    double h = 4 * 3600.0, nw = 0.5, hw = 1.0, se = 0.0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|dddd", kw, &h, &nw, &hw, &se)) return -1;
    self->half_life = h;
    self->new_weight = nw;
    self->heat_weight = hw;
    self->size_exponent = se;
    Py_XSETREF(self->index, PyDict_New());
    return self->index ? 0 : -1;
}

static void sp_dealloc(SP *self) {
    for (Py_ssize_t k = 0; k < self->nrows; k++) Py_XDECREF(self->rows[k].key);
    PyMem_Free(self->rows);
    PyMem_Free(self->heap);
    Py_XDECREF(self->index);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *sp_py_insert(SP *self, PyObject *args) {
    PyObject *key;
    long long size, heat = 0;
    double now;
    if (!PyArg_ParseTuple(args, "ULd|L", &key, &size, &now, &heat)) return NULL;
    if (sp_insert(self, key, size, now, heat) < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *sp_py_access(SP *self, PyObject *args) {
    PyObject *key;
    double now;
    if (!PyArg_ParseTuple(args, "Ud", &key, &now)) return NULL;
    if (sp_access(self, key, now) < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *sp_py_remove(SP *self, PyObject *key) {
    Py_ssize_t ri = sp_find(self, key);
    if (ri == -2) return NULL;
    if (ri >= 0 && self->rows[ri].cached) {
        self->rows[ri].cached = 0;
        self->used_bytes -= self->rows[ri].size;
        self->cached--;
    }
    Py_RETURN_NONE;
}

static PyObject *sp_py_evict(SP *self, PyObject *args) {
    long long need;
    double now;
    if (!PyArg_ParseTuple(args, "Ld", &need, &now)) return NULL;
    Rows rows = {0};
    PyObject *out = sp_evict(self, need, &rows) < 0 ? NULL : PyList_New(rows.n);
    for (Py_ssize_t i = 0; out && i < rows.n; i++) {
        PyObject *key = self->rows[rows.v[i]].key;
        Py_INCREF(key);
        PyList_SET_ITEM(out, i, key);
    }
    PyMem_Free(rows.v);
    return out;
}

static PyObject *sp_used(SP *self, void *closure) {
    (void)closure;
    return PyLong_FromLongLong(self->used_bytes);
}

static Py_ssize_t sp_len(SP *self) { return self->cached; }

static int sp_contains(SP *self, PyObject *key) {
    Py_ssize_t ri = sp_find(self, key);
    if (ri == -2) return -1;
    return ri >= 0 && self->rows[ri].cached;
}

static PyMethodDef sp_methods[] = {
    {"insert", (PyCFunction)sp_py_insert, METH_VARARGS, "A commit: size, fetched_at and heat are the new copy's."},
    {"access", (PyCFunction)sp_py_access, METH_VARARGS, "A hit the edge recorded."},
    {"remove", (PyCFunction)sp_py_remove, METH_O, "The row is no longer cached."},
    {"evict", (PyCFunction)sp_py_evict, METH_VARARGS, "Victims, lowest rank first, until need_bytes are freed."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef sp_getset[] = {
    {"used_bytes", (getter)sp_used, NULL, "bytes cached", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PySequenceMethods sp_seq = {.sq_length = (lenfunc)sp_len, .sq_contains = (objobjproc)sp_contains};

static PyTypeObject SPType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "replay._engine.StorePolicy",
    .tp_basicsize = sizeof(SP),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "replay.storepolicy.StorePolicy, compiled (the same victims in the same order).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)sp_init,
    .tp_dealloc = (destructor)sp_dealloc,
    .tp_methods = sp_methods,
    .tp_getset = sp_getset,
    .tp_as_sequence = &sp_seq,
};

/* ---------------------------------------------------------------- the loop */

static PyObject *s_bucket, *s_events, *s_applied, *s_watermark, *s_late, *s_admitted, *s_fetching, *s_clients,
    *s_pins, *s_first_access, *s_min_clients, *s_admit, *s_cache_key, *s_ts, *s_dirty_keys, *s_size, *s_source,
    *s_refused, *s_free_bytes, *s_state, *s_evicted, *s_cached, *s_failed, *s_fill, *s_fetch, *s_range,
    *s_content_length, *s_empty, *s_clear, *s_post_init, *s_failures;

/* what the loop keeps per partition (streams mode): the PartitionHeat and its bound methods */
typedef struct {
    PyObject *ph, *fold, *decide, *admit_m, *on_event, *rule_for_key, *cache;
    double grace, unanswered;
    int unanswered_set, compiled;
    long long offset;
    /* PartitionHeat's applied, late and watermark, kept here between folds (nothing else in a
     * replay reads or writes applied and late; the watermark, which decide and the cache events
     * read, is written back whenever it moves) and written back when the loop ends */
    long long applied, late;
    double wm;
    int ready;
    /* engine.compiled_fold(ph): streams._fold.fold and its 17 arguments (0, 1, 14 filled in per
     * call), or NULL: the loop calls P->fold (_fold_compiled / _fold_reference) */
    PyObject *direct_fn, *direct_args;
    long long direct_min; /* its min_clients argument: >= 0, the fold left out the keys with fewer */
} Part;

/* what the loop knows per key, by the key's number (Prepared.keys): arrays, not dicts */
typedef struct {
    PyObject **size;       /* the object size (borrowed from ctx["sizes"]) */
    PyObject **first_seen; /* borrowed from ctx["first_seen"]; NULL: none (TLS-only keys) */
    PyObject **host;       /* borrowed from ctx["host_of"] */
    /* ctx["events"] (Prepared.events, borrowed): the CacheEvents handed to the index, made once
     * per key and kind and kept for the next runs in this process: [3 * kid] cached by a fill,
     * [3 * kid + 1] cached by a fetch, [3 * kid + 2] evicted (a key's size is fixed by prepare) */
    PyObject *events;
    PyObject *event_type; /* ctx["CacheEvent"] */
    long long *partition;  /* the partition it was last stored from (engine.run's partition_of), -1 */
    Py_ssize_t *row;       /* its StorePolicy row, -1 */
    char *hit_once;
    Py_ssize_t n;
} Keys;

typedef struct {
    /* from ctx (borrowed) */
    PyObject *steer, *key_ids, *fill_classes, *fill_ok, *failed, *quota, *plan_space, *huge, *index_apply, *cached,
        *is_steered, *never_steer, *overrides, *never, *event_cls, *may_fill, *admission, *first_hit, *pending,
        *steered_ever, *parts_dict, *offsets, *emitted, *make_part, *adm_fold, *adm_cache_event, *max_fill,
        *compiled_fold;
    SP *policy;
    int streams;
    Part *parts;
    Py_ssize_t nparts;
    Keys k;
    Rows victims;
    PyObject *kw_evicted, *kw_cached; /* kwnames of the CacheEvent calls */
    /* the first CacheEvent of each kind (Keys.events' order) made by the constructor: the next
     * ones are copies of it with their own key and size (make_event) */
    PyObject *tmpl[3];
    PyObject *field_names; /* CacheEvent's fields, in order */
    /* their slot descriptors on the class (or NULL: not all are slots), the templates' values,
     * and CacheEvent.__post_init__ as a plain function (or NULL: looked up per event) */
    PyObject *field_descr, *tmpl_vals[3], *post_init;
    /* ctx["CacheView"] (borrowed) and its fields ("state", "ts", "failures", "fetching"), or
     * NULL: the PartitionHeat's own on_cache_event is called */
    PyObject *view_cls, *view_names, *view_descr;
    PyObject *empty;
    long long hits, bytes_local, prefetches, bytes_prefetched, fills, bytes_filled, fetch_failures, refused,
        evictions, never_hit;
    long long *series;
    Py_ssize_t bins;
    double t0, scale;
} Loop;

static int keys_init(Keys *k, PyObject *keys, PyObject *sizes, PyObject *first_seen, PyObject *host_of,
                     PyObject *events) {
    Py_ssize_t n = k->n = PyList_GET_SIZE(keys);
    if (!PyList_Check(events) || PyList_GET_SIZE(events) != 3 * n) {
        PyErr_SetString(PyExc_ValueError, "loop(): events must be a list of 3 per key");
        return -1;
    }
    for (Py_ssize_t i = 0; i < 3 * n; i++) { /* None or a CacheEvent the loop made */
        PyObject *e = PyList_GET_ITEM(events, i);
        if (e != Py_None && Py_TYPE(e) != (PyTypeObject *)k->event_type) {
            PyErr_SetString(PyExc_TypeError, "loop(): events must hold None or CacheEvents");
            return -1;
        }
    }
    k->events = events;
    size_t m = (size_t)(n ? n : 1);
    k->size = PyMem_Calloc(m, sizeof(PyObject *));
    k->first_seen = PyMem_Calloc(m, sizeof(PyObject *));
    k->host = PyMem_Calloc(m, sizeof(PyObject *));
    k->partition = PyMem_Malloc(m * sizeof(long long));
    k->row = PyMem_Malloc(m * sizeof(Py_ssize_t));
    k->hit_once = PyMem_Calloc(m, 1);
    if (!k->size || !k->first_seen || !k->host || !k->partition || !k->row ||
        !k->hit_once) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *key = PyList_GET_ITEM(keys, i);
        k->partition[i] = -1;
        k->row[i] = -1;
        k->size[i] = PyDict_GetItemWithError(sizes, key);
        k->host[i] = k->size[i] ? PyDict_GetItemWithError(host_of, key) : NULL;
        if (!k->host[i]) {
            if (!PyErr_Occurred()) PyErr_SetObject(PyExc_KeyError, key);
            return -1;
        }
        k->first_seen[i] = PyDict_GetItemWithError(first_seen, key);
        if (!k->first_seen[i] && PyErr_Occurred()) return -1;
    }
    return 0;
}

static void keys_free(Keys *k) {
    for (Py_ssize_t i = 0; i < k->n; i++) {
    }
    PyMem_Free(k->size);
    PyMem_Free(k->first_seen);
    PyMem_Free(k->host);
    PyMem_Free(k->partition);
    PyMem_Free(k->row);
    PyMem_Free(k->hit_once);
}

/* the number of a key (from an admission) */
static Py_ssize_t key_id(Loop *L, PyObject *key) {
    PyObject *got = PyDict_GetItemWithError(L->key_ids, key);
    if (!got) {
        if (!PyErr_Occurred()) PyErr_SetObject(PyExc_KeyError, key);
        return -1;
    }
    Py_ssize_t kid = PyLong_AsSsize_t(got);
    if (kid < 0 || kid >= L->k.n) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_IndexError, "key number out of range");
        return -1;
    }
    return kid;
}

static Part *get_part(Loop *L, long long partition, PyObject *pobj) {
    if (partition < 0 || partition > (1 << 20)) {
        PyErr_SetString(PyExc_ValueError, "partition bucket out of range for the compiled loop");
        return NULL;
    }
    if (partition >= L->nparts) {
        Py_ssize_t n = (Py_ssize_t)partition + 1;
        Part *np = PyMem_Realloc(L->parts, sizeof(Part) * (size_t)n);
        if (!np) {
            PyErr_NoMemory();
            return NULL;
        }
        memset(np + L->nparts, 0, sizeof(Part) * (size_t)(n - L->nparts));
        L->parts = np;
        L->nparts = n;
    }
    Part *P = &L->parts[partition];
    if (P->ready) return P;
    PyObject *ph = PyDict_GetItemWithError(L->parts_dict, pobj);
    if (ph) {
        Py_INCREF(ph);
    } else {
        if (PyErr_Occurred()) return NULL;
        ph = PyObject_CallOneArg(L->make_part, pobj);
        if (!ph) return NULL;
    }
    P->ph = ph;
    PyObject *compiled = PyObject_GetAttrString(ph, "compiled");
    if (!compiled) return NULL;
    P->compiled = PyObject_IsTrue(compiled);
    Py_DECREF(compiled);
    if (P->compiled < 0) return NULL;
    P->fold = PyObject_GetAttrString(ph, P->compiled ? "_fold_compiled" : "_fold_reference");
    P->decide = PyObject_GetAttrString(ph, "decide");
    P->admit_m = PyObject_GetAttrString(ph, "_admit");
    P->on_event = PyObject_GetAttrString(ph, "on_cache_event");
    P->cache = PyObject_GetAttrString(ph, "cache");
    PyObject *rules = PyObject_GetAttrString(ph, "rules");
    if (!P->fold || !P->decide || !P->admit_m || !P->on_event || !P->cache || !rules) {
        Py_XDECREF(rules);
        return NULL;
    }
    P->rule_for_key = PyObject_GetAttrString(rules, "rule_for_key");
    PyObject *spec = PyObject_GetAttrString(ph, "spec");
    PyObject *grace = spec ? PyObject_GetAttrString(spec, "grace_s") : NULL;
    PyObject *backoff = PyObject_GetAttrString(rules, "backoff");
    PyObject *un = backoff ? PyObject_GetAttrString(backoff, "unanswered_s") : NULL;
    Py_DECREF(rules);
    Py_XDECREF(spec);
    Py_XDECREF(backoff);
    if (!P->rule_for_key || !grace || !un) {
        Py_XDECREF(grace);
        Py_XDECREF(un);
        return NULL;
    }
    P->grace = PyFloat_AsDouble(grace);
    P->unanswered = PyFloat_AsDouble(un);
    P->unanswered_set = PyObject_IsTrue(un);
    Py_DECREF(grace);
    Py_DECREF(un);
    if (PyErr_Occurred()) return NULL;
    /* StreamsAdmission.offsets: a Counter (0 when missing) */
    PyObject *off = PyDict_GetItemWithError(L->offsets, pobj);
    if (!off && PyErr_Occurred()) return NULL;
    P->offset = off ? PyLong_AsLongLong(off) : 0;
    if (P->offset == -1 && PyErr_Occurred()) return NULL;
    PyObject *applied = PyObject_GetAttr(ph, s_applied);
    PyObject *wm = applied ? PyObject_GetAttr(ph, s_watermark) : NULL;
    P->applied = applied ? PyLong_AsLongLong(applied) : -1;
    P->wm = wm ? PyFloat_AsDouble(wm) : -1.0;
    Py_XDECREF(applied);
    Py_XDECREF(wm);
    if (PyErr_Occurred()) return NULL;
    P->late = 0;
    P->direct_fn = P->direct_args = NULL;
    if (L->compiled_fold && L->compiled_fold != Py_None) {
        PyObject *got = PyObject_CallOneArg(L->compiled_fold, ph);
        if (!got) return NULL;
        if (got != Py_None) {
            if (!PyTuple_Check(got) || PyTuple_GET_SIZE(got) != 2 || !PyList_Check(PyTuple_GET_ITEM(got, 1)) ||
                PyList_GET_SIZE(PyTuple_GET_ITEM(got, 1)) != 17) {
                Py_DECREF(got);
                PyErr_SetString(PyExc_TypeError, "compiled_fold must return None or (fold, [17 arguments])");
                return NULL;
            }
            P->direct_fn = Py_NewRef(PyTuple_GET_ITEM(got, 0));
            P->direct_args = Py_NewRef(PyTuple_GET_ITEM(got, 1));
            P->direct_min = PyLong_AsLongLong(PyList_GET_ITEM(P->direct_args, 16));
        }
        Py_DECREF(got);
        if (PyErr_Occurred()) return NULL;
    }
    P->ready = 1;
    return P;
}

static void parts_free(Loop *L) {
    for (Py_ssize_t k = 0; k < L->nparts; k++) {
        Part *P = &L->parts[k];
        Py_XDECREF(P->ph);
        Py_XDECREF(P->fold);
        Py_XDECREF(P->decide);
        Py_XDECREF(P->admit_m);
        Py_XDECREF(P->on_event);
        Py_XDECREF(P->rule_for_key);
        Py_XDECREF(P->cache);
        Py_XDECREF(P->direct_fn);
        Py_XDECREF(P->direct_args);
    }
    PyMem_Free(L->parts);
}

/* PartitionHeat.on_cache_event(key, state, its watermark), done here as it does it (its Python
 * call and CacheView's frozen-dataclass __init__ were ~8k instructions per store and eviction,
 * a tenth of a quota setting): failures = the old view's + 1 for "failed" (1 without one), else
 * 0; cache[key] = CacheView(state, watermark, failures, False), made as its constructor makes it
 * (object.__new__, then the generic setattr per field: an equal view). Used only when the
 * PartitionHeat is streams' own class and CacheView has exactly these fields (engine.run checks;
 * tests/replay/test_compiled.py compares the views dicts with the reference's). */
static int on_cache_event(Loop *L, Part *P, PyObject *key, PyObject *state) {
    long long failures = 0;
    if (state == s_failed || PyUnicode_Compare(state, s_failed) == 0) {
        PyObject *old = PyDict_GetItemWithError(P->cache, key);
        if (old) {
            PyObject *f = PyObject_GetAttr(old, s_failures);
            if (!f) return -1;
            failures = PyLong_AsLongLong(f);
            Py_DECREF(f);
            if (failures == -1 && PyErr_Occurred()) return -1;
            failures += 1;
        } else {
            if (PyErr_Occurred()) return -1;
            failures = 1;
        }
    } else if (PyErr_Occurred()) {
        return -1;
    }
    PyObject *values[4];
    values[0] = state;
    Py_INCREF(state);
    values[1] = PyFloat_FromDouble(P->wm);
    values[2] = PyLong_FromLongLong(failures);
    values[3] = Py_False;
    Py_INCREF(Py_False);
    PyObject *view = values[1] && values[2] ? PyBaseObject_Type.tp_new((PyTypeObject *)L->view_cls, L->empty, NULL)
                                            : NULL;
    int rc = view ? 0 : -1;
    for (int i = 0; i < 4; i++) {
        PyObject *d = L->view_descr ? PyTuple_GET_ITEM(L->view_descr, i) : NULL;
        if (rc == 0 && (d ? Py_TYPE(d)->tp_descr_set(d, view, values[i])
                          : PyObject_GenericSetAttr(view, PyTuple_GET_ITEM(L->view_names, i), values[i])) < 0)
            rc = -1;
        Py_XDECREF(values[i]);
    }
    if (rc == 0) rc = PyDict_SetItem(P->cache, key, view);
    Py_XDECREF(view);
    return rc;
}

/* StreamsAdmission.cache_event / admission.cache_event */
static int cache_event(Loop *L, long long partition, PyObject *key, PyObject *state) {
    PyObject *r;
    PyObject *pobj = PyLong_FromLongLong(partition);
    if (!pobj) return -1;
    if (L->streams) {
        Part *P = get_part(L, partition, pobj);
        if (P && L->view_names) {
            Py_DECREF(pobj);
            return on_cache_event(L, P, key, state);
        }
        PyObject *wm = P ? PyObject_GetAttr(P->ph, s_watermark) : NULL;
        if (!wm) {
            Py_DECREF(pobj);
            return -1;
        }
        PyObject *args[3] = {key, state, wm};
        r = PyObject_Vectorcall(P->on_event, args, 3, NULL);
        Py_DECREF(wm);
    } else {
        PyObject *args[3] = {pobj, key, state};
        r = PyObject_Vectorcall(L->adm_cache_event, args, 3, NULL);
    }
    Py_DECREF(pobj);
    if (!r) return -1;
    Py_DECREF(r);
    return 0;
}

static int truth_of(PyObject *dict, PyObject *key) {
    PyObject *v = PyDict_GetItemWithError(dict, key);
    if (!v) {
        if (!PyErr_Occurred()) PyErr_SetObject(PyExc_KeyError, key);
        return -1;
    }
    return PyObject_IsTrue(v);
}

/* engine.run's steered(): the DNS's rule for host, asked when one of its objects comes or goes */
static int steered(Loop *L, PyObject *host) {
    PyObject *nv = PyDict_GetItemWithError(L->never, host);
    if (nv) {
        Py_INCREF(nv);
    } else {
        if (PyErr_Occurred()) return -1;
        PyObject *args[2] = {host, L->overrides};
        nv = PyObject_Vectorcall(L->never_steer, args, 2, NULL);
        if (!nv || PyDict_SetItem(L->never, host, nv) < 0) {
            Py_XDECREF(nv);
            return -1;
        }
    }
    PyObject *is = PyObject_CallOneArg(L->is_steered, host);
    if (!is) {
        Py_DECREF(nv);
        return -1;
    }
    PyObject *value;
    int t = PyObject_IsTrue(is);
    if (t < 0) {
        Py_DECREF(nv);
        Py_DECREF(is);
        return -1;
    }
    if (t) {  /* is_steered(host) and not nv */
        int n = PyObject_IsTrue(nv);
        if (n < 0) {
            Py_DECREF(nv);
            Py_DECREF(is);
            return -1;
        }
        value = n ? Py_False : Py_True;
        Py_INCREF(value);
        Py_DECREF(is);
    } else {
        value = is;
    }
    Py_DECREF(nv);
    int rc = PyDict_SetItem(L->steer, host, value);
    Py_DECREF(value);
    return rc;
}

static int index_apply(Loop *L, PyObject *ev) {
    PyObject *r = PyObject_CallOneArg(L->index_apply, ev);
    if (!r) return -1;
    Py_DECREF(r);
    return 0;
}

static int series_add(Loop *L, double ts, int col, long long n) {
    long long i = (long long)((ts - L->t0) * L->scale);
    if (i > L->bins - 1) i = L->bins - 1;
    if (i < 0) i += L->bins; /* a Python list's negative index */
    if (i < 0) {
        PyErr_SetString(PyExc_IndexError, "list index out of range");
        return -1;
    }
    L->series[i * 3 + col] += n;
    return 0;
}

/* cls's data descriptor of each name, when every one is a slot's (member) descriptor defined on
 * cls itself (what the generic setattr would find): a new tuple; else NULL (no error set) */
static PyObject *slot_descriptors(PyObject *cls, PyObject *names) {
    PyObject *dict = ((PyTypeObject *)cls)->tp_dict;
    Py_ssize_t n = PyTuple_GET_SIZE(names);
    PyObject *out = PyTuple_New(n);
    if (!out) return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *d = dict ? PyDict_GetItemWithError(dict, PyTuple_GET_ITEM(names, i)) : NULL;
        if (!d || !PyObject_TypeCheck(d, &PyMemberDescr_Type) || !Py_TYPE(d)->tp_descr_set ||
            _PyType_Lookup((PyTypeObject *)cls, PyTuple_GET_ITEM(names, i)) != d) {
            Py_DECREF(out);
            return NULL;
        }
        Py_INCREF(d);
        PyTuple_SET_ITEM(out, i, d);
    }
    return out;
}

/* The CacheEvent of kind (0 cached by a fill, 1 cached by a fetch, 2 evicted) for key (new
 * reference). CacheEvent(cache_key=key, state=..., size=size, source=...) made by its constructor
 * costs ~15k instructions (a frozen dataclass: one object.__setattr__ per field), a tenth of a
 * quota setting's first run: the first of each kind is made so, the next ones as its copy with
 * this key and size, set as the constructor sets them (object.__new__, then the generic setattr
 * per field, then __post_init__): an equal event (tests/replay/test_compiled.py compares them). */
static PyObject *make_event(Loop *L, int kind, PyObject *key, PyObject *size_obj, PyObject *source) {
    PyObject *t = L->tmpl[kind];
    if (!t) {
        PyObject *ev;
        if (kind == 2) {
            PyObject *cargs[2] = {key, s_evicted};
            ev = PyObject_Vectorcall(L->event_cls, cargs, 0, L->kw_evicted);
        } else {
            PyObject *cargs[4] = {key, s_cached, size_obj, source};
            ev = PyObject_Vectorcall(L->event_cls, cargs, 0, L->kw_cached);
        }
        if (!ev) return NULL;
        Py_INCREF(ev);
        L->tmpl[kind] = ev;
        return ev;
    }
    PyTypeObject *tp = (PyTypeObject *)L->event_cls;
    if (!L->tmpl_vals[kind]) { /* the template's field values, read once */
        Py_ssize_t nf = PyTuple_GET_SIZE(L->field_names);
        PyObject *vals = PyTuple_New(nf);
        if (!vals) return NULL;
        for (Py_ssize_t i = 0; i < nf; i++) {
            PyObject *v = PyObject_GetAttr(t, PyTuple_GET_ITEM(L->field_names, i));
            if (!v) {
                Py_DECREF(vals);
                return NULL;
            }
            PyTuple_SET_ITEM(vals, i, v);
        }
        L->tmpl_vals[kind] = vals;
    }
    PyObject *ev = PyBaseObject_Type.tp_new(tp, L->empty, NULL);
    if (!ev) return NULL;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(L->field_names); i++) {
        PyObject *name = PyTuple_GET_ITEM(L->field_names, i), *v;
        if (name == s_cache_key) {
            v = key;
        } else if (name == s_size && kind != 2) {
            v = size_obj;
        } else {
            v = PyTuple_GET_ITEM(L->tmpl_vals[kind], i);
        }
        /* the generic setattr finds the field's slot descriptor on the type and calls its
         * __set__: the loop found them once (field_descr), or the generic setattr itself */
        PyObject *d = L->field_descr ? PyTuple_GET_ITEM(L->field_descr, i) : NULL;
        int bad = d ? Py_TYPE(d)->tp_descr_set(d, ev, v) : PyObject_GenericSetAttr(ev, name, v);
        if (bad < 0) {
            Py_DECREF(ev);
            return NULL;
        }
    }
    PyObject *r = L->post_init ? PyObject_CallOneArg(L->post_init, ev) : PyObject_CallMethodNoArgs(ev, s_post_init);
    if (!r) {
        Py_DECREF(ev);
        return NULL;
    }
    Py_DECREF(r);
    return ev;
}

/* engine.run's store(): 1 stored, 0 refused, -1 error */
static int store(Loop *L, PyObject *key, Py_ssize_t kid, double ts, PyObject *source, PyObject *heat_obj,
                 long long partition) {
    Keys *K = &L->k;
    PyObject *size_obj = K->size[kid];
    long long size = PyLong_AsLongLong(size_obj);
    long long heat = PyLong_AsLongLong(heat_obj);
    if ((size == -1 || heat == -1) && PyErr_Occurred()) return -1;
    PyObject *used = PyLong_FromLongLong(L->policy->used_bytes);
    if (!used) return -1;
    PyObject *args[4] = {L->quota, size_obj, used, L->huge};
    PyObject *plan = PyObject_Vectorcall(L->plan_space, args, 4, NULL);
    Py_DECREF(used);
    if (!plan) return -1;
    PyObject *refused = PyObject_GetAttr(plan, s_refused);
    PyObject *free_obj = refused ? PyObject_GetAttr(plan, s_free_bytes) : NULL;
    Py_DECREF(plan);
    if (!free_obj) {
        Py_XDECREF(refused);
        return -1;
    }
    int is_refused = PyObject_IsTrue(refused);
    Py_DECREF(refused);
    long long free_bytes = PyLong_AsLongLong(free_obj);
    int has_free = PyObject_IsTrue(free_obj);
    Py_DECREF(free_obj);
    if (is_refused < 0 || has_free < 0 || (free_bytes == -1 && PyErr_Occurred())) return -1;
    if (is_refused) {
        L->refused++;
        return 0;
    }
    if (has_free) {
        if (sp_evict(L->policy, free_bytes, &L->victims) < 0) return -1;
        for (Py_ssize_t i = 0; i < L->victims.n; i++) {
            Row *vr = &L->policy->rows[L->victims.v[i]];
            PyObject *victim = vr->key;
            Py_ssize_t vk = vr->kid;
            if (vk < 0) {
                PyErr_SetString(PyExc_RuntimeError, "a victim the loop did not store");
                return -1;
            }
            L->evictions++;
            PyObject *ev = PyList_GET_ITEM(K->events, 3 * vk + 2);
            if (ev == Py_None) {
                ev = make_event(L, 2, victim, NULL, NULL);
                if (!ev || PyList_SetItem(K->events, 3 * vk + 2, ev) < 0) return -1; /* the list owns it */
            }
            if (index_apply(L, ev) < 0) return -1;
            PyObject *vhost = K->host[vk];
            int st = truth_of(L->steer, vhost);
            if (st < 0 || (st && steered(L, vhost) < 0)) return -1;
            long long vp = K->partition[vk];
            if (cache_event(L, vp >= 0 ? vp : partition, victim, s_evicted) < 0) return -1;
            int pend = PySet_Contains(L->pending, victim);
            if (pend < 0) return -1;
            if (pend) {
                if (PySet_Discard(L->pending, victim) < 0) return -1;
                L->never_hit++;
            }
        }
    }
    Py_ssize_t ri = K->row[kid];
    if (ri < 0 && (ri = K->row[kid] = sp_row(L->policy, key, kid)) < 0) return -1;
    if (sp_insert_row(L->policy, ri, size, ts, heat) < 0) return -1;
    /* engine.run makes a new event when the size or the source differs from the last one; the
     * size of a key is fixed by prepare, so one event per key and source does the same */
    Py_ssize_t slot = 3 * kid + (source == s_fetch);
    PyObject *ev = PyList_GET_ITEM(K->events, slot);
    if (ev == Py_None) {
        ev = make_event(L, (int)(slot - 3 * kid), key, size_obj, source);
        if (!ev || PyList_SetItem(K->events, slot, ev) < 0) return -1; /* the list owns it */
    }
    if (index_apply(L, ev) < 0) return -1;
    PyObject *host = K->host[kid];
    int st = truth_of(L->steer, host);
    if (st < 0) return -1;
    if (!st) {
        if (steered(L, host) < 0) return -1;
        st = truth_of(L->steer, host);
        if (st < 0 || (st && PySet_Add(L->steered_ever, host) < 0)) return -1;
    }
    K->partition[kid] = partition;
    if (cache_event(L, partition, key, s_cached) < 0) return -1;
    return 1;
}

/* PartitionHeat.fold (replay's call: no clock, no sizes) and StreamsAdmission.fold after it:
 * the admitted (key, ts, clients) appended to out */
static int streams_fold(Loop *L, PyObject *pobj, PyObject *events, PyObject *out) {
    long long partition = PyLong_AsLongLong(pobj);
    if (partition == -1 && PyErr_Occurred()) return -1;
    Part *P = get_part(L, partition, pobj);
    if (!P) return -1;
    PyObject *ph = P->ph;
    long long offset = P->offset++;
    PyObject *hot = NULL, *res = NULL;
    int rc = -1, direct = 0;
    if (offset <= P->applied) return 0; /* skipped: already in the durable state */
    PyObject *batch = PySequence_Fast(events, "events must be a sequence");
    if (!batch) return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(batch);
    PyObject **items = PySequence_Fast_ITEMS(batch);
    double wm = P->wm;
    if (n) {
        double newest = -INFINITY;
        for (Py_ssize_t i = 0; i < n; i++) {
            PyObject *it = items[i], *ts; /* ev[0]: a RequestEvent is a tuple */
            if (PyTuple_Check(it) && PyTuple_GET_SIZE(it) > 0) {
                ts = PyTuple_GET_ITEM(it, 0);
                Py_INCREF(ts);
            } else if (!(ts = PySequence_GetItem(it, 0))) {
                goto done;
            }
            double v = PyFloat_AsDouble(ts);
            Py_DECREF(ts);
            if (v == -1.0 && PyErr_Occurred()) goto done;
            if (i == 0 || v > newest) newest = v;
        }
        if (newest > wm) wm = newest;
    }
    double too_old = wm - P->grace;
    {
        PyObject *too = PyFloat_FromDouble(too_old), *w = PyFloat_FromDouble(wm);
        if (!too || !w) {
            Py_XDECREF(too);
            Py_XDECREF(w);
            goto done;
        }
        direct = 0;
        if (P->direct_fn) { /* _fold_compiled's call, while no operator pin makes it do more */
            PyObject *pins = PyObject_GetAttr(ph, s_pins);
            if (!pins) {
                Py_DECREF(too);
                Py_DECREF(w);
                goto done;
            }
            direct = pins == Py_None;
            Py_DECREF(pins);
        }
        if (direct) {
            PyObject *args[17];
            for (Py_ssize_t i = 0; i < 17; i++) args[i] = PyList_GET_ITEM(P->direct_args, i);
            args[0] = batch;
            args[1] = too;
            args[14] = w;
            res = PyObject_Vectorcall(P->direct_fn, args, 17, NULL);
        } else if (P->compiled) {
            PyObject *args[4] = {batch, too, w, Py_None};
            res = PyObject_Vectorcall(P->fold, args, 4, NULL);
        } else {
            PyObject *args[3] = {batch, too, Py_None};
            res = PyObject_Vectorcall(P->fold, args, 3, NULL);
        }
        Py_DECREF(too);
        if (!res) {
            Py_DECREF(w);
            goto done;
        }
        int bad = wm != P->wm ? PyObject_SetAttr(ph, s_watermark, w) : 0; /* fold sets the same value */
        Py_DECREF(w);
        if (bad < 0) goto done;
        P->wm = wm;
    }
    if (!PyTuple_Check(res) || PyTuple_GET_SIZE(res) != 2 || !PyList_Check(PyTuple_GET_ITEM(res, 1))) {
        PyErr_SetString(PyExc_TypeError, "the fold must return (late, [(key, heat, ts)])");
        goto done;
    }
    {
        long long late = PyLong_AsLongLong(PyTuple_GET_ITEM(res, 0));
        if (late == -1 && PyErr_Occurred()) goto done;
        P->applied = offset;
        P->late += late;
    }
    PyObject *touched = PyTuple_GET_ITEM(res, 1);
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(touched); i++) {
        PyObject *t = PyList_GET_ITEM(touched, i);
        if (!PyTuple_Check(t) || PyTuple_GET_SIZE(t) != 3) {
            PyErr_SetString(PyExc_TypeError, "touched entries must be (key, heat, ts)");
            goto done;
        }
        PyObject *ck = PyTuple_GET_ITEM(t, 0), *kh = PyTuple_GET_ITEM(t, 1), *ts = PyTuple_GET_ITEM(t, 2);
        /* PartitionHeat.fold's cheap checks, which streams._fold.fold made already on the same
         * state and watermark when called directly (the admitted one always, the clients one
         * with min_clients >= 0): then only decide is left */
        if (direct) {
            if (P->direct_min >= 0) goto decide;
            goto clients;
        }
        PyObject *adm = PyObject_GetAttr(kh, s_admitted);
        if (!adm) goto done;
        int admitted = PyObject_IsTrue(adm);
        double adm_v = PyFloat_AsDouble(adm);
        Py_DECREF(adm);
        if (admitted < 0 || (adm_v == -1.0 && PyErr_Occurred())) goto done;
        if (admitted) {
            PyObject *view = PyDict_GetItemWithError(P->cache, ck);
            int fetching = 1;
            if (view) {
                PyObject *fv = PyObject_GetAttr(view, s_fetching);
                if (!fv) goto done;
                fetching = PyObject_IsTrue(fv);
                Py_DECREF(fv);
                if (fetching < 0) goto done;
            } else if (PyErr_Occurred()) {
                goto done;
            }
            if (fetching && !(P->unanswered_set && wm >= adm_v + P->unanswered)) continue;
        }
    clients:;
        PyObject *clients = PyObject_GetAttr(kh, s_clients);
        if (!clients) goto done;
        if (clients != Py_None) {
            PyObject *pins = PyObject_GetAttr(ph, s_pins);
            if (!pins) {
                Py_DECREF(clients);
                goto done;
            }
            int no_pins = pins == Py_None;
            Py_DECREF(pins);
            if (no_pins) {
                PyObject *rule = PyObject_CallOneArg(P->rule_for_key, ck);
                PyObject *fa = rule ? PyObject_GetAttr(rule, s_first_access) : NULL;
                PyObject *mc = fa ? PyObject_GetAttr(rule, s_min_clients) : NULL;
                Py_XDECREF(rule);
                Py_ssize_t have = mc ? PyObject_Length(clients) : -1;
                PyObject *hv = have >= 0 ? PyLong_FromSsize_t(have) : NULL;
                int first = fa ? PyObject_IsTrue(fa) : -1;
                int fewer = hv ? PyObject_RichCompareBool(hv, mc, Py_LT) : -1;
                Py_XDECREF(fa);
                Py_XDECREF(mc);
                Py_XDECREF(hv);
                if (first < 0 || fewer < 0) {
                    Py_DECREF(clients);
                    goto done;
                }
                if (!first && fewer) {
                    Py_DECREF(clients);
                    continue;
                }
            }
        }
        Py_DECREF(clients);
    decide:;
        PyObject *dargs[2] = {ck, kh};
        PyObject *decision = PyObject_Vectorcall(P->decide, dargs, 2, NULL);
        if (!decision) goto done;
        PyObject *admit = PyObject_GetAttr(decision, s_admit);
        int yes = admit ? PyObject_IsTrue(admit) : -1;
        Py_XDECREF(admit);
        if (yes < 0) {
            Py_DECREF(decision);
            goto done;
        }
        if (yes) {
            PyObject *aargs[4] = {ck, kh, ts, decision};
            PyObject *h = PyObject_Vectorcall(P->admit_m, aargs, 4, NULL);
            if (!h) {
                Py_DECREF(decision);
                goto done;
            }
            if (!hot && !(hot = PyList_New(0))) {
                Py_DECREF(h);
                Py_DECREF(decision);
                goto done;
            }
            int bad = PyList_Append(hot, h);
            Py_DECREF(h);
            if (bad < 0) {
                Py_DECREF(decision);
                goto done;
            }
        }
        Py_DECREF(decision);
    }
    /* StreamsAdmission.fold: the shell's table write is not replayed; the dirty set is dropped */
    {
        PyObject *dirty = PyObject_GetAttr(ph, s_dirty_keys);
        if (!dirty) goto done;
        Py_ssize_t nd = PyObject_Length(dirty);
        if (nd < 0) {
            Py_DECREF(dirty);
            goto done;
        }
        if (nd > 4096) {
            PyObject *r = PyObject_CallMethodNoArgs(dirty, s_clear);
            if (!r) {
                Py_DECREF(dirty);
                goto done;
            }
            Py_DECREF(r);
        }
        Py_DECREF(dirty);
    }
    if (hot) {
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(hot); i++) {
            PyObject *h = PyList_GET_ITEM(hot, i);
            PyObject *ck = PyObject_GetAttr(h, s_cache_key);
            PyObject *ts = ck ? PyObject_GetAttr(h, s_ts) : NULL;
            PyObject *cl = ts ? PyObject_GetAttr(h, s_clients) : NULL;
            PyObject *pair = cl ? PyTuple_Pack(2, ck, ts) : NULL;
            PyObject *triple = pair ? PyTuple_Pack(3, ck, ts, cl) : NULL;
            int bad = !triple || PyList_Append(L->emitted, pair) < 0 || PyList_Append(out, triple) < 0;
            Py_XDECREF(ck);
            Py_XDECREF(ts);
            Py_XDECREF(cl);
            Py_XDECREF(pair);
            Py_XDECREF(triple);
            if (bad) goto done;
        }
    }
    rc = 0;
done:
    Py_XDECREF(hot);
    Py_XDECREF(res);
    Py_DECREF(batch);
    return rc;
}

static int fill_allowed(Loop *L, PyObject *fc_obj) {
    Py_ssize_t fc = PyLong_AsSsize_t(fc_obj);
    if (fc == -1 && PyErr_Occurred()) return -1;
    if (fc < 0 || fc >= PyList_GET_SIZE(L->fill_ok)) {
        PyErr_SetString(PyExc_IndexError, "fill class out of range");
        return -1;
    }
    PyObject *ok = PyList_GET_ITEM(L->fill_ok, fc);
    if (ok == Py_None) { /* the edge's fill rule on the answer as logged */
        PyObject *cls = PyList_GET_ITEM(L->fill_classes, fc);
        if (!PyTuple_Check(cls) || PyTuple_GET_SIZE(cls) != 4) {
            PyErr_SetString(PyExc_TypeError, "fill classes must be 4-tuples");
            return -1;
        }
        PyObject *method = PyTuple_GET_ITEM(cls, 0), *rng = PyTuple_GET_ITEM(cls, 1);
        PyObject *status = PyTuple_GET_ITEM(cls, 2), *size = PyTuple_GET_ITEM(cls, 3);
        PyObject *req = PyDict_New(), *resp = PyDict_New(), *len = PyObject_Str(size);
        int bad = !req || !resp || !len || (rng != Py_None && PyDict_SetItem(req, s_range, rng) < 0) ||
                  PyDict_SetItem(resp, s_content_length, len) < 0;
        PyObject *why = NULL;
        if (!bad) {
            PyObject *args[5] = {method, req, status, resp, L->max_fill};
            why = PyObject_Vectorcall(L->may_fill, args, 5, NULL);
        }
        Py_XDECREF(req);
        Py_XDECREF(resp);
        Py_XDECREF(len);
        if (!why) return -1;
        int eq = PyObject_RichCompareBool(why, s_empty, Py_EQ);
        Py_DECREF(why);
        if (eq < 0) return -1;
        ok = eq ? Py_True : Py_False;
        Py_INCREF(ok);
        if (PyList_SetItem(L->fill_ok, fc, ok) < 0) return -1;
    }
    return PyObject_IsTrue(ok);
}

#define CTX(field, name)                                                          \
    do {                                                                          \
        L.field = PyDict_GetItemString(ctx, name);                                \
        if (!L.field) {                                                           \
            PyErr_Format(PyExc_KeyError, "loop(): ctx has no %s", name);          \
            goto fail;                                                            \
        }                                                                         \
    } while (0)

static PyObject *loop(PyObject *self, PyObject *ctx) {
    (void)self;
    if (!PyDict_Check(ctx)) {
        PyErr_SetString(PyExc_TypeError, "loop(ctx): ctx must be a dict");
        return NULL;
    }
    Loop L;
    memset(&L, 0, sizeof(L));
    PyObject *batches, *rows, *batch_ts, *batch_bytes, *series_list, *policy, *streams, *fill_on_o, *prefetch_on_o,
        *bins_o, *t0_o, *scale_o;
    PyObject *result = NULL, *admitted = NULL, *keys, *sizes, *first_seen, *host_of, *events;
    int result_failed = 0;
#define GET(var, name)                                                            \
    do {                                                                          \
        var = PyDict_GetItemString(ctx, name);                                    \
        if (!var) {                                                               \
            PyErr_Format(PyExc_KeyError, "loop(): ctx has no %s", name);          \
            goto fail;                                                            \
        }                                                                         \
    } while (0)
    GET(batches, "batches");
    GET(rows, "rows");
    GET(batch_ts, "batch_ts");
    GET(batch_bytes, "batch_bytes");
    GET(series_list, "series");
    GET(policy, "policy");
    GET(streams, "streams");
    GET(fill_on_o, "fill_on");
    GET(prefetch_on_o, "prefetch_on");
    GET(bins_o, "bins");
    GET(t0_o, "t0");
    GET(scale_o, "scale");
    GET(keys, "keys");
    GET(sizes, "sizes");
    GET(first_seen, "first_seen");
    GET(host_of, "host_of");
    GET(events, "events");
    CTX(steer, "steer");
    CTX(key_ids, "key_ids");
    CTX(fill_classes, "fill_classes");
    CTX(fill_ok, "fill_ok");
    CTX(failed, "failed_fetches");
    CTX(quota, "quota");
    CTX(plan_space, "plan_space");
    CTX(huge, "huge_disk");
    CTX(index_apply, "index_apply");
    CTX(cached, "cached");
    CTX(is_steered, "is_steered");
    CTX(never_steer, "never_steer");
    CTX(overrides, "overrides");
    CTX(never, "never");
    CTX(event_cls, "CacheEvent");
    CTX(may_fill, "may_fill");
    CTX(admission, "admission");
    CTX(first_hit, "first_hit");
    CTX(pending, "pending_prefetch");
    CTX(steered_ever, "steered_ever");
    CTX(max_fill, "max_fill");
    L.compiled_fold = PyDict_GetItemString(ctx, "compiled_fold"); /* optional */
#undef GET
    if (!PyObject_TypeCheck(policy, &SPType)) {
        PyErr_SetString(PyExc_TypeError, "loop(): the policy must be replay._engine.StorePolicy");
        goto fail;
    }
    L.policy = (SP *)policy;
    L.streams = PyObject_IsTrue(streams);
    int fill_on = PyObject_IsTrue(fill_on_o), prefetch_on = PyObject_IsTrue(prefetch_on_o);
    L.bins = PyLong_AsSsize_t(bins_o);
    L.t0 = PyFloat_AsDouble(t0_o);
    L.scale = PyFloat_AsDouble(scale_o);
    if (PyErr_Occurred() || L.streams < 0 || fill_on < 0 || prefetch_on < 0) goto fail;
    if (!PyList_Check(batches) || !PyList_Check(rows) || !PyList_Check(batch_ts) || !PyList_Check(batch_bytes) ||
        !PyList_Check(series_list) || PyList_GET_SIZE(series_list) != L.bins || !PyDict_Check(L.steer) ||
        !PyList_Check(keys) || !PyDict_Check(L.key_ids) || !PyDict_Check(host_of) || !PyDict_Check(sizes) ||
        !PyDict_Check(first_seen) || !PyList_Check(L.fill_classes) || !PyList_Check(L.fill_ok) ||
        !PyDict_Check(L.cached) || !PyDict_Check(L.never) || !PyList_Check(L.first_hit) ||
        !PySet_Check(L.pending) || !PySet_Check(L.steered_ever) || L.bins < 1 ||
        PyList_GET_SIZE(L.fill_classes) != PyList_GET_SIZE(L.fill_ok)) {
        PyErr_SetString(PyExc_TypeError, "loop(): ctx has the wrong types");
        goto fail;
    }
    Py_ssize_t nb = PyList_GET_SIZE(batches);
    if (PyList_GET_SIZE(rows) != nb || PyList_GET_SIZE(batch_ts) != nb || PyList_GET_SIZE(batch_bytes) != nb) {
        PyErr_SetString(PyExc_ValueError, "loop(): batches, rows, batch_ts and batch_bytes must be parallel");
        goto fail;
    }
    if (L.streams) {
        L.parts_dict = PyObject_GetAttrString(L.admission, "parts");
        L.offsets = PyObject_GetAttrString(L.admission, "offsets");
        L.emitted = PyObject_GetAttrString(L.admission, "emitted");
        L.make_part = PyObject_GetAttrString(L.admission, "_part");
        if (!L.parts_dict || !L.offsets || !L.emitted || !L.make_part) goto fail;
        if (!PyDict_Check(L.parts_dict) || !PyDict_Check(L.offsets) || !PyList_Check(L.emitted)) {
            PyErr_SetString(PyExc_TypeError, "loop(): not a StreamsAdmission");
            goto fail;
        }
    } else {
        L.adm_fold = PyObject_GetAttrString(L.admission, "fold");
        L.adm_cache_event = PyObject_GetAttrString(L.admission, "cache_event");
        if (!L.adm_fold || !L.adm_cache_event) goto fail;
    }
    L.k.event_type = L.event_cls;
    if (keys_init(&L.k, keys, sizes, first_seen, host_of, events) < 0) goto fail;
    L.kw_evicted = Py_BuildValue("(ss)", "cache_key", "state");
    L.kw_cached = Py_BuildValue("(ssss)", "cache_key", "state", "size", "source");
    L.empty = PyTuple_New(0);
    {
        PyObject *fields = PyObject_GetAttrString(L.event_cls, "__dataclass_fields__");
        PyObject *names = fields && PyDict_Check(fields) ? PyDict_Keys(fields) : NULL;
        Py_XDECREF(fields);
        if (names) { /* interned, so the loop's s_cache_key / s_size compare by identity */
            L.field_names = PyList_AsTuple(names);
            Py_DECREF(names);
            for (Py_ssize_t i = 0; L.field_names && i < PyTuple_GET_SIZE(L.field_names); i++) {
                PyObject *n = PyTuple_GET_ITEM(L.field_names, i);
                if (!PyUnicode_Check(n)) {
                    PyErr_SetString(PyExc_TypeError, "loop(): CacheEvent field names must be str");
                    Py_CLEAR(L.field_names);
                    break;
                }
                Py_INCREF(n);
                PyUnicode_InternInPlace(&n);
                if (PyTuple_SetItem(L.field_names, i, n) < 0) { /* steals n; the tuple is new */
                    Py_CLEAR(L.field_names);
                    break;
                }
            }
        }
        if (!L.field_names || !L.empty) goto fail;
        L.field_descr = slot_descriptors(L.event_cls, L.field_names);
        if (!L.field_descr && PyErr_Occurred()) goto fail;
        PyObject *pi = PyObject_GetAttr(L.event_cls, s_post_init);
        if (pi && PyFunction_Check(pi)) {
            L.post_init = pi;
        } else {
            Py_XDECREF(pi);
            PyErr_Clear(); /* per event, by name (it raises there if it is missing) */
        }
    }
    L.view_cls = PyDict_GetItemString(ctx, "CacheView"); /* optional: None or absent = call on_cache_event */
    if (L.view_cls && L.view_cls != Py_None) {
        if (!PyType_Check(L.view_cls)) {
            PyErr_SetString(PyExc_TypeError, "loop(): CacheView must be a class");
            goto fail;
        }
        PyObject *fields = PyObject_GetAttrString(L.view_cls, "__dataclass_fields__");
        PyObject *names = fields && PyDict_Check(fields) ? PyDict_Keys(fields) : NULL;
        Py_XDECREF(fields);
        if (!names) {
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "loop(): CacheView must be a dataclass");
            goto fail;
        }
        const char *want[4] = {"state", "ts", "failures", "fetching"};
        int same = PyList_GET_SIZE(names) == 4;
        for (Py_ssize_t i = 0; same && i < 4; i++)
            same = PyUnicode_CompareWithASCIIString(PyList_GET_ITEM(names, i), want[i]) == 0;
        if (same) {
            L.view_names = PyList_AsTuple(names);
            for (Py_ssize_t i = 0; L.view_names && i < 4; i++) {
                PyObject *n = PyTuple_GET_ITEM(L.view_names, i);
                Py_INCREF(n);
                PyUnicode_InternInPlace(&n);
                if (PyTuple_SetItem(L.view_names, i, n) < 0) Py_CLEAR(L.view_names);
            }
        }
        Py_DECREF(names);
        if (same && !L.view_names) goto fail;
        if (L.view_names) {
            L.view_descr = slot_descriptors(L.view_cls, L.view_names);
            if (!L.view_descr && PyErr_Occurred()) goto fail;
        }
    }
    L.series = PyMem_Calloc((size_t)L.bins * 3, sizeof(long long));
    admitted = PyList_New(0);
    if (!L.kw_evicted || !L.kw_cached || !L.series || !admitted) {
        if (!PyErr_Occurred()) PyErr_NoMemory();
        goto fail;
    }

    for (Py_ssize_t bi = 0; bi < nb; bi++) {
        PyObject *batch = PyList_GET_ITEM(batches, bi);
        PyObject *brows = PyList_GET_ITEM(rows, bi);
        double bts = PyFloat_AsDouble(PyList_GET_ITEM(batch_ts, bi));
        long long nbytes = PyLong_AsLongLong(PyList_GET_ITEM(batch_bytes, bi));
        if (PyErr_Occurred()) goto fail;
        if (!PyTuple_Check(brows)) {
            PyErr_SetString(PyExc_TypeError, "loop(): rows must be tuples");
            goto fail;
        }
        PyObject *pobj = PyObject_GetAttr(batch, s_bucket);
        if (!pobj) goto fail;
        long long part = PyLong_AsLongLong(pobj);
        if ((part == -1 && PyErr_Occurred()) || series_add(&L, bts, 0, nbytes) < 0) {
            Py_DECREF(pobj);
            goto fail;
        }
        long long slot_i = (long long)((bts - L.t0) * L.scale);
        if (slot_i > L.bins - 1) slot_i = L.bins - 1;
        if (slot_i < 0) slot_i += L.bins;
        long long local = 0;
        for (Py_ssize_t ri = 0; ri < PyTuple_GET_SIZE(brows); ri++) {
            PyObject *row = PyTuple_GET_ITEM(brows, ri);
            if (!PyTuple_Check(row) || PyTuple_GET_SIZE(row) != 6) {
                PyErr_SetString(PyExc_TypeError, "loop(): a row must be (key, host, bytes, ts, fill class, key number)");
                Py_DECREF(pobj);
                goto fail;
            }
            PyObject *key = PyTuple_GET_ITEM(row, 0), *host = PyTuple_GET_ITEM(row, 1);
            Py_ssize_t kid = PyLong_AsSsize_t(PyTuple_GET_ITEM(row, 5));
            if (kid < 0 || kid >= L.k.n || L.k.size[kid] == NULL) {
                if (!PyErr_Occurred()) PyErr_SetString(PyExc_IndexError, "loop(): key number out of range");
                Py_DECREF(pobj);
                goto fail;
            }
            int st = truth_of(L.steer, host);
            if (st < 0) {
                Py_DECREF(pobj);
                goto fail;
            }
            if (!st) continue; /* the client goes to the origin; the edge never sees it */
            PyObject *ts_obj = PyTuple_GET_ITEM(row, 3);
            double ts = PyFloat_AsDouble(ts_obj);
            if (ts == -1.0 && PyErr_Occurred()) {
                Py_DECREF(pobj);
                goto fail;
            }
            int in = PyDict_Contains(L.cached, key);
            if (in < 0) {
                Py_DECREF(pobj);
                goto fail;
            }
            if (in) {
                long long b = PyLong_AsLongLong(PyTuple_GET_ITEM(row, 2));
                if (b == -1 && PyErr_Occurred()) {
                    Py_DECREF(pobj);
                    goto fail;
                }
                L.hits++;
                local += b;
                Py_ssize_t prow = L.k.row[kid];
                if ((prow >= 0 ? sp_access_row(L.policy, prow, ts) : sp_access(L.policy, key, ts)) < 0 ||
                    (PySet_GET_SIZE(L.pending) && PySet_Discard(L.pending, key) < 0)) {
                    Py_DECREF(pobj);
                    goto fail;
                }
                if (!L.k.hit_once[kid]) {
                    PyObject *fs = L.k.first_seen[kid];
                    PyObject *d = NULL;
                    if (fs) d = PyNumber_Subtract(ts_obj, fs);
                    else PyErr_SetObject(PyExc_KeyError, key);
                    L.k.hit_once[kid] = 1;
                    int bad = !d || PyList_Append(L.first_hit, d) < 0;
                    Py_XDECREF(d);
                    if (bad) {
                        Py_DECREF(pobj);
                        goto fail;
                    }
                }
            } else if (fill_on) {
                int ok = fill_allowed(&L, PyTuple_GET_ITEM(row, 4));
                if (ok < 0) {
                    Py_DECREF(pobj);
                    goto fail;
                }
                if (ok) {
                    PyObject *zero = PyLong_FromLong(0);
                    int got = zero ? store(&L, key, kid, ts, s_fill, zero, part) : -1;
                    Py_XDECREF(zero);
                    if (got > 0) {
                        L.fills++;
                        L.bytes_filled += PyLong_AsLongLong(L.k.size[kid]);
                    }
                    if (got < 0) {
                        Py_DECREF(pobj);
                        goto fail;
                    }
                }
            }
        }
        if (local) {
            L.bytes_local += local;
            L.series[slot_i * 3 + 1] += local;
        }
        PyObject *events = PyObject_GetAttr(batch, s_events);
        int bad = !events;
        if (!bad) {
            if (L.streams) {
                bad = streams_fold(&L, pobj, events, admitted) < 0;
            } else {
                PyObject *args[2] = {pobj, events};
                PyObject *got = PyObject_Vectorcall(L.adm_fold, args, 2, NULL);
                if (!got) {
                    bad = 1;
                } else {
                    PyObject *seq = PySequence_Fast(got, "fold must return a sequence");
                    Py_DECREF(got);
                    if (!seq) {
                        bad = 1;
                    } else {
                        for (Py_ssize_t i = 0; !bad && i < PySequence_Fast_GET_SIZE(seq); i++)
                            bad = PyList_Append(admitted, PySequence_Fast_GET_ITEM(seq, i)) < 0;
                        Py_DECREF(seq);
                    }
                }
            }
            Py_DECREF(events);
        }
        for (Py_ssize_t i = 0; !bad && i < PyList_GET_SIZE(admitted); i++) {
            PyObject *a = PyList_GET_ITEM(admitted, i);
            PyObject *seq = PySequence_Fast(a, "an admission must be (key, ts, clients)");
            if (!seq || PySequence_Fast_GET_SIZE(seq) != 3) {
                if (seq) PyErr_SetString(PyExc_TypeError, "an admission must be (key, ts, clients)");
                Py_XDECREF(seq);
                bad = 1;
                break;
            }
            PyObject *key = PySequence_Fast_GET_ITEM(seq, 0), *ts_obj = PySequence_Fast_GET_ITEM(seq, 1);
            PyObject *clients = PySequence_Fast_GET_ITEM(seq, 2);
            int in = prefetch_on ? PyDict_Contains(L.cached, key) : 1;
            if (in != 0) {
                bad = in < 0;
                Py_DECREF(seq);
                continue;
            }
            int failed = PySequence_Contains(L.failed, key);
            if (failed < 0) {
                bad = 1;
            } else if (failed) { /* production's download of it failed: so does this one */
                L.fetch_failures++;
                bad = cache_event(&L, part, key, s_failed) < 0;
            } else {
                double ts = PyFloat_AsDouble(ts_obj);
                Py_ssize_t kid = key_id(&L, key);
                if (kid < 0 || (ts == -1.0 && PyErr_Occurred())) {
                    bad = 1;
                } else {
                    int got = store(&L, key, kid, ts, s_fetch, clients, part);
                    if (got > 0) {
                        long long sz = PyLong_AsLongLong(L.k.size[kid]);
                        L.prefetches++;
                        L.bytes_prefetched += sz;
                        bad = PySet_Add(L.pending, key) < 0 || series_add(&L, ts, 2, sz) < 0;
                    } else if (got == 0) {
                        bad = cache_event(&L, part, key, s_failed) < 0;
                    } else {
                        bad = 1;
                    }
                }
            }
            Py_DECREF(seq);
        }
        Py_DECREF(pobj);
        if (PyList_SetSlice(admitted, 0, PyList_GET_SIZE(admitted), NULL) < 0) bad = 1;
        if (bad) goto fail;
    }
    for (Py_ssize_t i = 0; i < L.bins; i++) {
        PyObject *slot = PyList_GET_ITEM(series_list, i);
        for (int c = 0; c < 3; c++) {
            PyObject *v = PyLong_FromLongLong(L.series[i * 3 + c]);
            if (!v || PySequence_SetItem(slot, c, v) < 0) {
                Py_XDECREF(v);
                goto fail;
            }
            Py_DECREF(v);
        }
    }
    result = Py_BuildValue("(LLLLLLLLLL)", L.hits, L.bytes_local, L.prefetches, L.bytes_prefetched, L.fills,
                           L.bytes_filled, L.fetch_failures, L.refused, L.evictions, L.never_hit);
fail:
    if (L.streams && L.offsets) { /* StreamsAdmission.offsets as its fold would have left them */
        for (Py_ssize_t k = 0; k < L.nparts; k++) {
            Part *P = &L.parts[k];
            if (!P->ready) continue;
            PyObject *et, *ev, *etb;
            PyErr_Fetch(&et, &ev, &etb);
            PyObject *p = PyLong_FromSsize_t(k), *o = PyLong_FromLongLong(P->offset);
            if (!p || !o || PyDict_SetItem(L.offsets, p, o) < 0) PyErr_Clear(); /* bookkeeping only */
            Py_XDECREF(p);
            Py_XDECREF(o);
            /* the PartitionHeat's applied and late, as its folds would have left them */
            PyObject *ap = PyLong_FromLongLong(P->applied), *late = PyObject_GetAttr(P->ph, s_late);
            PyObject *add = PyLong_FromLongLong(P->late), *sum = late && add ? PyNumber_Add(late, add) : NULL;
            if (!ap || !sum || PyObject_SetAttr(P->ph, s_applied, ap) < 0 || PyObject_SetAttr(P->ph, s_late, sum) < 0) {
                if (!et) { /* a failure here is the loop's error */
                    PyErr_Fetch(&et, &ev, &etb);
                    result_failed = 1;
                } else {
                    PyErr_Clear();
                }
            }
            Py_XDECREF(ap);
            Py_XDECREF(late);
            Py_XDECREF(add);
            Py_XDECREF(sum);
            if (et) PyErr_Restore(et, ev, etb);
        }
    }
    if (result_failed) Py_CLEAR(result);
    parts_free(&L);
    keys_free(&L.k);
    PyMem_Free(L.victims.v);
    Py_XDECREF(L.parts_dict);
    Py_XDECREF(L.offsets);
    Py_XDECREF(L.emitted);
    Py_XDECREF(L.make_part);
    Py_XDECREF(L.adm_fold);
    Py_XDECREF(L.adm_cache_event);
    Py_XDECREF(L.kw_evicted);
    Py_XDECREF(L.kw_cached);
    for (int i = 0; i < 3; i++) {
        Py_XDECREF(L.tmpl[i]);
        Py_XDECREF(L.tmpl_vals[i]);
    }
    Py_XDECREF(L.field_descr);
    Py_XDECREF(L.post_init);
    Py_XDECREF(L.view_descr);
    Py_XDECREF(L.field_names);
    Py_XDECREF(L.view_names);
    Py_XDECREF(L.empty);
    Py_XDECREF(admitted);
    PyMem_Free(L.series);
    return result;
}

static PyMethodDef methods[] = {
    {"loop", (PyCFunction)loop, METH_O, "engine.run's loop over the batches (see the module doc)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "replay._engine",
                                    "Compiled twin of replay/engine.py's loop and replay/storepolicy.py.", -1,
                                    methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__engine(void) {
#define INTERN(var, s) if (!(var = PyUnicode_InternFromString(s))) return NULL
    INTERN(s_bucket, "bucket");
    INTERN(s_events, "events");
    INTERN(s_applied, "applied");
    INTERN(s_watermark, "watermark");
    INTERN(s_late, "late");
    INTERN(s_admitted, "admitted");
    INTERN(s_fetching, "fetching");
    INTERN(s_clients, "clients");
    INTERN(s_pins, "pins");
    INTERN(s_first_access, "first_access");
    INTERN(s_min_clients, "min_clients");
    INTERN(s_admit, "admit");
    INTERN(s_cache_key, "cache_key");
    INTERN(s_ts, "ts");
    INTERN(s_dirty_keys, "dirty_keys");
    INTERN(s_size, "size");
    INTERN(s_source, "source");
    INTERN(s_refused, "refused");
    INTERN(s_free_bytes, "free_bytes");
    INTERN(s_state, "state");
    INTERN(s_evicted, "evicted");
    INTERN(s_cached, "cached");
    INTERN(s_failed, "failed");
    INTERN(s_fill, "fill");
    INTERN(s_fetch, "fetch");
    INTERN(s_range, "Range");
    INTERN(s_content_length, "Content-Length");
    INTERN(s_empty, "");
    INTERN(s_clear, "clear");
    INTERN(s_post_init, "__post_init__");
    INTERN(s_failures, "failures");
#undef INTERN
    if (PyType_Ready(&SPType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    Py_INCREF(&SPType);
    if (PyModule_AddObject(m, "StorePolicy", (PyObject *)&SPType) < 0) {
        Py_DECREF(&SPType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
