/* pipeline._kernels: the small array operations of a training step fused into one call.
 *
 * A step of batch 100 on the 784-50-10 network is two large matrix products (numpy's BLAS
 * does those) and about twenty small operations on 100 x 50 and 100 x 10 arrays, where
 * numpy spends more time per call than on the arithmetic. backprop_tail does all of those
 * in one pass; pipeline/network.py falls back to numpy when this module was not built.
 *
 * Built (pyproject.toml) with -ffp-contract=off (no fused multiply-add), so the results do
 * not depend on which of the vectorized copies the CPU runs; -fno-trapping-math, which lets
 * the compiler vectorize the comparisons (no effect on values); and -fno-wrapv, undoing the
 * -fwrapv of Python's own flags, under which gcc could not vectorize the index arithmetic
 * (the kernel took three times as long).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <limits.h>
#include <stdint.h>
#include <string.h>

#define CONCAT_(a, b) a##b
#define CONCAT(a, b) CONCAT_(a, b)
#define LANES 8 /* partial sums per reduction: the order of every sum is fixed */

/* An AVX2 copy of the kernel beside the baseline one, chosen when the module loads. */
#if defined(__GNUC__) && defined(__x86_64__) && defined(__has_attribute)
#if __has_attribute(target_clones)
#define VECTOR_CLONES __attribute__((target_clones("avx2", "default")))
#endif
#endif
#ifndef VECTOR_CLONES
#define VECTOR_CLONES
#endif

/* exp(x) without branches, so that loops calling it vectorize: x = k ln2 + r with |r| <= ln2 / 2
 * (Cody and Waite's two-part ln2), e^r by its Taylor polynomial, 2^k built in the exponent bits.
 * Within 1.3 ulp of the exact value. x is clamped first, to [-87, 87] in float (the results stay
 * normal numbers) and [-708, 708] in double, where e^x is below 1e-37 or above 1e37: the
 * sigmoid and softmax above see no difference. NaN stays NaN. */
static inline float exp_float(float x)
{
    x = x < -87.0f ? -87.0f : x;
    x = x > 87.0f ? 87.0f : x;
    const float round = 12582912.0f; /* 1.5 * 2^23: adding it rounds to an integer, k, in the low bits */
    float k = x * 1.44269504088896341f + round;
    uint32_t k_bits;
    memcpy(&k_bits, &k, sizeof k_bits);
    k -= round;
    float r = x - k * 0.693359375f;
    r = r - k * -2.12194440e-4f;
    float e = 1.0f / 5040;
    e = e * r + 1.0f / 720;
    e = e * r + 1.0f / 120;
    e = e * r + 1.0f / 24;
    e = e * r + 1.0f / 6;
    e = e * r + 0.5f;
    e = e * r + 1.0f;
    e = e * r + 1.0f;
    uint32_t two_k_bits = (k_bits + 127u) << 23; /* the high bits of `round` shift out */
    float two_k;
    memcpy(&two_k, &two_k_bits, sizeof two_k);
    return e * two_k;
}

static inline double exp_double(double x)
{
    x = x < -708.0 ? -708.0 : x;
    x = x > 708.0 ? 708.0 : x;
    const double round = 6755399441055744.0; /* 1.5 * 2^52 */
    double k = x * 1.4426950408889634074 + round;
    uint64_t k_bits;
    memcpy(&k_bits, &k, sizeof k_bits);
    k -= round;
    double r = x - k * 6.93147180369123816490e-01;
    r = r - k * 1.90821492927058770002e-10;
    double e = 1.0 / 6227020800.0;
    static const double inverse_factorials[] = {
        1.0 / 479001600.0, 1.0 / 39916800.0, 1.0 / 3628800.0, 1.0 / 362880.0, 1.0 / 40320.0,
        1.0 / 5040.0, 1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0};
    for (int n = 0; n < 13; n++)
        e = e * r + inverse_factorials[n];
    uint64_t two_k_bits = (k_bits + 1023u) << 52;
    double two_k;
    memcpy(&two_k, &two_k_bits, sizeof two_k);
    return e * two_k;
}

#define REAL float
#define EXP exp_float
#define TAIL backprop_tail_float
#include "_backprop_tail.h"
#undef REAL
#undef EXP
#undef TAIL

#define REAL double
#define EXP exp_double
#define TAIL backprop_tail_double
#include "_backprop_tail.h"
#undef REAL
#undef EXP
#undef TAIL

/* --- the Python function --- */

enum { A1, B1, W2B2, LABELS, P, DZ1T, G_B1, G_W2B2, WORK, N_ARRAYS };
static const char *const NAMES[N_ARRAYS] = {"a1", "b1", "W2b2", "labels", "p", "dz1T", "g_b1", "g_W2b2", "work"};

static int is_format(const Py_buffer *view, char code, Py_ssize_t itemsize)
{
    const char *format = view->format ? view->format : "B";
    if (*format == '<' || *format == '=' || *format == '@')
        format++;
    if (view->itemsize != itemsize || format[1] != '\0')
        return 0;
    return format[0] == code || (code == 'q' && format[0] == 'l' && sizeof(long) == 8);
}

