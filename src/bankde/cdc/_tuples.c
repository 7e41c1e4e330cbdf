/* The two per-value loops of the bulk pgoutput decoder (bankde/cdc/columnar.py), in C.
 *
 * numpy can walk TupleData only one column at a time across all messages (each value's start
 * depends on the previous value's length), which costs a dozen temporary arrays per column;
 * and building a compact Arrow string column from values scattered over the joined messages
 * needs either a framing array of every byte range plus an Arrow `take`, or a byte-level
 * gather. Both are single passes here. Everything else stays in numpy/Arrow. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

#define KIND_TEXT 't'
#define KIND_NULL 'n'
#define KIND_UNCHANGED 'u'

/* A writable or read-only C-contiguous buffer of exactly `itemsize`-byte items. */
static int get_buf(PyObject *obj, Py_buffer *view, int writable, Py_ssize_t itemsize,
                   const char *what) {
    int flags = PyBUF_C_CONTIGUOUS | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, view, flags) < 0) return -1;
    if (view->itemsize != itemsize || view->len % itemsize != 0) {
        PyErr_Format(PyExc_TypeError, "%s: expected items of %zd bytes", what, itemsize);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

/* walk(buf, at, limit, ncols, start, length, kind, end) -> (status, detail)
 *
 * TupleData at each offset in `at` (int64, n), inside its message (which ends at `limit`,
 * int64, n): a 16-bit column count, then per column a kind
 * byte and, for 't', a 32-bit big-endian length and the bytes. Fills start/length (int64,
 * ncols*n, column-major like the numpy arrays they replace), kind (uint8) and end (int64, n:
 * the offset after the tuple). A null or unchanged value gets length 0 and starts right after
 * its kind byte. Status 0 ok; 1 a tuple's column count is not ncols (detail: the message);
 * 2 a kind byte that is not t/n/u (detail: the byte); 3 a tuple runs past its message (detail:
 * the message). */
static PyObject *walk(PyObject *self, PyObject *args) {
    PyObject *o_buf, *o_at, *o_limit, *o_start, *o_len, *o_kind, *o_end;
    Py_ssize_t ncols;
    if (!PyArg_ParseTuple(args, "OOOnOOOO", &o_buf, &o_at, &o_limit, &ncols, &o_start, &o_len,
                          &o_kind, &o_end))
        return NULL;
    Py_buffer b = {0}, at = {0}, lm = {0}, st = {0}, ln = {0}, kd = {0}, en = {0};
    long status = 0, detail = 0;
    if (get_buf(o_buf, &b, 0, 1, "buf") < 0) return NULL;
    if (get_buf(o_at, &at, 0, 8, "at") < 0) goto fail;
    if (get_buf(o_limit, &lm, 0, 8, "limit") < 0) goto fail;
    if (get_buf(o_start, &st, 1, 8, "start") < 0) goto fail;
    if (get_buf(o_len, &ln, 1, 8, "length") < 0) goto fail;
    if (get_buf(o_kind, &kd, 1, 1, "kind") < 0) goto fail;
    if (get_buf(o_end, &en, 1, 8, "end") < 0) goto fail;
    Py_ssize_t n = at.len / 8;
    if (ncols < 0 || lm.len != at.len || st.len != 8 * ncols * n || ln.len != st.len || kd.len != ncols * n ||
        en.len != 8 * n) {
        PyErr_SetString(PyExc_ValueError, "walk: output arrays do not match ncols * len(at)");
        goto fail;
    }
    const uint8_t *buf = (const uint8_t *)b.buf;
    const int64_t size = (int64_t)b.len;
    const int64_t *pos = (const int64_t *)at.buf, *limit = (const int64_t *)lm.buf;
    int64_t *start = (int64_t *)st.buf, *length = (int64_t *)ln.buf, *end = (int64_t *)en.buf;
    uint8_t *kind = (uint8_t *)kd.buf;

    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n && status == 0; i++) {
        int64_t p = pos[i];
        const int64_t lim = limit[i] < size ? limit[i] : size;
        if (p < 0 || p + 2 > lim) { status = 3; detail = (long)i; break; }
        if (((int64_t)buf[p] << 8 | buf[p + 1]) != ncols) { status = 1; detail = (long)i; break; }
        p += 2;
        for (Py_ssize_t j = 0; j < ncols; j++) {
            if (p + 1 > lim) { status = 3; detail = (long)i; break; }
            uint8_t k = buf[p++];
            int64_t len = 0;
            if (k == KIND_TEXT) {
                if (p + 4 > lim) { status = 3; detail = (long)i; break; }
                len = (int64_t)buf[p] << 24 | (int64_t)buf[p + 1] << 16 |
                      (int64_t)buf[p + 2] << 8 | (int64_t)buf[p + 3];
                p += 4;
                if (p + len > lim) { status = 3; detail = (long)i; break; }
            } else if (k != KIND_NULL && k != KIND_UNCHANGED) {
                status = 2; detail = (long)k; break;
            }
            Py_ssize_t at_ji = j * n + i;
            start[at_ji] = p;
            length[at_ji] = len;
            kind[at_ji] = k;
            p += len;
        }
        end[i] = p;
    }
    Py_END_ALLOW_THREADS

    PyBuffer_Release(&b); PyBuffer_Release(&at); PyBuffer_Release(&lm); PyBuffer_Release(&st);
    PyBuffer_Release(&ln); PyBuffer_Release(&kd); PyBuffer_Release(&en);
    return Py_BuildValue("(ll)", status, detail);
fail:
    PyBuffer_Release(&b); PyBuffer_Release(&at); PyBuffer_Release(&lm); PyBuffer_Release(&st);
    PyBuffer_Release(&ln); PyBuffer_Release(&kd); PyBuffer_Release(&en);
    return NULL;
}

