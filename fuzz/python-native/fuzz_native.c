/* libFuzzer + AddressSanitizer over the Python package's C decoder, python/rtrace/_native.c (issue 16).
 *
 * _native.c is compiled into this binary (#include below, with the fuzzer's coverage and ASan), and
 * registered as the built-in module rtrace._native of a Python interpreter embedded here, so that the
 * real reader (python/rtrace/reader.py) calls it. PYTHONMALLOC=malloc (set before the interpreter
 * starts) puts every bytes object and numpy buffer on malloc, where ASan sees an out-of-bounds read.
 *
 * Two targets, chosen by RTRACE_FUZZ_TARGET:
 *
 *   reader (default)  Each input is a trace. fuzz/python-native/exercise.py reads it as given and with
 *                     every CRC-32 recomputed, as a file and as a pipe, with the C decoder and with the
 *                     numpy decoder, and through the index; any exception but rtrace.FormatError, or
 *                     the two decoders disagreeing (records or error), aborts. Python line coverage of
 *                     python/rtrace/ (*.py) feeds libFuzzer through its extra counters (a C trace
 *                     function), beside the C code's own coverage.
 *   api               Each input is turned into arguments of the module's four functions (count_new,
 *                     decode_ids, decode_chunk_ids, scatter_floats), mostly consistent, sometimes not
 *                     (wrong lengths, misaligned or short buffers, out-of-range sizes). Inconsistent
 *                     arguments must raise ValueError; consistent ones must decode exactly what a
 *                     reference decoder written from spec §6.2 and §5.5 in this file gives (ids, or
 *                     an error; the SSSE3 and scalar kernels both).
 *
 * Build and run: `make fuzz-python FUZZ_SECONDS=N` (Makefile). The kept crashes in
 * fuzz/regressions-python/ are replayed by python/tests/test_fuzz_regressions.py.
 */
#include "../../python/rtrace/_native.c"

#include <stdio.h>
#include <stdlib.h>

static int target_api;
static PyObject *exercise_fn;

/* ---------------------------------------------------------------------------------------------- */
/* Python coverage: edges between traced bytecode offsets of python/rtrace/ files, as extra counters */

#define PY_EDGES (1 << 16)
__attribute__((section("__libfuzzer_extra_counters"))) static uint8_t py_edges[PY_EDGES];

/* Whether a code object belongs to python/rtrace (its filename contains "/rtrace/"); cached per
 * code object pointer in a small open-addressed table (code objects of loaded modules live on). */
#define CODE_CACHE 4096
static struct {
    const void *code;
    int ours;
} code_cache[CODE_CACHE];

static int code_is_ours(PyCodeObject *code)
{
    size_t h = ((uintptr_t)code >> 4) & (CODE_CACHE - 1);
    for (int probe = 0; probe < CODE_CACHE; probe++, h = (h + 1) & (CODE_CACHE - 1)) {
        if (code_cache[h].code == code)
            return code_cache[h].ours;
        if (code_cache[h].code == NULL) {
            const char *name = PyUnicode_AsUTF8(code->co_filename);
            code_cache[h].code = code;
            code_cache[h].ours = name != NULL && strstr(name, "/rtrace/") != NULL;
            if (name == NULL)
                PyErr_Clear();
            return code_cache[h].ours;
        }
    }
    return 0;
}

static uintptr_t prev_location;

static int trace(PyObject *obj, PyFrameObject *frame, int what, PyObject *arg)
{
    (void)obj;
    (void)arg;
    if (what == PyTrace_LINE) {
        PyCodeObject *code = PyFrame_GetCode(frame);
        if (code_is_ours(code)) {
            uintptr_t here = ((uintptr_t)code >> 4) * 31 + (uintptr_t)PyFrame_GetLasti(frame);
            here = (here ^ (here >> 15)) * 0x2c1b3c6dU;
            py_edges[(here ^ prev_location) & (PY_EDGES - 1)]++;
            prev_location = here >> 1;
        }
        Py_DECREF(code);
    }
    return 0;
}

/* ---------------------------------------------------------------------------------------------- */
/* The interpreter                                                                                 */

