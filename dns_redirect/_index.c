/* dns_redirect._index: the compiled twin of CacheIndex.apply (dns_redirect/index.py).
 *
 * The Python method is the reference and the specification; this does the same operations on
 * the same objects in the same order (the index's own dicts and Counters, read from the index at
 * every call, so a reader that swaps one of them sees it used), with the version bumped last.
 * Keys are parsed by the Python key_host / key_port (once per key: the index's memo).
 * tests/dns_redirect/test_index.py holds the two to identical states on random changes.
 *
 *   setup(key_host, key_port, counter_cls, monotonic): the Python helpers (index.py calls it)
 *   apply(index, event, now=None): CacheIndex.apply(event, now) on index
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

static PyObject *key_host_fn, *key_port_fn, *counter_cls, *monotonic_fn;
static PyObject *s_cache_key, *s_state, *s_cached, *s_objects, *s_hosts, *s_host_ports, *s_unsteered_at, *s_where,
    *s_parsed, *s_version, *s_parsed_max, *s_now;
static PyObject *zero, *one;

static PyObject *attr(PyObject *o, PyObject *name, int dict) {
    PyObject *v = PyObject_GetAttr(o, name);
    if (v && dict && !PyDict_Check(v)) {
        PyErr_Format(PyExc_TypeError, "CacheIndex.%U must be a dict", name);
        Py_CLEAR(v);
    }
    return v;
}

/* d[k] = v and del d[k]: a plain dict or a Counter straight through the dict (Counter's
 * __setitem__ is dict's and its __delitem__, for a key present, is dict's too; its Python
 * __delitem__ otherwise routes every store through a method lookup), any other mapping (a
 * subclass watching its writes) through its own methods */
static int set_item(PyObject *d, PyObject *k, PyObject *v) {
    if (Py_TYPE(d) == &PyDict_Type || (PyObject *)Py_TYPE(d) == counter_cls) return PyDict_SetItem(d, k, v);
    return PyObject_SetItem(d, k, v);
}

static int del_item(PyObject *d, PyObject *k) {
    if (Py_TYPE(d) == &PyDict_Type || (PyObject *)Py_TYPE(d) == counter_cls) return PyDict_DelItem(d, k);
    return PyObject_DelItem(d, k);
}

/* d.get(k, 0) (new reference) */
static PyObject *get0(PyObject *d, PyObject *k) {
    PyObject *v = PyDict_GetItemWithError(d, k);
    if (!v) {
        if (PyErr_Occurred()) return NULL;
        v = zero;
    }
    Py_INCREF(v);
    return v;
}

/* d[k] = left = d.get(k, 0) - 1; if left <= 0: del d[k]  -> 1 if deleted, 0 if not, -1 error */
static int decrement(PyObject *d, PyObject *k) {
    PyObject *v = get0(d, k);
    if (!v) return -1;
    PyObject *left = PyNumber_Subtract(v, one);
    Py_DECREF(v);
    if (!left) return -1;
    int rc = set_item(d, k, left);
    int gone = rc < 0 ? -1 : PyObject_RichCompareBool(left, zero, Py_LE);
    Py_DECREF(left);
    if (gone < 0) return -1;
    if (gone && del_item(d, k) < 0) return -1;
    return gone;
}

/* CacheIndex._drop_host */
static int drop_host(PyObject *index, PyObject *key, PyObject *now) {
    int rc = -1;
    PyObject *where = attr(index, s_where, 1), *hp = NULL, *host_ports = NULL, *hosts = NULL, *unsteered = NULL;
    if (!where) return -1;
    hp = PyDict_GetItemWithError(where, key);
    if (!hp) {
        if (!PyErr_Occurred()) PyErr_SetObject(PyExc_KeyError, key);
        goto done;
    }
    Py_INCREF(hp);
    if (PyDict_DelItem(where, key) < 0) goto done;
    if (!PyTuple_Check(hp) || PyTuple_GET_SIZE(hp) != 2) {
        PyErr_SetString(PyExc_TypeError, "CacheIndex.where values must be (host, port)");
        goto done;
    }
    PyObject *host = PyTuple_GET_ITEM(hp, 0), *port = PyTuple_GET_ITEM(hp, 1);
    host_ports = attr(index, s_host_ports, 1);
    if (!host_ports) goto done;
    PyObject *ports = PyDict_GetItemWithError(host_ports, host);
    if (ports) {
        Py_INCREF(ports);
        int bad = !PyDict_Check(ports) || decrement(ports, port) < 0;
        if (bad && !PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "CacheIndex.host_ports values must be dicts");
        Py_DECREF(ports);
        if (bad) goto done;
    } else if (PyErr_Occurred()) {
        goto done;
    }
    hosts = attr(index, s_hosts, 1);
    if (!hosts) goto done;
    int gone = decrement(hosts, host);
    if (gone < 0) goto done;
    if (gone) {
        PyObject *popped = PyDict_GetItemWithError(host_ports, host);
        if (popped) {
            if (PyDict_DelItem(host_ports, host) < 0) goto done;
        } else if (PyErr_Occurred()) {
            goto done;
        }
        unsteered = attr(index, s_unsteered_at, 1);
        if (!unsteered) goto done;
        PyObject *when = now == Py_None ? PyObject_CallNoArgs(monotonic_fn) : (Py_INCREF(now), now);
        if (!when) goto done;
        int bad = set_item(unsteered, host, when);
        Py_DECREF(when);
        if (bad < 0) goto done;
    }
    rc = 0;
done:
    Py_DECREF(where);
    Py_XDECREF(hp);
    Py_XDECREF(host_ports);
    Py_XDECREF(hosts);
    Py_XDECREF(unsteered);
    return rc;
}