PyDoc_STRVAR(backprop_tail_doc,
"backprop_tail(a1, b1, W2b2, labels, scale, p, dz1T, g_b1, g_W2b2, work)\n--\n\n"
"One batch's step between x W1 and W1's gradient: from a1 = x W1 (batch, hidden) it writes\n"
"p (the probability of each true class), dz1T (hidden, batch) = dL/da1 transposed, and b1's,\n"
"W2's and b2's gradients, all times scale. L is the mean cross-entropy of the batch. Arrays\n"
"are C-contiguous, all float32 or all float64 except labels (int64, each in [0, classes));\n"
"work holds (hidden + classes + 2) * batch values.");

static PyObject *backprop_tail(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 10) {
        PyErr_Format(PyExc_TypeError, "backprop_tail takes 10 arguments, %zd given", nargs);
        return NULL;
    }
    double scale = PyFloat_AsDouble(args[4]);
    if (scale == -1.0 && PyErr_Occurred())
        return NULL;
    PyObject *objects[N_ARRAYS] = {args[0], args[1], args[2], args[3], args[5], args[6], args[7], args[8], args[9]};
    Py_buffer views[N_ARRAYS];
    int got = 0;
    PyObject *result = NULL;
    for (; got < N_ARRAYS; got++) {
        int writable = got >= P;
        if (PyObject_GetBuffer(objects[got], &views[got], PyBUF_C_CONTIGUOUS | PyBUF_FORMAT |
                               (writable ? PyBUF_WRITABLE : 0)) < 0) {
            PyObject *type, *value, *traceback;
            PyErr_Fetch(&type, &value, &traceback);
            PyErr_NormalizeException(&type, &value, &traceback);
            PyErr_Format(PyExc_ValueError, "backprop_tail: %s must be a C-contiguous%s array (%S)", NAMES[got],
                         writable ? ", writable" : "", value);
            Py_XDECREF(type);
            Py_XDECREF(value);
            Py_XDECREF(traceback);
            goto done;
        }
    }
    if (!is_format(&views[LABELS], 'q', 8)) {
        PyErr_SetString(PyExc_TypeError, "backprop_tail: labels must be int64");
        goto done;
    }
    int is_double = is_format(&views[A1], 'd', 8);
    if (!is_double && !is_format(&views[A1], 'f', 4)) {
        PyErr_SetString(PyExc_TypeError, "backprop_tail: a1 must be float32 or float64");
        goto done;
    }
    const char *type_name = is_double ? "float64" : "float32";
    for (int n = 0; n < N_ARRAYS; n++)
        if (n != LABELS && !is_format(&views[n], is_double ? 'd' : 'f', is_double ? 8 : 4)) {
            PyErr_Format(PyExc_TypeError, "backprop_tail: %s must be %s like a1", NAMES[n], type_name);
            goto done;
        }
    Py_ssize_t count[N_ARRAYS];
    for (int n = 0; n < N_ARRAYS; n++)
        count[n] = views[n].len / views[n].itemsize;
    Py_ssize_t B = count[LABELS], H = count[B1], O = H > 0 ? count[W2B2] / (H + 1) : 0;
    if (B < 1 || H < 1 || O < 1 || (H + O + 2) > INT_MAX / B || O > INT_MAX / (H + 1)) { /* int indices */
        PyErr_Format(PyExc_ValueError, "backprop_tail: sizes batch %zd, hidden %zd, classes %zd out of range", B, H, O);
        goto done;
    }
    Py_ssize_t expected[N_ARRAYS] = {B * H, H, (H + 1) * O, B, B, H * B, H, (H + 1) * O, (H + O + 2) * B};
    for (int n = 0; n < N_ARRAYS; n++)
        if (count[n] != expected[n]) {
            PyErr_Format(PyExc_ValueError, "backprop_tail: %s must hold %zd %s values (batch %zd, hidden %zd, classes %zd)",
                         NAMES[n], expected[n], n == LABELS ? "int64" : type_name, B, H, O);
            goto done;
        }
    const int64_t *labels = views[LABELS].buf;
    for (Py_ssize_t i = 0; i < B; i++)
        if (labels[i] < 0 || labels[i] >= O) {
            PyErr_Format(PyExc_ValueError, "backprop_tail: label %lld of input %zd is not a class in [0, %zd)",
                         (long long)labels[i], i, O);
            goto done;
        }
    /* The GIL stays held: the call is a few tens of microseconds, and letting it go would let
     * the evaluating thread's Python code in before the training thread's next call. */
    if (is_double)
        backprop_tail_double((int)B, (int)H, (int)O, views[A1].buf, views[B1].buf, views[W2B2].buf, labels, scale,
                             views[P].buf, views[DZ1T].buf, views[G_B1].buf, views[G_W2B2].buf, views[WORK].buf);
    else
        backprop_tail_float((int)B, (int)H, (int)O, views[A1].buf, views[B1].buf, views[W2B2].buf, labels,
                            (float)scale, views[P].buf, views[DZ1T].buf, views[G_B1].buf, views[G_W2B2].buf,
                            views[WORK].buf);
    result = Py_NewRef(Py_None);
done:
    for (int n = 0; n < got; n++)
        PyBuffer_Release(&views[n]);
    return result;
}

static PyMethodDef methods[] = {
    {"backprop_tail", (PyCFunction)(void (*)(void))backprop_tail, METH_FASTCALL, backprop_tail_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "pipeline._kernels",
    "The small array operations of a training step fused into one call (see _kernels.c).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__kernels(void)
{
    return PyModule_Create(&module);
}