static void die_with_python_error(const char *what)
{
    fprintf(stderr, "fuzz_native: %s\n", what);
    if (PyErr_Occurred())
        PyErr_Print();
    abort();
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    const char *t = getenv("RTRACE_FUZZ_TARGET");
    const char *here = getenv("RTRACE_FUZZ_DIR");  /* the repository root; the Makefile sets it */
    char path[4096];
    PyObject *mod;
    (void)argc;
    (void)argv;
    target_api = t != NULL && strcmp(t, "api") == 0;
    setenv("PYTHONMALLOC", "malloc", 1);
    setenv("PYTHONDONTWRITEBYTECODE", "1", 1);
    if (PyImport_AppendInittab("rtrace._native", PyInit__native) < 0)
        die_with_python_error("cannot register rtrace._native");
    Py_InitializeEx(0);
    snprintf(path, sizeof path,
             "import sys; sys.path[:0] = ['%s/python', '%s/fuzz/python-native']", here ? here : ".",
             here ? here : ".");
    if (PyRun_SimpleString(path) != 0)
        die_with_python_error("cannot set sys.path");
    mod = PyImport_ImportModule("exercise");
    if (mod == NULL)
        die_with_python_error("cannot import fuzz/python-native/exercise.py (set RTRACE_FUZZ_DIR)");
    exercise_fn = PyObject_GetAttrString(mod, "exercise");
    if (exercise_fn == NULL)
        die_with_python_error("exercise.py has no exercise()");
    if (PyObject_CallMethod(mod, "check_native", NULL) == NULL)
        die_with_python_error("the reader does not use the built-in rtrace._native");
    t = getenv("RTRACE_FUZZ_PYCOV");
    if (!target_api && !(t != NULL && strcmp(t, "0") == 0))
        PyEval_SetTrace(trace, NULL);
    return 0;
}

/* ---------------------------------------------------------------------------------------------- */
/* Target "reader"                                                                                 */

static void run_reader(const uint8_t *data, size_t size)
{
    PyObject *b = PyBytes_FromStringAndSize((const char *)data, (Py_ssize_t)size), *r;
    if (b == NULL)
        die_with_python_error("PyBytes_FromStringAndSize");
    r = PyObject_CallOneArg(exercise_fn, b);
    Py_DECREF(b);
    if (r == NULL)
        die_with_python_error("exercise() raised (a bug: see the traceback)");
    Py_DECREF(r);
}

/* ---------------------------------------------------------------------------------------------- */
/* Target "api": arguments from the input                                                          */

/* Reads the input front to back; past its end, zeros. */
typedef struct {
    const uint8_t *p;
    size_t n, at;
} Input;

static unsigned next_byte(Input *in)
{
    return in->at < in->n ? in->p[in->at++] : 0;
}

/* A bytes object of n bytes taken from the input (zeros past its end). */
static PyObject *next_bytes(Input *in, Py_ssize_t n)
{
    PyObject *b = PyBytes_FromStringAndSize(NULL, n);
    uint8_t *d;
    if (b == NULL)
        die_with_python_error("PyBytes_FromStringAndSize");
    d = (uint8_t *)PyBytes_AS_STRING(b);
    for (Py_ssize_t i = 0; i < n; i++)
        d[i] = (uint8_t)next_byte(in);
    return b;
}

/* A writable buffer of n bytes (a bytearray, malloc-aligned), or when `misalign`, a memoryview of
 * one starting one byte in. *data points at its bytes. */
static PyObject *out_buffer(Py_ssize_t n, int misalign, uint8_t **data)
{
    PyObject *ba = PyByteArray_FromStringAndSize(NULL, n + misalign), *mv, *sl;
    if (ba == NULL)
        die_with_python_error("PyByteArray_FromStringAndSize");
    memset(PyByteArray_AS_STRING(ba), 0xA5, (size_t)(n + misalign));
    *data = (uint8_t *)PyByteArray_AS_STRING(ba) + misalign;
    if (!misalign)
        return ba;
    mv = PyMemoryView_FromObject(ba);
    Py_DECREF(ba);
    sl = PySequence_GetSlice(mv, 1, n + 1);
    Py_DECREF(mv);
    if (sl == NULL)
        die_with_python_error("memoryview slice");
    return sl;
}