/* the (host, port) of key from the index's memo, parsed when missing (new reference) */
static PyObject *parsed_where(PyObject *index, PyObject *key) {
    PyObject *parsed = attr(index, s_parsed, 1);
    if (!parsed) return NULL;
    PyObject *w = PyDict_GetItemWithError(parsed, key);
    if (w) {
        Py_INCREF(w);
        Py_DECREF(parsed);
        return w;
    }
    if (PyErr_Occurred()) goto fail;
    PyObject *max = PyObject_GetAttr(index, s_parsed_max);
    if (!max) goto fail;
    Py_ssize_t limit = PyLong_AsSsize_t(max);
    Py_DECREF(max);
    if (limit == -1 && PyErr_Occurred()) goto fail;
    if (PyDict_GET_SIZE(parsed) >= limit) PyDict_Clear(parsed);
    PyObject *host = PyObject_CallOneArg(key_host_fn, key);
    PyObject *port = host ? PyObject_CallOneArg(key_port_fn, key) : NULL;
    w = port ? PyTuple_Pack(2, host, port) : NULL;
    Py_XDECREF(host);
    Py_XDECREF(port);
    if (!w || PyDict_SetItem(parsed, key, w) < 0) {
        Py_XDECREF(w);
        goto fail;
    }
    Py_DECREF(parsed);
    return w;
fail:
    Py_DECREF(parsed);
    return NULL;
}

/* the "cached" branch of CacheIndex.apply */
static int add(PyObject *index, PyObject *objects, PyObject *key, PyObject *event) {
    int rc = -1;
    PyObject *where = NULL, *wmap = NULL, *hosts = NULL, *before = NULL, *host_ports = NULL, *ports = NULL;
    if (PyDict_SetItem(objects, key, event) < 0) return -1;
    where = parsed_where(index, key);
    if (!where) return -1;
    if (!PyTuple_Check(where) || PyTuple_GET_SIZE(where) != 2) {
        PyErr_SetString(PyExc_TypeError, "a parsed key must be (host, port)");
        goto done;
    }
    wmap = attr(index, s_where, 1);
    if (!wmap || PyDict_SetItem(wmap, key, where) < 0) goto done;
    PyObject *host = PyTuple_GET_ITEM(where, 0), *port = PyTuple_GET_ITEM(where, 1);
    hosts = attr(index, s_hosts, 1);
    if (!hosts || !(before = get0(hosts, host))) goto done;
    {
        PyObject *n = PyNumber_Add(before, one);
        int bad = !n || set_item(hosts, host, n) < 0;
        Py_XDECREF(n);
        if (bad) goto done;
    }
    host_ports = attr(index, s_host_ports, 1);
    if (!host_ports) goto done;
    ports = PyDict_GetItemWithError(host_ports, host);
    if (ports) {
        Py_INCREF(ports);
    } else {
        if (PyErr_Occurred()) goto done;
        ports = PyObject_CallNoArgs(counter_cls);
        if (!ports || set_item(host_ports, host, ports) < 0) goto done;
    }
    if (!PyDict_Check(ports)) {
        PyErr_SetString(PyExc_TypeError, "CacheIndex.host_ports values must be dicts");
        goto done;
    }
    {
        PyObject *c = get0(ports, port);
        PyObject *n = c ? PyNumber_Add(c, one) : NULL;
        Py_XDECREF(c);
        int bad = !n || set_item(ports, port, n) < 0;
        Py_XDECREF(n);
        if (bad) goto done;
    }
    int was_none = PyObject_Not(before);
    if (was_none < 0) goto done;
    if (was_none) { /* unsteered_at.pop(host, None) */
        PyObject *un = attr(index, s_unsteered_at, 1);
        if (!un) goto done;
        PyObject *v = PyDict_GetItemWithError(un, host);
        int bad = v ? PyDict_DelItem(un, host) < 0 : PyErr_Occurred() != NULL;
        Py_DECREF(un);
        if (bad) goto done;
    }
    rc = 0;
done:
    Py_DECREF(where);
    Py_XDECREF(wmap);
    Py_XDECREF(hosts);
    Py_XDECREF(before);
    Py_XDECREF(host_ports);
    Py_XDECREF(ports);
    return rc;
}

