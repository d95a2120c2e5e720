/* The decode kernels of the byte-plane codecs (modelfs/codecs/planes.py) and, at the end,
 * of the quantised deltas (modelfs/codecs/qdelta.py).
 *
 * One pass that interleaves byte planes back into elements and, for a delta, applies the
 * residual to its prediction (XOR of the bit patterns, or the zigzag-coded integer
 * difference added with wrap-around), writing straight into the result. It runs with the
 * GIL released, so the mount's decode threads use every core. numpy needed three passes
 * and two temporaries for the same work, and held the GIL between them.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the plane layout and the zigzag add assume a little-endian machine"
#endif

enum { OP_NONE = 0, OP_XOR = 1, OP_SUB = 2 };
/* The signed integer a zigzag code of type T stands for (0, -1, 1, -2, ...), wrapped to T. */
#define UNZIGZAG(T, v) ((T)((T)((v) >> 1) ^ (T)(0 - ((v) & 1))))
#define MAX_PLANES 16

/* Element i from its planes, as an unsigned integer of N bytes (little-endian order), then
 * the residual applied. One loop per (size, op), so the compiler vectorises each. */
#define ELEMENT(T, N) \
    T v = 0;          \
    for (int k = 0; k < (N); k++) v |= (T)p[k][i] << (8 * k);

#define JOIN_LOOPS(T, N)                                                              \
    if (op == OP_NONE) {                                                              \
        for (Py_ssize_t i = 0; i < n; i++) {                                          \
            ELEMENT(T, N)                                                             \
            memcpy(out + i * (N), &v, (N));                                           \
        }                                                                             \
    } else if (op == OP_XOR) {                                                        \
        for (Py_ssize_t i = 0; i < n; i++) {                                          \
            ELEMENT(T, N)                                                             \
            T q;                                                                      \
            memcpy(&q, pred + i * (N), (N));                                          \
            v ^= q;                                                                   \
            memcpy(out + i * (N), &v, (N));                                           \
        }                                                                             \
    } else {                                                                          \
        for (Py_ssize_t i = 0; i < n; i++) {                                          \
            ELEMENT(T, N)                                                             \
            T q;                                                                      \
            memcpy(&q, pred + i * (N), (N));                                          \
            v = (T)(UNZIGZAG(T, v) + q);                                              \
            memcpy(out + i * (N), &v, (N));                                           \
        }                                                                             \
    }

static void join(unsigned char *restrict out, const unsigned char *const *p, Py_ssize_t n, int isz,
                 const unsigned char *restrict pred, int op) {
    switch (isz) {
    case 2: JOIN_LOOPS(uint16_t, 2) return;
    case 4: JOIN_LOOPS(uint32_t, 4) return;
    case 8: JOIN_LOOPS(uint64_t, 8) return;
    default:
        for (Py_ssize_t i = 0; i < n; i++)
            for (int k = 0; k < isz; k++) {
                unsigned char b = p[k][i];
                out[i * isz + k] = op == OP_XOR ? (unsigned char)(b ^ pred[i * isz + k]) : b;
            }
        if (op == OP_SUB && isz == 1)  /* one plane: the codes are whole elements */
            for (Py_ssize_t i = 0; i < n; i++) {
                unsigned char v = out[i];
                out[i] = (unsigned char)(UNZIGZAG(unsigned char, v) + pred[i]);
            }
    }
}

PyDoc_STRVAR(join_doc,
"join(planes, n, tail, pred=None, op=0) -> bytes\n\n"
"Interleave len(planes) byte planes of n bytes each (None: an all-zero plane) into n\n"
"elements, then the tail. op 1 XORs the result with pred; op 2 reads each element as a\n"
"zigzag code and adds it to pred's element (wrapping). pred covers the whole result.");