/* Calls fn(self=NULL, args); returns the result, or NULL after checking the exception is a
 * ValueError (what the module raises on inconsistent arguments) - anything else aborts. Consistent
 * arguments (`expect_ok`) must not raise at all. */
static PyObject *call(PyObject *(*fn)(PyObject *, PyObject *), PyObject *args, int expect_ok, const char *name)
{
    PyObject *r = fn(NULL, args);
    Py_DECREF(args);
    if (r != NULL)
        return r;
    if (expect_ok || !PyErr_ExceptionMatches(PyExc_ValueError)) {
        fprintf(stderr, "fuzz_native: %s raised on %s arguments\n", name, expect_ok ? "consistent" : "bad");
        die_with_python_error(name);
    }
    PyErr_Clear();
    return NULL;
}

/* Slot code i of a column (§6.3: nibble-packed, low nibble first, 15 the new marker) as a byte code. */
static unsigned ref_code(const uint8_t *codes, int packed, Py_ssize_t i)
{
    unsigned c = packed ? (codes[i / 2] >> (4 * (i & 1))) & 15 : codes[i];
    return packed && c == 15 ? 0xFF : c;
}

/* New id i of ID_NEW (u8, or u16 little-endian). */
static int32_t ref_new(const uint8_t *fresh, int width, Py_ssize_t i)
{
    return width == 1 ? fresh[i] : fresh[2 * i] | fresh[2 * i + 1] << 8;
}

/* The reference decoder of a chunk's ids, written from spec §6.2 (and §6.3 for packed codes): the
 * present (layer, row)s in coding order (each layer, each piece, each present row), a row's previous
 * row being the previous present row of its piece at its layer. Fills ref ([R, L, k] int32, -1 where
 * missing) and returns 1 when the coding is valid, 0 otherwise. */
static int reference_chunk(const uint8_t *codes_in, int packed, Py_ssize_t n_codes, const uint8_t *fresh,
                           Py_ssize_t n_fresh, int width, int k, Py_ssize_t L, Py_ssize_t R,
                           const int64_t *piece_rows, Py_ssize_t P, const uint8_t *present, int32_t *ref)
{
    Py_ssize_t entry = 0, taken = 0;
    if (packed && (n_codes & 1) && (codes_in[n_codes / 2] >> 4) != 0)
        return 0;
    for (Py_ssize_t l = 0; l < L; l++) {
        Py_ssize_t r = 0;
        for (Py_ssize_t p = 0; p < P; p++) {
            const int32_t *prev = NULL;
            for (Py_ssize_t end = r + piece_rows[p]; r < end; r++) {
                int32_t *o = ref + ((size_t)r * L + l) * k;
                if (present != NULL && !present[l * R + r]) {
                    for (int j = 0; j < k; j++)
                        o[j] = -1;
                    continue;
                }
                for (int j = 0; j < k; j++, entry++) {
                    unsigned c = ref_code(codes_in, packed, entry);
                    if (c == 0xFF) {
                        if (taken >= n_fresh)
                            return 0;
                        o[j] = ref_new(fresh, width, taken++);
                    } else if (c < (unsigned)k && prev != NULL) {
                        o[j] = prev[c];
                    } else {
                        return 0;
                    }
                }
                prev = o;
            }
        }
    }
    return taken == n_fresh;
}

/* The reference decoder of decode_ids (§6.2): rows q = 0 .. n_codes/k - 1 in order, row q's previous
 * row being row q - 1 where valid[q] (q > 0). Fills ref; returns whether the coding is valid. */