static PyObject *apply(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames) {
    (void)self;
    PyObject *index, *event, *now = Py_None;
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    if (nargs < 2 || nargs + nkw > 3) {
        PyErr_SetString(PyExc_TypeError, "apply(index, event, now=None)");
        return NULL;
    }
    index = args[0];
    event = args[1];
    if (nargs == 3) now = args[2];
    if (nkw) {
        if (PyUnicode_Compare(PyTuple_GET_ITEM(kwnames, 0), s_now) != 0) {
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "apply(): the only keyword is now");
            return NULL;
        }
        now = args[nargs];
    }
    PyObject *key = PyObject_GetAttr(event, s_cache_key);
    if (!key) return NULL;
    PyObject *result = NULL, *old = NULL, *state = NULL, *version = NULL;
    PyObject *objects = attr(index, s_objects, 1);
    if (!objects) goto done;
    old = PyDict_GetItemWithError(objects, key); /* objects.pop(key, None) */
    if (old) {
        Py_INCREF(old);
        if (PyDict_DelItem(objects, key) < 0) goto done;
    } else if (PyErr_Occurred()) {
        goto done;
    }
    if (old != NULL && old != Py_None && drop_host(index, key, now) < 0) goto done;
    state = PyObject_GetAttr(event, s_state);
    if (!state) goto done;
    int cached = PyObject_RichCompareBool(state, s_cached, Py_EQ);
    if (cached < 0 || (cached && add(index, objects, key, event) < 0)) goto done;
    version = PyObject_GetAttr(index, s_version);
    PyObject *next = version ? PyNumber_Add(version, one) : NULL;
    if (!next) goto done;
    int bad = PyObject_SetAttr(index, s_version, next);
    Py_DECREF(next);
    if (bad < 0) goto done;
    result = Py_None;
    Py_INCREF(result);
done:
    Py_DECREF(key);
    Py_XDECREF(objects);
    Py_XDECREF(old);
    Py_XDECREF(state);
    Py_XDECREF(version);
    return result;
}

static PyObject *setup(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *kh, *kp, *cc, *mono;
    if (!PyArg_ParseTuple(args, "OOOO", &kh, &kp, &cc, &mono)) return NULL;
    Py_INCREF(kh);
    Py_INCREF(kp);
    Py_INCREF(cc);
    Py_INCREF(mono);
    Py_XSETREF(key_host_fn, kh);
    Py_XSETREF(key_port_fn, kp);
    Py_XSETREF(counter_cls, cc);
    Py_XSETREF(monotonic_fn, mono);
    Py_RETURN_NONE;
}

static PyObject *apply_checked(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames) {
    if (!key_host_fn) {
        PyErr_SetString(PyExc_RuntimeError, "dns_redirect._index.setup() was not called");
        return NULL;
    }
    return apply(self, args, nargs, kwnames);
}

static PyMethodDef methods[] = {
    {"apply", (PyCFunction)(void (*)(void))apply_checked, METH_FASTCALL | METH_KEYWORDS,
     "CacheIndex.apply(event, now) on index (see dns_redirect/index.py)."},
    {"setup", setup, METH_VARARGS, "setup(key_host, key_port, counter_cls, monotonic)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "dns_redirect._index",
                                    "Compiled twin of dns_redirect.index.CacheIndex.apply.", -1, methods,
                                    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__index(void) {
#define INTERN(var, s) if (!(var = PyUnicode_InternFromString(s))) return NULL
    INTERN(s_cache_key, "cache_key");
    INTERN(s_state, "state");
    INTERN(s_cached, "cached");
    INTERN(s_objects, "objects");
    INTERN(s_hosts, "hosts");
    INTERN(s_host_ports, "host_ports");
    INTERN(s_unsteered_at, "unsteered_at");
    INTERN(s_where, "where");
    INTERN(s_parsed, "_parsed");
    INTERN(s_version, "version");
    INTERN(s_parsed_max, "PARSED_MAX");
    INTERN(s_now, "now");
#undef INTERN
    if (!(zero = PyLong_FromLong(0)) || !(one = PyLong_FromLong(1))) return NULL;
    return PyModule_Create(&module);
}