static PyObject *kernel_join(PyObject *self, PyObject *args) {
    PyObject *planes, *pred_obj = Py_None;
    Py_ssize_t n;
    Py_buffer tail, predv = {0};
    int op = OP_NONE;
    if (!PyArg_ParseTuple(args, "O!ny*|Oi", &PyTuple_Type, &planes, &n, &tail, &pred_obj, &op))
        return NULL;
    PyObject *result = NULL;
    Py_buffer views[MAX_PLANES];
    int nviews = 0;
    unsigned char *zeros = NULL;
    Py_ssize_t isz = PyTuple_GET_SIZE(planes);
    if (isz < 1 || isz > MAX_PLANES || n < 0 || op < OP_NONE || op > OP_SUB) {
        PyErr_SetString(PyExc_ValueError, "join: 1 to 16 planes, n >= 0, op 0, 1 or 2");
        goto done;
    }
    if (op == OP_SUB && (tail.len || (isz != 1 && isz != 2 && isz != 4 && isz != 8))) {
        PyErr_SetString(PyExc_ValueError, "join: a zigzag residual needs whole 1, 2, 4 or 8 byte elements");
        goto done;
    }
    Py_ssize_t total = n * isz + tail.len;
    if (op != OP_NONE) {
        if (pred_obj == Py_None || PyObject_GetBuffer(pred_obj, &predv, PyBUF_SIMPLE) < 0) {
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "join: op needs a prediction");
            goto done;
        }
        if (predv.len != total) {
            PyErr_Format(PyExc_ValueError, "join: prediction is %zd bytes, the result %zd", predv.len, total);
            goto done;
        }
    }
    const unsigned char *p[MAX_PLANES];
    for (Py_ssize_t k = 0; k < isz; k++) {
        PyObject *item = PyTuple_GET_ITEM(planes, k);
        if (item == Py_None) {
            if (!zeros && !(zeros = calloc((size_t)n + 1, 1))) {
                PyErr_NoMemory();
                goto done;
            }
            p[k] = zeros;
            continue;
        }
        if (PyObject_GetBuffer(item, &views[nviews], PyBUF_SIMPLE) < 0) goto done;
        if (views[nviews++].len != n) {
            PyErr_Format(PyExc_ValueError, "join: plane %zd is %zd bytes, expected %zd", k,
                         views[nviews - 1].len, n);
            goto done;
        }
        p[k] = views[nviews - 1].buf;
    }
    result = PyBytes_FromStringAndSize(NULL, total);
    if (!result) goto done;
    unsigned char *out = (unsigned char *)PyBytes_AS_STRING(result);
    const unsigned char *pred = predv.buf;
    Py_BEGIN_ALLOW_THREADS
    join(out, p, n, (int)isz, pred, op);
    memcpy(out + n * isz, tail.buf, (size_t)tail.len);
    if (op == OP_XOR)
        for (Py_ssize_t i = n * isz; i < total; i++) out[i] ^= pred[i];
    Py_END_ALLOW_THREADS
done:
    for (int k = 0; k < nviews; k++) PyBuffer_Release(&views[k]);
    if (predv.obj) PyBuffer_Release(&predv);
    PyBuffer_Release(&tail);
    free(zeros);
    return result;
}

/* The rebuild of the quantised-delta codecs (modelfs/codecs/qdelta.py): element i is
 *     pred[i] + (T)unzigzag(z[i]) * (T)(-step)
 * in T = float (isz 4) or double (isz 8): one multiply, one add, each rounded by IEEE, never
 * fused (the file is built with -ffp-contract=off), so numpy, this loop and any later build
 * agree bit for bit. Then the exceptions: (index, bit pattern) pairs written over the result. */
#define REBUILD_LOOP(T, Z)                                                            \
    for (Py_ssize_t i = 0; i < n; i++) {                                              \
        uint32_t u = ((const Z *)z)[i];                                                \
        int32_t k = (int32_t)UNZIGZAG(uint32_t, u);                                   \
        T v = (T)k * s;                                                               \
        v = v + ((const T *)pred)[i];                                                 \
        memcpy(out + i * sizeof(T), &v, sizeof(T));                                   \
    }