static int reference_rows(const uint8_t *codes_in, int packed, Py_ssize_t n_codes, const uint8_t *fresh,
                          Py_ssize_t n_fresh, int width, int k, const uint8_t *valid, int32_t *ref)
{
    Py_ssize_t taken = 0;
    if (packed && (n_codes & 1) && (codes_in[n_codes / 2] >> 4) != 0)
        return 0;
    for (Py_ssize_t entry = 0; entry < n_codes; entry++) {
        Py_ssize_t q = entry / k;
        unsigned c = ref_code(codes_in, packed, entry);
        if (c == 0xFF) {
            if (taken >= n_fresh)
                return 0;
            ref[entry] = ref_new(fresh, width, taken++);
        } else if (c < (unsigned)k && q > 0 && valid[q]) {
            ref[entry] = ref[entry - k - entry % k + c];
        } else {
            return 0;
        }
    }
    return taken == n_fresh;
}

/* A slot code from an input byte: mostly a valid code (reuse m < k, or the new marker), sometimes the
 * raw byte. */
static uint8_t slot_code(unsigned b, int k, int raw)
{
    if (raw)
        return (uint8_t)b;
    return b % (unsigned)(k + 1) == (unsigned)k ? 0xFF : (uint8_t)(b % (unsigned)(k + 1));
}