/* gather(buf, start, length) -> (offsets, data)
 *
 * The byte ranges buf[start[i]:start[i]+length[i]] (int64 arrays, m) copied one after another:
 * `data` holds them, `offsets` (int32, m + 1, as bytes) where each begins: the two buffers of
 * an Arrow string array (the caller adds validity). The caller checked the ranges lie in
 * `buf` (walk did); they are checked again here, since a bad range would read past it. */
static PyObject *gather(PyObject *self, PyObject *args) {
    PyObject *o_buf, *o_start, *o_len;
    if (!PyArg_ParseTuple(args, "OOO", &o_buf, &o_start, &o_len)) return NULL;
    Py_buffer b = {0}, st = {0}, ln = {0};
    PyObject *offsets = NULL, *data = NULL;
    if (get_buf(o_buf, &b, 0, 1, "buf") < 0) return NULL;
    if (get_buf(o_start, &st, 0, 8, "start") < 0) goto fail;
    if (get_buf(o_len, &ln, 0, 8, "length") < 0) goto fail;
    if (st.len != ln.len) {
        PyErr_SetString(PyExc_ValueError, "gather: start and length differ in size");
        goto fail;
    }
    Py_ssize_t m = st.len / 8;
    const int64_t *start = (const int64_t *)st.buf, *length = (const int64_t *)ln.buf;
    int64_t total = 0;
    for (Py_ssize_t i = 0; i < m; i++) {
        if (start[i] < 0 || length[i] < 0 || start[i] + length[i] > (int64_t)b.len) {
            PyErr_Format(PyExc_ValueError, "gather: range %zd lies outside the buffer", i);
            goto fail;
        }
        total += length[i];
    }
    if (total > INT32_MAX) {  /* Arrow string offsets are int32 */
        PyErr_SetString(PyExc_OverflowError, "gather: more than 2 GiB of values in one column");
        goto fail;
    }
    offsets = PyBytes_FromStringAndSize(NULL, (m + 1) * 4);
    data = PyBytes_FromStringAndSize(NULL, total);
    if (offsets == NULL || data == NULL) goto fail;
    int32_t *off = (int32_t *)PyBytes_AS_STRING(offsets);
    char *out = PyBytes_AS_STRING(data);
    const char *src = (const char *)b.buf;
    Py_BEGIN_ALLOW_THREADS
    int32_t at = 0;
    for (Py_ssize_t i = 0; i < m; i++) {
        off[i] = at;
        memcpy(out + at, src + start[i], (size_t)length[i]);
        at += (int32_t)length[i];
    }
    off[m] = at;
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&b); PyBuffer_Release(&st); PyBuffer_Release(&ln);
    return Py_BuildValue("(NN)", offsets, data);
fail:
    Py_XDECREF(offsets); Py_XDECREF(data);
    PyBuffer_Release(&b); PyBuffer_Release(&st); PyBuffer_Release(&ln);
    return NULL;
}

/* keep_freed_memory(bytes) -> bool
 *
 * glibc hands freed blocks above a (self-raising, at most 32 MiB) threshold straight back to
 * the kernel and trims the heap's free top above twice that, so every batch's buffers are
 * fresh pages again, and on a VM a page fault costs microseconds: on this project's test
 * machine the batch decoder spent more time faulting than decoding. Blocks up to 32 MiB (the
 * largest threshold glibc takes) now come from the heap, and up to `bytes` of freed heap stays
 * in the process, so the next batch reuses it. False where the C library is not glibc
 * (nothing changed). */
static PyObject *keep_freed_memory(PyObject *self, PyObject *args) {
    Py_ssize_t bytes;
    if (!PyArg_ParseTuple(args, "n", &bytes)) return NULL;
#ifdef __GLIBC__
    if (bytes > INT32_MAX) bytes = INT32_MAX;
    int ok = mallopt(M_MMAP_THRESHOLD, 32 * 1024 * 1024) && mallopt(M_TRIM_THRESHOLD, (int)bytes);
    return PyBool_FromLong(ok);
#else
    Py_RETURN_FALSE;
#endif
}

static PyMethodDef methods[] = {
    {"keep_freed_memory", keep_freed_memory, METH_VARARGS, "Keep freed memory (see _tuples.c)."},
    {"walk", walk, METH_VARARGS, "Walk pgoutput TupleData at each offset (see _tuples.c)."},
    {"gather", gather, METH_VARARGS, "Copy byte ranges into Arrow string buffers."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_tuples", "The bulk pgoutput decoder's per-value loops.", -1, methods,
};

PyMODINIT_FUNC PyInit__tuples(void) { return PyModule_Create(&module); }