#define REBUILD(T)                                                                    \
    {                                                                                 \
        const T s = (T)(-step);                                                       \
        if (width == 1) REBUILD_LOOP(T, uint8_t)                                      \
        else if (width == 2) REBUILD_LOOP(T, uint16_t)                                \
        else REBUILD_LOOP(T, uint32_t)                                                \
    }

static void rebuild(unsigned char *restrict out, const unsigned char *restrict z, int width,
                    const unsigned char *restrict pred, Py_ssize_t n, double step, int isz) {
    if (isz == 4) REBUILD(float) else REBUILD(double)
}

PyDoc_STRVAR(rebuild_doc,
"rebuild(codes, width, pred, step, itemsize, exc_idx=b'', exc_bits=b'') -> bytes\n\n"
"The bit patterns of pred + unzigzag(codes) * -step, element by element, in float32\n"
"(itemsize 4) or float64 (itemsize 8); codes are little-endian unsigned integers of\n"
"width 1, 2 or 4 bytes, pred the prediction's values. Then exc_bits[j] (itemsize bytes\n"
"each) is written over element exc_idx[j] (uint32).");

static PyObject *kernel_rebuild(PyObject *self, PyObject *args) {
    Py_buffer zv, predv, idxv = {0}, excv = {0};
    int width, isz;
    double step;
    if (!PyArg_ParseTuple(args, "y*iy*di|y*y*", &zv, &width, &predv, &step, &isz, &idxv, &excv))
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t n = isz > 0 ? predv.len / isz : 0;
    Py_ssize_t nexc = idxv.obj ? idxv.len / 4 : 0;
    if ((isz != 4 && isz != 8) || (width != 1 && width != 2 && width != 4)) {
        PyErr_SetString(PyExc_ValueError, "rebuild: itemsize 4 or 8, code width 1, 2 or 4");
        goto done;
    }
    if (predv.len % isz || zv.len != n * width) {
        PyErr_Format(PyExc_ValueError, "rebuild: %zd bytes of codes for %zd bytes of prediction",
                     zv.len, predv.len);
        goto done;
    }
    if ((idxv.obj && idxv.len % 4) || (excv.obj ? excv.len : 0) != nexc * isz) {
        PyErr_SetString(PyExc_ValueError, "rebuild: exceptions need one bit pattern per uint32 index");
        goto done;
    }
    result = PyBytes_FromStringAndSize(NULL, predv.len);
    if (!result) goto done;
    unsigned char *out = (unsigned char *)PyBytes_AS_STRING(result);
    uint32_t bad = 0;
    int beyond = 0;
    Py_BEGIN_ALLOW_THREADS
    rebuild(out, zv.buf, width, predv.buf, n, step, isz);
    for (Py_ssize_t j = 0; j < nexc && !beyond; j++) {
        uint32_t at;
        memcpy(&at, (const unsigned char *)idxv.buf + 4 * j, 4);
        if ((Py_ssize_t)at >= n) {
            bad = at;
            beyond = 1;
        } else {
            memcpy(out + (Py_ssize_t)at * isz, (const unsigned char *)excv.buf + j * isz, (size_t)isz);
        }
    }
    Py_END_ALLOW_THREADS
    if (beyond) {
        Py_CLEAR(result);
        PyErr_Format(PyExc_ValueError, "rebuild: exception index %u beyond %zd elements", bad, n);
    }
done:
    PyBuffer_Release(&zv);
    PyBuffer_Release(&predv);
    if (idxv.obj) PyBuffer_Release(&idxv);
    if (excv.obj) PyBuffer_Release(&excv);
    return result;
}

static PyMethodDef methods[] = {
    {"join", kernel_join, METH_VARARGS, join_doc},
    {"rebuild", kernel_rebuild, METH_VARARGS, rebuild_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "modelfs.codecs.kernels",
    "The compiled decode kernels of the byte-plane and quantised-delta codecs (see kernels.c).", -1, methods,
};

PyMODINIT_FUNC PyInit_kernels(void) { return PyModule_Create(&module); }