/* count_new, decode_chunk_ids (both kernels) and decode_ids on one chunk made from the input. */
static void run_ids(Input *in, unsigned flags)
{
    const int packed = flags >> 2 & 1, all_present = flags >> 3 & 1, bad = flags >> 4 & 1, raw = flags >> 5 & 1;
    int k = (int)(next_byte(in) % (packed ? 15 : 20)) + 1, width = (int)(next_byte(in) & 1) + 1;
    Py_ssize_t L = (Py_ssize_t)(next_byte(in) % 6) + 1, R = (Py_ssize_t)(next_byte(in) % 80);
    Py_ssize_t P = (Py_ssize_t)(next_byte(in) % 8) + 1, Q = 0, n_codes, slot_len, markers = 0, n_fresh;
    int64_t piece_rows[8] = {0};
    uint8_t *present = NULL, *codes, *out_data;
    /* perturb: which argument is made inconsistent (1-10), or none (0, 11-255) */
    unsigned perturb = bad ? next_byte(in) : 0;
    const int bad_count = perturb == 1 || perturb == 7;
    const int bad_chunk = (perturb >= 1 && perturb <= 6 && (perturb != 2 || width == 2)) || perturb == 8 || perturb == 9;
    const int bad_ids = perturb == 1 || (perturb == 2 && width == 2) || perturb == 10;
    PyObject *slots, *fresh, *pieces, *present_obj, *out, *r;
    int32_t *ref;
    int ref_ok;

    /* rows per piece: R split at P - 1 points from the input (empty pieces included) */
    for (Py_ssize_t p = 0, left = R; p < P; p++) {
        int64_t n = p == P - 1 ? left : (int64_t)(next_byte(in) % (unsigned)(left + 1));
        piece_rows[p] = n;
        left -= n;
    }
    if (!all_present && L * R > 0) {
        present = malloc((size_t)(L * R));
        for (Py_ssize_t i = 0; i < L * R; i += 8) {
            unsigned bits = next_byte(in);
            for (Py_ssize_t j = i; j < i + 8 && j < L * R; j++)
                present[j] = (uint8_t)(bits >> (j - i) & 1);
        }
    }
    for (Py_ssize_t i = 0; i < L * R; i++)
        Q += present == NULL || present[i];
    n_codes = Q * k;
    slot_len = packed ? (n_codes + 1) / 2 : n_codes;
    codes = calloc((size_t)slot_len + 1, 1);
    for (Py_ssize_t i = 0; i < n_codes; i++) {
        uint8_t c = slot_code(next_byte(in), k, raw);
        if (packed) {
            uint8_t nib = c == 0xFF ? 15 : (raw ? c & 15 : c);
            codes[i / 2] |= (uint8_t)(nib << (4 * (i & 1)));
            markers += nib == 15;
        } else {
            codes[i] = c;
            markers += c == 0xFF;
        }
    }
    if (packed && raw && (n_codes & 1) && (next_byte(in) & 1))
        codes[n_codes / 2] |= 0x10;    /* a stray high nibble */
    n_fresh = markers + (raw ? (Py_ssize_t)(next_byte(in) % 3) - 1 : 0);
    if (n_fresh < 0)
        n_fresh = 0;
    slots = PyBytes_FromStringAndSize((const char *)codes, slot_len - (perturb == 1 && slot_len > 0));
    fresh = next_bytes(in, n_fresh * width + (perturb == 2));
    n_fresh = PyBytes_GET_SIZE(fresh) / width;   /* the ids the decoders see (perturb 2: one byte more) */
    pieces = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(P * 8));
    memcpy(PyBytes_AS_STRING(pieces), piece_rows, (size_t)(P * 8));
    if (perturb == 3)
        ((int64_t *)PyBytes_AS_STRING(pieces))[0] += 1;
    if (present != NULL)
        present_obj = PyBytes_FromStringAndSize((const char *)present, L * R - (perturb == 4));
    else {
        present_obj = Py_None;
        Py_INCREF(Py_None);
    }
    out = out_buffer(R * L * k * 4 + (perturb == 5 ? 4 : 0), perturb == 6, &out_data);

    /* count_new: the markers among the first n_codes codes */
    r = call(count_new, Py_BuildValue("(Oin)", slots, packed, perturb == 7 ? n_codes + 2 : n_codes),
             !bad_count, "count_new");
    if (r != NULL && !bad_count && PyLong_AsSsize_t(r) != markers) {
        fprintf(stderr, "fuzz_native: count_new says %zd markers, expected %zd\n", PyLong_AsSsize_t(r), markers);
        abort();
    }
    Py_XDECREF(r);

    /* decode_chunk_ids: the reference, then both kernels */
    ref = malloc((size_t)(R * L * k) * 4 + 4);
    ref_ok = reference_chunk(codes, packed, n_codes, (const uint8_t *)PyBytes_AS_STRING(fresh), n_fresh, width, k, L,
                             R, piece_rows, P, present, ref);
    for (int simd = 0; simd < 2; simd++) {
        simd_enabled = simd && simd_available;
        r = call(decode_chunk_ids,
                 Py_BuildValue("(OiOiinnOOO)", slots, packed, fresh, (int)(perturb == 8 ? 3 : width),
                               perturb == 9 ? 0 : k, L, R, pieces, present_obj, out),
                 !bad_chunk, "decode_chunk_ids");
        if (r == NULL)
            continue;
        if ((r == Py_None) != ref_ok) {
            fprintf(stderr, "fuzz_native: decode_chunk_ids (simd %d) %s, the reference %s\n", simd,
                    r == Py_None ? "accepts" : "rejects", ref_ok ? "accepts" : "rejects");
            abort();
        }
        if (ref_ok && memcmp(out_data, ref, (size_t)(R * L * k) * 4) != 0) {
            fprintf(stderr, "fuzz_native: decode_chunk_ids (simd %d) decodes other ids than the reference\n", simd);
            abort();
        }
        Py_DECREF(r);
    }
    simd_enabled = simd_available;

    /* decode_ids: the same codes as rows in order, each row's previous row (row q - 1) flagged by the
     * input, against reference_rows */
    {
        Py_ssize_t rows = n_codes / k;
        PyObject *valid = next_bytes(in, rows), *out2;
        uint8_t *out2_data, *v = (uint8_t *)PyBytes_AS_STRING(valid);
        int32_t *ref2 = malloc((size_t)(rows * k) * 4 + 4);
        int ok2 = reference_rows(codes, packed, n_codes, (const uint8_t *)PyBytes_AS_STRING(fresh), n_fresh, width,
                                 k, v, ref2);
        out2 = out_buffer(rows * k * 4, perturb == 10, &out2_data);
        r = call(decode_ids, Py_BuildValue("(OiOiOiO)", slots, packed, fresh, width, valid, k, out2), !bad_ids,
                 "decode_ids");
        if (r != NULL && !bad_ids) {
            if ((r == Py_None) != ok2 || (ok2 && memcmp(out2_data, ref2, (size_t)(rows * k) * 4) != 0)) {
                fprintf(stderr, "fuzz_native: decode_ids differs from the reference (%s, reference %s)\n",
                        r == Py_None ? "accepts" : "rejects", ok2 ? "accepts" : "rejects");
                abort();
            }
        }
        Py_XDECREF(r);
        free(ref2);
        Py_DECREF(valid);
        Py_DECREF(out2);
    }

    free(ref);
    free(codes);
    free(present);
    Py_DECREF(slots);
    Py_DECREF(fresh);
    Py_DECREF(pieces);
    Py_DECREF(present_obj);
    Py_DECREF(out);
}

/* scatter_floats on a column made from the input, against a reference scatter (§5.5, §6.1). */
static void run_floats(Input *in, unsigned flags)
{
    static const int widths[4] = {1, 2, 4, 8};
    const int all_present = flags >> 3 & 1, bad = flags >> 4 & 1, shuffled = flags >> 5 & 1;
    int w = widths[next_byte(in) & 3];
    Py_ssize_t n = (Py_ssize_t)(next_byte(in) % 40) + 1, L = (Py_ssize_t)(next_byte(in) % 5) + 1;
    Py_ssize_t R = (Py_ssize_t)(next_byte(in) % 150), Q = 0;
    unsigned perturb = bad ? next_byte(in) % 6 : 0;
    uint8_t *present = NULL, *out_data, *ref, *src;
    PyObject *data, *present_obj, *out, *r;
    size_t N;

    if (!all_present && L * R > 0) {
        present = calloc((size_t)(L * R) + 1, 1);  /* + 1: the perturbed, one byte longer argument */
        for (Py_ssize_t i = 0; i < L * R; i++)
            present[i] = (uint8_t)(next_byte(in) & 1);
    }
    for (Py_ssize_t i = 0; i < L * R; i++)
        Q += present == NULL || present[i];
    data = next_bytes(in, Q * n * w - (perturb == 1 && Q > 0));
    src = (uint8_t *)PyBytes_AS_STRING(data);
    if (present != NULL)
        present_obj = PyBytes_FromStringAndSize((const char *)present, L * R + (perturb == 2));
    else {
        present_obj = Py_None;
        Py_INCREF(Py_None);
    }
    out = out_buffer(R * L * n * w + (perturb == 3), 0, &out_data);
    r = call(scatter_floats,
             Py_BuildValue("(OiinnnOO)", data, perturb == 4 ? 3 : w, shuffled, perturb == 5 ? 0 : n, L, R,
                           present_obj, out),
             !bad || perturb == 0, "scatter_floats");
    if (r != NULL) {
        /* the reference: value v of present (l, r) is element (layer l's first + its rank) * n + v of
         * the layer-major column; byte b of element i at b * N + i when shuffled */
        N = (size_t)(Q * n);
        ref = malloc((size_t)(R * L * n * w) + 1);
        for (Py_ssize_t l = 0, q = 0; l < L; l++)
            for (Py_ssize_t row = 0; row < R; row++) {
                uint8_t *o = ref + ((size_t)row * L + l) * n * w;
                if (present != NULL && !present[l * R + row]) {
                    memset(o, 0, (size_t)(n * w));
                    continue;
                }
                for (Py_ssize_t v = 0; v < n; v++)
                    for (int b = 0; b < w; b++) {
                        size_t i = (size_t)(q * n + v);
                        o[v * w + b] = shuffled ? src[b * N + i] : src[i * w + b];
                    }
                q++;
            }
        if (memcmp(ref, out_data, (size_t)(R * L * n * w)) != 0) {
            fprintf(stderr, "fuzz_native: scatter_floats differs from the reference scatter\n");
            abort();
        }
        free(ref);
        Py_DECREF(r);
    }
    free(present);
    Py_DECREF(data);
    Py_DECREF(present_obj);
    Py_DECREF(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!target_api) {
        run_reader(data, size);
        return 0;
    }
    Input in = {data, size, 0};
    unsigned flags = next_byte(&in);
    if (flags & 1)
        run_floats(&in, flags);
    else
        run_ids(&in, flags);
    return 0;
}
