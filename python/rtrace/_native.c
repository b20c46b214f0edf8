/* rtrace._native: the optional compiled accelerator of the Python reader.
 *
 * Written from spec/format.md: the ordered-reuse expert ids (§6.2), nibble-packed ID_SLOTS (§6.3),
 * the present (layer, row)s of MISSING (§5.4), layer-major float columns (§5.5) and the byte-shuffle
 * (§6.1). It decodes what rtrace/reader.py's numpy code decodes, bit for bit, and finds the same
 * errors; reader.py turns the error tuples returned here into its FormatError messages.
 *
 * Only the CPython C API and the buffer protocol: inputs are contiguous buffers (bytes, numpy
 * arrays), results go into writable buffers the caller allocated. No loop holds the GIL.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <string.h>

#define NEW_MARKER 0xFF      /* §6.2: the slot code of an id taken from ID_NEW */
#define NIBBLE_NEW 15        /* §6.3: NEW_MARKER as a nibble */
#define MAX_CODE 256         /* a slot code is one byte */
#define MAX_ROWS (1 << 24)   /* §8 limits, checked on the arguments */
#define MAX_LAYERS 65535
#define MAX_TOP_K 254
#define MAX_VALUES 65535     /* values per (layer, row) of a float column: top_k or num_experts */

/* The kinds of the error tuple (kind, entry, value) of decode_ids and decode_chunk_ids. */
enum {
    ERR_NONE = 0,
    ERR_BAD_CODE = 1,     /* a slot code neither NEW_MARKER nor < top_k: its entry and code */
    ERR_NO_PREVIOUS = 2,  /* a reuse code in a row without a previous row: its entry and code */
    ERR_NEW_COUNT = 3,    /* ID_NEW holds another number of ids than there are markers: markers, 0 */
    ERR_STRAY_NIBBLE = 4, /* packed, an odd number of codes and a non-zero unused last nibble: its entry, nibble */
};

typedef struct {
    int kind;
    Py_ssize_t entry;
    unsigned value;
} IdError;

static const int32_t ZERO_ROW[MAX_CODE] = {0};
static const uint8_t ZERO_ID[2] = {0, 0};

/* ---------------------------------------------------------------------------------------------- */
/* Slot codes (§6.2, §6.3)                                                                         */

/* The ID_SLOTS codes: one per byte, or nibble-packed (two per byte, low nibble first). */
typedef struct {
    const uint8_t *data;
    Py_ssize_t count;
    int packed;
} Codes;

/* A nibble as the byte code of §6.2 (15 is NEW_MARKER), without a branch. */
static inline unsigned nibble_code(unsigned v)
{
    return v | (-(unsigned)(v == NIBBLE_NEW) & 0xF0);
}

/* Code i as the byte code of §6.2. */
static inline unsigned code_at(const Codes *c, Py_ssize_t i)
{
    if (!c->packed)
        return c->data[i];
    return nibble_code((c->data[i >> 1] >> ((i & 1) << 2)) & 15);
}

/* A packed byte's two codes, low nibble first, as byte codes (filled by init_nibble_pairs). */
static uint8_t NIBBLE_PAIRS[256][2];

static void init_nibble_pairs(void)
{
    for (unsigned b = 0; b < 256; b++) {
        NIBBLE_PAIRS[b][0] = (uint8_t)nibble_code(b & 15);
        NIBBLE_PAIRS[b][1] = (uint8_t)nibble_code(b >> 4);
    }
}

/* Copies the k codes from entry `first` into dst, as byte codes (packed: a table look-up per byte). */
static inline void read_codes(const Codes *c, Py_ssize_t first, int k, uint8_t *dst)
{
    int j = 0;
    if (!c->packed) {
        memcpy(dst, c->data + first, (size_t)k);
        return;
    }
    if (first & 1)
        dst[j++] = (uint8_t)code_at(c, first);
    for (; j + 1 < k; j += 2)
        memcpy(dst + j, NIBBLE_PAIRS[c->data[(first + j) >> 1]], 2);
    if (j < k)
        dst[j] = (uint8_t)code_at(c, first + j);
}

/* Whether code c is invalid in a row of top_k k, given whether the row has a previous row. */
static inline int code_invalid(unsigned c, int k, int has_prev)
{
    return c != NEW_MARKER && (c >= (unsigned)k || !has_prev);
}

/* The first code at or after entry `from` that is neither NEW_MARKER nor < k, or -1. */
static Py_ssize_t first_bad_code(const Codes *c, Py_ssize_t from, int k)
{
    for (Py_ssize_t i = from; i < c->count; i++)
        if (code_invalid(code_at(c, i), k, 1))
            return i;
    return -1;
}

/* Number of NEW_MARKER codes in n code bytes (one code per byte). */
static Py_ssize_t count_marker_bytes(const uint8_t *p, Py_ssize_t n)
{
    Py_ssize_t total = 0;
    while (n > 0) {  /* blocks with a 32-bit count, which the compiler vectorises */
        uint32_t part = 0;
        Py_ssize_t m = n < (1 << 20) ? n : (1 << 20);
        for (Py_ssize_t i = 0; i < m; i++)
            part += p[i] == NEW_MARKER;
        total += part;
        p += m;
        n -= m;
    }
    return total;
}

/* Number of NEW_MARKER nibbles in n packed bytes (two codes per byte). */
static Py_ssize_t count_marker_nibbles(const uint8_t *p, Py_ssize_t n)
{
    Py_ssize_t total = 0;
    while (n > 0) {
        uint32_t part = 0;
        Py_ssize_t m = n < (1 << 20) ? n : (1 << 20);
        for (Py_ssize_t i = 0; i < m; i++)
            part += ((p[i] & 15) == NIBBLE_NEW) + ((p[i] >> 4) == NIBBLE_NEW);
        total += part;
        p += m;
        n -= m;
    }
    return total;
}

/* Number of NEW_MARKER codes among entries [from, to). */
static Py_ssize_t count_markers(const Codes *c, Py_ssize_t from, Py_ssize_t to)
{
    Py_ssize_t n = 0;
    if (from >= to)
        return 0;
    if (!c->packed)
        return count_marker_bytes(c->data + from, to - from);
    if (from & 1)
        n += code_at(c, from++) == NEW_MARKER;
    if (to & 1)
        n += code_at(c, --to) == NEW_MARKER;
    return n + (from < to ? count_marker_nibbles(c->data + (from >> 1), (to - from) >> 1) : 0);
}

/* ---------------------------------------------------------------------------------------------- */
/* Decoding rows of ids (§6.2)                                                                     */

/* The ID_NEW ids (u8, or u16 little-endian). */
typedef struct {
    const uint8_t *data;  /* a zero id when the column is empty, so that every read stays in bounds */
    Py_ssize_t count;
    Py_ssize_t last;      /* the last readable index: reads are clamped to it */
    int width;
} NewIds;

/* A coded id column: its slot codes, its ID_NEW ids and top_k. */
typedef struct {
    Codes codes;
    NewIds fresh;
    int k;
    unsigned mask;              /* the smallest 2^n - 1 >= k - 1: see DECODE_CODES */
    uint8_t invalid[2][256];    /* invalid[has_prev][code]: whether code is invalid in such a row */
    int simd;                   /* the row-order decoder uses decode_row_ssse3 (k <= 8, SSSE3 in use) */
} Coding;

/* Decodes the k codes c of a row into row, given the previous row (ZERO_ROW when there is none)
 * and ID_NEW ids of W bytes, the next one being *taken; returns whether a code is invalid.
 * Branch-free per code: a marker takes the next id, any other code c reads prev[c & mask] (c < k
 * reads prev[c]; mask < 2k keeps any other read within prev's row and the k entries after it, which
 * the callers' rows always have), and an invalid code (cd->invalid) raises the returned flag.
 * Every code reads the next id; CLAMP keeps that read within the column, which the row needs only
 * when fewer than k ids are left. */
#define DECODE_CODES(NAME, W, CLAMP)                                                                     \
    static inline int NAME(const uint8_t *c, const Coding *cd, const int32_t *prev, int has_prev,       \
                           Py_ssize_t *taken, int32_t *row)                                             \
    {                                                                                                   \
        const uint8_t *ids = cd->fresh.data, *invalid = cd->invalid[has_prev];                          \
        const Py_ssize_t last = cd->fresh.last;                                                         \
        const unsigned mask = cd->mask;                                                                 \
        Py_ssize_t t = *taken;                                                                          \
        unsigned bad = 0;                                                                               \
        for (int j = 0; j < cd->k; j++) {                                                               \
            unsigned cj = c[j], is_new = cj == NEW_MARKER;                                              \
            Py_ssize_t i = CLAMP && t > last ? last : t;                                                \
            int32_t fresh = W == 1 ? ids[i] : (int32_t)(ids[2 * i] | (unsigned)ids[2 * i + 1] << 8);    \
            int32_t old = prev[cj & mask];                                                              \
            row[j] = old ^ ((old ^ fresh) & -(int32_t)is_new); /* is_new ? fresh : old, no branch */    \
            t += is_new;                                                                                \
            bad |= invalid[cj];                                                                         \
        }                                                                                               \
        *taken = t;                                                                                     \
        return bad != 0;                                                                                \
    }
DECODE_CODES(decode_codes_u8, 1, 0)
DECODE_CODES(decode_codes_u16, 2, 0)
DECODE_CODES(decode_codes_u8_clamped, 1, 1)
DECODE_CODES(decode_codes_u16_clamped, 2, 1)

/* Decodes the row of k codes at `entry` into row, the previous row being prev (NULL: none); takes
 * ID_NEW ids from *taken on. Returns whether a code is invalid (row then holds garbage). */
static inline int decode_row(const Coding *cd, Py_ssize_t entry, const int32_t *prev, Py_ssize_t *taken,
                             int32_t *row)
{
    uint8_t c[MAX_CODE];
    const int32_t *p = prev ? prev : ZERO_ROW;
    read_codes(&cd->codes, entry, cd->k, c);
    if (*taken + cd->k <= cd->fresh.count)
        return cd->fresh.width == 1 ? decode_codes_u8(c, cd, p, prev != NULL, taken, row)
                                    : decode_codes_u16(c, cd, p, prev != NULL, taken, row);
    return cd->fresh.width == 1 ? decode_codes_u8_clamped(c, cd, p, prev != NULL, taken, row)
                                : decode_codes_u16_clamped(c, cd, p, prev != NULL, taken, row);
}

/* The SSSE3 kernel: a row of k <= 8 codes in a few vector instructions, on x86 CPUs that have SSSE3
 * (checked at import; use_simd() turns it off for tests). Elsewhere the scalar DECODE_CODES runs. */
static int simd_available, simd_enabled;

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define HAVE_SSSE3_KERNEL 1
#include <immintrin.h>

/* EXPAND[width - 1][m]: for a row whose markers are the set bits m of its 8 codes, the byte shuffle
 * that puts the row's i-th new id (u8, or u16 little-endian, from a vector of the next ids) into the
 * int32 lane of its i-th marker, zero-extended; bytes with bit 7 set come out zero. */
static uint8_t EXPAND[2][256][32];

static void init_expand(void)
{
    for (unsigned m = 0; m < 256; m++) {
        unsigned rank = 0;
        memset(EXPAND[0][m], 0x80, 32);
        memset(EXPAND[1][m], 0x80, 32);
        for (unsigned j = 0; j < 8; j++)
            if (m >> j & 1) {
                EXPAND[0][m][4 * j] = (uint8_t)rank;
                EXPAND[1][m][4 * j] = (uint8_t)(2 * rank);
                EXPAND[1][m][4 * j + 1] = (uint8_t)(2 * rank + 1);
                rank++;
            }
    }
}

/* Four int32 lanes of prev[c] for the codes whose byte offsets 4c sit in bytes `lanes` (0-3 or 4-7)
 * of c4: pshufb picks each lane's bytes from prev's low half (c < 4) or high half (c >= 4); a
 * control byte with bit 7 set (a marker: 4 * 0xFF = 0xFC mod 256; the other half) gives zero. */
__attribute__((target("ssse3"))) static inline __m128i gather_prev(__m128i c4, __m128i lanes, __m128i lo,
                                                                  __m128i hi)
{
    const __m128i byte_of_lane = _mm_set_epi8(3, 2, 1, 0, 3, 2, 1, 0, 3, 2, 1, 0, 3, 2, 1, 0);
    const __m128i bit4 = _mm_set1_epi8(0x10);
    __m128i idx = _mm_add_epi8(_mm_shuffle_epi8(c4, lanes), byte_of_lane);
    __m128i in_hi = _mm_slli_epi16(_mm_and_si128(idx, bit4), 3);                   /* 0x80 where c >= 4 */
    __m128i in_lo = _mm_slli_epi16(_mm_andnot_si128(idx, bit4), 3);                /* 0x80 where c < 4 */
    return _mm_or_si128(_mm_shuffle_epi8(lo, _mm_or_si128(idx, in_hi)), _mm_shuffle_epi8(hi, _mm_or_si128(idx, in_lo)));
}

/* The 8 codes from entry `first` (those past k are ignored) as bytes of a vector: loaded straight
 * from the column (two codes per byte split into nibbles when packed), or through read_codes near the
 * column's end and at an odd entry of a packed column. */
__attribute__((target("ssse3"))) static inline __m128i load_codes8(const Codes *c, Py_ssize_t first, int k)
{
    uint8_t buf[8] = {0};
    if (!c->packed && first + 8 <= c->count)
        return _mm_loadl_epi64((const __m128i *)(c->data + first));
    if (c->packed && !(first & 1) && first + 8 <= c->count) {
        int32_t four;
        __m128i b, nib, fifteen = _mm_set1_epi8(NIBBLE_NEW);
        memcpy(&four, c->data + first / 2, 4);
        b = _mm_cvtsi32_si128(four);
        nib = _mm_unpacklo_epi8(_mm_and_si128(b, fifteen), _mm_and_si128(_mm_srli_epi16(b, 4), fifteen));
        return _mm_or_si128(nib, _mm_and_si128(_mm_cmpeq_epi8(nib, fifteen), _mm_set1_epi8((char)0xF0)));
    }
    read_codes(c, first, k, buf);
    return _mm_loadl_epi64((const __m128i *)buf);
}

/* DECODE_CODES for the row of k <= 8 codes at `entry`, with SSSE3: the same row and the same flag.
 * Needs 8 ids readable from *taken on (the caller checks); prev's k lanes are copied when k < 8. */
__attribute__((target("ssse3"))) static inline int decode_row_ssse3(const Coding *cd, Py_ssize_t entry,
                                                                    const int32_t *prev, int has_prev,
                                                                    Py_ssize_t *taken, int32_t *row)
{
    const int k = cd->k, W = cd->fresh.width;
    const unsigned lanes = (1u << k) - 1;
    int32_t prev8[8] = {0}, row8[8];
    __m128i codes, top, ok, c4, ids, lo, hi, out_lo, out_hi;
    unsigned markers, valid;

    if (k < 8)
        memcpy(prev8, prev, (size_t)k * sizeof(int32_t));
    lo = _mm_loadu_si128((const __m128i *)(k < 8 ? prev8 : prev));
    hi = _mm_loadu_si128((const __m128i *)(k < 8 ? prev8 : prev) + 1);
    codes = load_codes8(&cd->codes, entry, k);
    markers = (unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(codes, _mm_set1_epi8((char)NEW_MARKER))) & lanes;
    top = _mm_set1_epi8((char)(k - 1));
    ok = _mm_cmpeq_epi8(_mm_max_epu8(codes, top), top);                              /* c <= k - 1 */
    valid = markers | (has_prev ? (unsigned)_mm_movemask_epi8(ok) & lanes : 0);
    c4 = _mm_add_epi8(codes, codes);
    c4 = _mm_add_epi8(c4, c4);
    ids = W == 1 ? _mm_loadl_epi64((const __m128i *)(cd->fresh.data + *taken))
                 : _mm_loadu_si128((const __m128i *)(cd->fresh.data + 2 * *taken));
    out_lo = _mm_or_si128(gather_prev(c4, _mm_set_epi8(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0), lo, hi),
                          _mm_shuffle_epi8(ids, _mm_loadu_si128((const __m128i *)EXPAND[W - 1][markers])));
    out_hi = _mm_or_si128(gather_prev(c4, _mm_set_epi8(7, 7, 7, 7, 6, 6, 6, 6, 5, 5, 5, 5, 4, 4, 4, 4), lo, hi),
                          _mm_shuffle_epi8(ids, _mm_loadu_si128((const __m128i *)EXPAND[W - 1][markers] + 1)));
    _mm_storeu_si128((__m128i *)(k < 8 ? row8 : row), out_lo);
    _mm_storeu_si128((__m128i *)(k < 8 ? row8 : row) + 1, out_hi);
    if (k < 8)
        memcpy(row, row8, (size_t)k * sizeof(int32_t));
    *taken += __builtin_popcount(markers);
    return valid != lanes;
}

/* decode_row with the SSSE3 kernel where 8 ids are left to read. */
__attribute__((target("ssse3"))) static inline int decode_row_simd(const Coding *cd, Py_ssize_t entry,
                                                                   const int32_t *prev, Py_ssize_t *taken,
                                                                   int32_t *row)
{
    if (*taken + 8 <= cd->fresh.count)
        return decode_row_ssse3(cd, entry, prev ? prev : ZERO_ROW, prev != NULL, taken, row);
    return decode_row(cd, entry, prev, taken, row);
}

/* Whether this CPU runs the SSSE3 kernel; fills its tables (at import). */
static int init_simd(void)
{
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("ssse3"))
        return 0;
    init_expand();
    return 1;
}
#else
static int init_simd(void)
{
    return 0;
}
#endif

/* The error of the row at `entry`, in the order reader.py reports errors: its first invalid code,
 * unless that is a reuse code without a previous row and a later code is a bad byte (bad bytes
 * anywhere come first). */
static void locate_error(const Coding *cd, Py_ssize_t entry, int has_prev, IdError *err)
{
    for (int j = 0; j < cd->k; j++) {
        unsigned c = code_at(&cd->codes, entry + j);
        Py_ssize_t bad;
        if (!code_invalid(c, cd->k, has_prev))
            continue;
        *err = (IdError){c >= (unsigned)cd->k ? ERR_BAD_CODE : ERR_NO_PREVIOUS, entry + j, c};
        if (err->kind == ERR_NO_PREVIOUS && (bad = first_bad_code(&cd->codes, entry + j + 1, cd->k)) >= 0)
            *err = (IdError){ERR_BAD_CODE, bad, code_at(&cd->codes, bad)};
        return;
    }
}

/* Whether a packed column's unused high nibble (an odd number of codes) is non-zero, which §6.3
 * forbids; sets *err. */
static int stray_nibble(const Codes *c, IdError *err)
{
    unsigned high;
    if (!c->packed || !(c->count & 1) || !(high = c->data[c->count / 2] >> 4))
        return 0;
    *err = (IdError){ERR_STRAY_NIBBLE, c->count, high};
    return 1;
}

/* After a pass that took `taken` ids without an invalid code: the count error, if any. */
static void check_new_count(const Coding *cd, Py_ssize_t taken, IdError *err)
{
    if (taken != cd->fresh.count)
        *err = (IdError){ERR_NEW_COUNT, taken, 0};
}

/* Decodes Q rows in order into out (Q*k int32), row q's previous row being row q - 1 where
 * has_prev[q] (q > 0); stops at the first invalid code. Sets *err. */
static void decode_rows_in_order(const Coding *cd, const uint8_t *has_prev, Py_ssize_t Q, int32_t *out,
                                 IdError *err)
{
    Py_ssize_t taken = 0;
    for (Py_ssize_t q = 0; q < Q; q++, out += cd->k) {
        const int32_t *prev = q > 0 && has_prev[q] ? out - cd->k : NULL;
        if (decode_row(cd, q * cd->k, prev, &taken, out)) {
            locate_error(cd, q * cd->k, prev != NULL, err);
            return;
        }
    }
    check_new_count(cd, taken, err);
}

/* ---------------------------------------------------------------------------------------------- */
/* A chunk's (layer, row) grid (§4, §5.4)                                                          */

typedef struct {
    Py_ssize_t L, R;
    const uint8_t *present;  /* L*R bytes, layer-major, non-zero = present; NULL = all present */
} Grid;

/* Whether (layer l, row r) is present. */
static inline int is_present(const Grid *g, Py_ssize_t l, Py_ssize_t r)
{
    return g->present == NULL || g->present[l * g->R + r];
}

/* Present rows of layer l. */
static Py_ssize_t layer_present(const Grid *g, Py_ssize_t l)
{
    Py_ssize_t n = 0;
    if (g->present == NULL)
        return g->R;
    for (Py_ssize_t r = 0; r < g->R; r++)
        n += g->present[l * g->R + r] != 0;
    return n;
}

/* Number of present (layer, row)s. */
static long long count_present(const Grid *g)
{
    long long q = 0;
    for (Py_ssize_t l = 0; l < g->L; l++)
        q += layer_present(g, l);
    return q;
}

/* ---------------------------------------------------------------------------------------------- */
/* Decoding a chunk's ids                                                                          */

/* Decodes in coding order (§6.2: each layer, each piece, each present row) into out, [R, L, k]
 * row-major, -1 for a missing (layer, row); stops at the first invalid code. Sets *err. */
static void decode_chunk_in_order(const Coding *cd, const Grid *g, const int64_t *piece_rows, Py_ssize_t P,
                                  int32_t *out, IdError *err)
{
    const int k = cd->k;
    Py_ssize_t entry = 0, taken = 0;
    for (Py_ssize_t l = 0; l < g->L; l++) {
        Py_ssize_t r = 0;
        for (Py_ssize_t p = 0; p < P; p++) {
            const int32_t *prev = NULL;  /* the previous present row of this piece at this layer */
            for (Py_ssize_t end = r + (Py_ssize_t)piece_rows[p]; r < end; r++) {
                int32_t *o = out + ((size_t)r * g->L + l) * k;
                if (!is_present(g, l, r)) {
                    memset(o, 0xFF, (size_t)k * sizeof(int32_t));
                    continue;
                }
                if (decode_row(cd, entry, prev, &taken, o)) {
                    locate_error(cd, entry, prev != NULL, err);
                    return;
                }
                prev = o;
                entry += k;
            }
        }
    }
    check_new_count(cd, taken, err);
}

/* Where one layer's run of codes and ids continues, and its previous present row. */
typedef struct {
    Py_ssize_t entry, taken;
    const int32_t *prev;
} LayerCursor;

/* Points each layer's cursor at the start of its run: the codes of the present rows of the layers
 * before it, and as many ids as those codes hold markers. Returns the markers of all layers. */
static Py_ssize_t start_layers(const Coding *cd, const Grid *g, LayerCursor *cur)
{
    Py_ssize_t entry = 0, taken = 0;
    for (Py_ssize_t l = 0; l < g->L; l++) {
        Py_ssize_t end = entry + layer_present(g, l) * cd->k;
        cur[l] = (LayerCursor){entry, taken, NULL};
        taken += count_markers(&cd->codes, entry, end);
        entry = end;
    }
    return taken;
}

/* Rows decoded layer by layer at a time by the row-order decoders: the block's output stays in the
 * cache while each layer's codes and ids (or values) are read in order. */
#define BLOCK_ROWS 64

/* Decodes rows [r0, r1) of every layer into out ([R, L, k]), layer by layer, each (layer, row) with
 * ROW from its layer's cursor, -1 where missing; returns whether a code was invalid. */
#define DECODE_BLOCK(NAME, ATTR, ROW)                                                                    \
    ATTR static int NAME(const Coding *cd, const Grid *g, Py_ssize_t r0, Py_ssize_t r1, LayerCursor *cur,  \
                         int32_t *out)                                                                  \
    {                                                                                                   \
        const size_t stride = (size_t)g->L * cd->k;                                                     \
        int bad = 0;                                                                                    \
        for (Py_ssize_t l = 0; l < g->L; l++) {                                                         \
            LayerCursor *c = &cur[l];                                                                   \
            int32_t *o = out + (size_t)r0 * stride + (size_t)l * cd->k;                                 \
            for (Py_ssize_t r = r0; r < r1; r++, o += stride) {                                         \
                if (!is_present(g, l, r)) {                                                             \
                    memset(o, 0xFF, (size_t)cd->k * sizeof(int32_t));                                   \
                    continue;                                                                           \
                }                                                                                       \
                bad |= ROW(cd, c->entry, c->prev, &c->taken, o);                                        \
                c->prev = o;                                                                            \
                c->entry += cd->k;                                                                      \
            }                                                                                           \
        }                                                                                               \
        return bad;                                                                                     \
    }
DECODE_BLOCK(decode_block, , decode_row)
#ifdef HAVE_SSSE3_KERNEL
DECODE_BLOCK(decode_block_ssse3, __attribute__((target("ssse3"))), decode_row_simd)
#endif

typedef int (*DecodeBlock)(const Coding *, const Grid *, Py_ssize_t, Py_ssize_t, LayerCursor *, int32_t *);

/* Decodes in row order (each piece, each block of its rows, each layer), each layer from its own
 * cursor, so that out is written block by block; the caller set the cursors with start_layers.
 * Every read stays in bounds on any input; returns whether a code was invalid (the error is then
 * found in coding order by decode_chunk_in_order). */
static int decode_chunk_by_rows(const Coding *cd, const Grid *g, const int64_t *piece_rows, Py_ssize_t P,
                                LayerCursor *cur, int32_t *out)
{
    DecodeBlock block = decode_block;
    int bad = 0;
    Py_ssize_t r = 0;
#ifdef HAVE_SSSE3_KERNEL
    if (cd->simd)
        block = decode_block_ssse3;
#endif
    for (Py_ssize_t p = 0; p < P; p++) {
        Py_ssize_t end = r + (Py_ssize_t)piece_rows[p];
        for (Py_ssize_t l = 0; l < g->L; l++)
            cur[l].prev = NULL;
        for (; r < end; r += BLOCK_ROWS)
            bad |= block(cd, g, r, r + BLOCK_ROWS < end ? r + BLOCK_ROWS : end, cur, out);
        r = end;
    }
    return bad;
}

/* Decodes a chunk's ids into out, [R, L, k]: row by row, or in coding order when the codes are not
 * valid (to find the error reader.py reports). Runs without the GIL; sets *err. */
static void decode_chunk(const Coding *cd, const Grid *g, const int64_t *piece_rows, Py_ssize_t P,
                         LayerCursor *cur, int32_t *out, IdError *err)
{
    if (start_layers(cd, g, cur) == cd->fresh.count && !decode_chunk_by_rows(cd, g, piece_rows, P, cur, out))
        return;
    decode_chunk_in_order(cd, g, piece_rows, P, out, err);
}

/* ---------------------------------------------------------------------------------------------- */
/* Float columns (§5.5, §6.1)                                                                      */

#ifdef __SSE2__
#include <emmintrin.h>

/* Interleaves the bytes of 2 planes into 2-byte elements, 8 at a time; returns the elements done. */
static inline size_t interleave2(const uint8_t *p0, const uint8_t *p1, size_t n, uint8_t *dst)
{
    size_t j = 0;
    for (; j + 8 <= n; j += 8)
        _mm_storeu_si128((__m128i *)(dst + 2 * j), _mm_unpacklo_epi8(_mm_loadl_epi64((const __m128i *)(p0 + j)),
                                                                     _mm_loadl_epi64((const __m128i *)(p1 + j))));
    return j;
}

/* Interleaves the bytes of 4 planes into 4-byte elements, 8 at a time; returns the elements done. */
static inline size_t interleave4(const uint8_t *p0, const uint8_t *p1, const uint8_t *p2, const uint8_t *p3, size_t n,
                                 uint8_t *dst)
{
    size_t j = 0;
    for (; j + 8 <= n; j += 8) {
        __m128i b01 = _mm_unpacklo_epi8(_mm_loadl_epi64((const __m128i *)(p0 + j)),
                                        _mm_loadl_epi64((const __m128i *)(p1 + j)));
        __m128i b23 = _mm_unpacklo_epi8(_mm_loadl_epi64((const __m128i *)(p2 + j)),
                                        _mm_loadl_epi64((const __m128i *)(p3 + j)));
        _mm_storeu_si128((__m128i *)(dst + 4 * j), _mm_unpacklo_epi16(b01, b23));
        _mm_storeu_si128((__m128i *)(dst + 4 * j + 16), _mm_unpackhi_epi16(b01, b23));
    }
    return j;
}
#endif

/* Copies n elements of w bytes, from element t of a column of N elements, into dst: from the w byte
 * planes of N bytes each when shuffled (§6.1; 2- and 4-byte elements 8 at a time with SSE2, where
 * the compiler targets it), else from consecutive elements. */
static inline void gather(const uint8_t *src, size_t N, size_t t, size_t n, int w, int shuffled, uint8_t *dst)
{
    size_t j = 0;
    if (!shuffled) {
        memcpy(dst, src + t * w, n * w);
        return;
    }
#ifdef __SSE2__
    if (w == 2)
        j = interleave2(src + t, src + N + t, n, dst);
    else if (w == 4)
        j = interleave4(src + t, src + N + t, src + 2 * N + t, src + 3 * N + t, n, dst);
#endif
    for (; j < n; j++)
        for (int b = 0; b < w; b++)
            dst[j * w + b] = src[b * N + t + j];
}

/* gather() for a constant element width, so that the compiler unrolls the byte loop. */
#define GATHER_W(W)                                                                                      \
    static void gather_w##W(const uint8_t *src, size_t N, size_t t, size_t n, int shuffled, uint8_t *dst) \
    {                                                                                                   \
        gather(src, N, t, n, W, shuffled, dst);                                                         \
    }
GATHER_W(1)
GATHER_W(2)
GATHER_W(4)
GATHER_W(8)

typedef void (*GatherFn)(const uint8_t *, size_t, size_t, size_t, int, uint8_t *);

/* Scatters a layer-major column of n values of w bytes per present (layer, row) into out, [R, L, n]
 * row-major, zero bytes where missing: block by block of rows, layer by layer within a block, each
 * layer read from its own cursor. */
static void scatter_by_rows(const Grid *g, const uint8_t *src, size_t n, int w, int shuffled, size_t *cursor,
                            uint8_t *out)
{
    GatherFn fn = w == 1 ? gather_w1 : w == 2 ? gather_w2 : w == 4 ? gather_w4 : gather_w8;
    const size_t value_bytes = n * w, stride = (size_t)g->L * value_bytes;
    size_t N = 0;
    for (Py_ssize_t l = 0; l < g->L; l++) {
        cursor[l] = N;
        N += (size_t)layer_present(g, l) * n;
    }
    for (Py_ssize_t r0 = 0; r0 < g->R; r0 += BLOCK_ROWS) {
        Py_ssize_t r1 = r0 + BLOCK_ROWS < g->R ? r0 + BLOCK_ROWS : g->R;
        for (Py_ssize_t l = 0; l < g->L; l++) {
            uint8_t *o = out + (size_t)r0 * stride + (size_t)l * value_bytes;
            for (Py_ssize_t r = r0; r < r1; r++, o += stride) {
                if (!is_present(g, l, r)) {
                    memset(o, 0, value_bytes);
                    continue;
                }
                fn(src, N, cursor[l], n, shuffled, o);
                cursor[l] += n;
            }
        }
    }
}

/* ---------------------------------------------------------------------------------------------- */
/* Argument checks                                                                                 */

/* Fails with ValueError naming the argument unless buffer b holds exactly `want` bytes. */
static int expect_len(const Py_buffer *b, long long want, const char *what)
{
    if ((long long)b->len == want)
        return 0;
    PyErr_Format(PyExc_ValueError, "%s holds %zd bytes, expected %lld", what, b->len, want);
    return -1;
}

/* Fails with ValueError naming the argument unless lo <= v <= hi. */
static int expect_range(long long v, long long lo, long long hi, const char *what)
{
    if (v >= lo && v <= hi)
        return 0;
    PyErr_Format(PyExc_ValueError, "%s is %lld, expected %lld..%lld", what, v, lo, hi);
    return -1;
}

/* Fails with ValueError unless buffer b (an int32 array) starts on a 4-byte boundary. */
static int expect_int32_aligned(const Py_buffer *b, const char *what)
{
    if (((uintptr_t)b->buf & 3) == 0)
        return 0;
    PyErr_Format(PyExc_ValueError, "%s is not aligned for int32", what);
    return -1;
}

/* Fails with ValueError unless w is an element width gather_w* handles: 1, 2, 4 or 8. */
static int expect_width(int w)
{
    if (w == 1 || w == 2 || w == 4 || w == 8)
        return 0;
    PyErr_Format(PyExc_ValueError, "width is %d, expected 1, 2, 4 or 8", w);
    return -1;
}

/* Sets up cd over `n_codes` slot codes and the ID_NEW ids after checking k, width and lengths. */
static int init_coding(Coding *cd, const Py_buffer *slots, int packed, long long n_codes, const Py_buffer *fresh,
                       int width, int k)
{
    Py_ssize_t count;
    if (expect_range(k, 1, packed ? 15 : MAX_TOP_K, packed ? "k (nibble-packed slots)" : "k")
        || expect_range(width, 1, 2, "width") || expect_len(slots, packed ? (n_codes + 1) / 2 : n_codes, "slots"))
        return -1;
    if (fresh->len % width) {
        PyErr_Format(PyExc_ValueError, "new holds %zd bytes, not a multiple of width %d", fresh->len, width);
        return -1;
    }
    count = fresh->len / width;
    cd->codes = (Codes){(const uint8_t *)slots->buf, (Py_ssize_t)n_codes, packed};
    cd->fresh = (NewIds){count ? (const uint8_t *)fresh->buf : ZERO_ID, count, count ? count - 1 : 0, width};
    cd->k = k;
    for (cd->mask = 0; cd->mask < (unsigned)k - 1; cd->mask = cd->mask << 1 | 1)
        ;
    for (unsigned c = 0; c < 256; c++) {
        cd->invalid[0][c] = (uint8_t)code_invalid(c, k, 0);
        cd->invalid[1][c] = (uint8_t)code_invalid(c, k, 1);
    }
    cd->simd = simd_enabled && k <= 8;
    return 0;
}

/* Gets the optional `present` argument: a read-only buffer, or None (b->obj stays NULL). */
static int get_present(PyObject *obj, Py_buffer *b)
{
    memset(b, 0, sizeof *b);
    if (obj == Py_None)
        return 0;
    if (PyObject_GetBuffer(obj, b, PyBUF_SIMPLE) == 0)
        return 0;
    b->obj = NULL;
    return -1;
}

/* Sets up g after checking the dimensions against §8 and `present` against them. */
static int init_grid(Grid *g, Py_ssize_t L, Py_ssize_t R, const Py_buffer *present)
{
    if (expect_range(L, 1, MAX_LAYERS, "L") || expect_range(R, 0, MAX_ROWS, "R")
        || (present->obj != NULL && expect_len(present, (long long)L * R, "present")))
        return -1;
    *g = (Grid){L, R, present->obj != NULL ? (const uint8_t *)present->buf : NULL};
    return 0;
}

/* Checks that `pieces` holds int64 row counts, each within §8, summing to R. */
static int check_pieces(const Py_buffer *pieces, Py_ssize_t R)
{
    const int64_t *rows = (const int64_t *)pieces->buf;
    long long sum = 0;
    if (pieces->len % 8 || ((uintptr_t)pieces->buf & 7)) {
        PyErr_SetString(PyExc_ValueError, "piece_rows must be an aligned int64 array");
        return -1;
    }
    for (Py_ssize_t p = 0; p < pieces->len / 8; p++) {
        if (expect_range(rows[p], 0, MAX_ROWS, "piece_rows[p]"))
            return -1;
        sum += rows[p];
    }
    if (sum == R)
        return 0;
    PyErr_Format(PyExc_ValueError, "piece_rows sum to %lld, expected R=%zd", sum, R);
    return -1;
}

/* The result of an id decoder: None, or the error tuple (kind, entry, value). */
static PyObject *decode_result(const IdError *err)
{
    if (err->kind == ERR_NONE)
        Py_RETURN_NONE;
    return Py_BuildValue("(inI)", err->kind, err->entry, err->value);
}

/* ---------------------------------------------------------------------------------------------- */
/* The module's functions                                                                          */

PyDoc_STRVAR(count_new_doc,
"count_new(slots, packed, count) -> int\n\n"
"Number of new-id markers (0xFF, or 15 when packed) among the first `count` slot codes of ID_SLOTS\n"
"(one code per byte, or nibble-packed when `packed`).");

static PyObject *count_new(PyObject *self, PyObject *args)
{
    Py_buffer slots;
    int packed;
    Py_ssize_t count, n;
    Codes c;

    if (!PyArg_ParseTuple(args, "y*pn:count_new", &slots, &packed, &count))
        return NULL;
    if (expect_range(count, 0, packed ? 2 * (long long)slots.len : slots.len, "count")) {
        PyBuffer_Release(&slots);
        return NULL;
    }
    c = (Codes){(const uint8_t *)slots.buf, count, packed};
    Py_BEGIN_ALLOW_THREADS
    n = count_markers(&c, 0, count);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&slots);
    return PyLong_FromSsize_t(n);
}

PyDoc_STRVAR(decode_ids_doc,
"decode_ids(slots, packed, new, width, valid_prev, k, out) -> None or (kind, entry, value)\n\n"
"Decodes Q rows of k ordered-reuse codes (spec §6.2) into `out`, a writable buffer of Q*k int32\n"
"(native byte order, aligned). `slots`: Q*k code bytes, or ceil(Q*k/2) bytes nibble-packed when\n"
"`packed`; `new`: the ID_NEW ids, `width` (1 or 2) bytes each, little-endian; `valid_prev`: Q bytes,\n"
"non-zero where the previous row of row q > 0 is row q-1. Returns None, or the first error in the\n"
"order reader.py reports them: (ERR_BAD_CODE, entry, code) a code neither 0xFF nor < k, anywhere;\n"
"(ERR_NO_PREVIOUS, entry, code) a reuse code in a row without a previous row; (ERR_NEW_COUNT,\n"
"markers, 0) ID_NEW holding another number of ids than there are markers; first of all\n"
"(ERR_STRAY_NIBBLE, count, nibble) a packed column's non-zero unused high nibble (spec §6.3).");

static PyObject *decode_ids(PyObject *self, PyObject *args)
{
    Py_buffer slots, fresh, valid, out;
    int packed, width, k;
    Coding cd;
    IdError err = {ERR_NONE, 0, 0};
    PyObject *result = NULL;

    if (!PyArg_ParseTuple(args, "y*py*iy*iw*:decode_ids", &slots, &packed, &fresh, &width, &valid, &k, &out))
        return NULL;
    if (init_coding(&cd, &slots, packed, (long long)valid.len * k, &fresh, width, k)
        || expect_len(&out, (long long)valid.len * k * 4, "out") || expect_int32_aligned(&out, "out"))
        goto done;
    Py_BEGIN_ALLOW_THREADS
    if (!stray_nibble(&cd.codes, &err))
        decode_rows_in_order(&cd, (const uint8_t *)valid.buf, valid.len, (int32_t *)out.buf, &err);
    Py_END_ALLOW_THREADS
    result = decode_result(&err);
done:
    PyBuffer_Release(&slots);
    PyBuffer_Release(&fresh);
    PyBuffer_Release(&valid);
    PyBuffer_Release(&out);
    return result;
}

PyDoc_STRVAR(decode_chunk_ids_doc,
"decode_chunk_ids(slots, packed, new, width, k, L, R, piece_rows, present, out) -> None or (kind, entry, value)\n\n"
"Decodes a chunk's ordered-reuse ids (spec §6.2) straight into `out`, a writable aligned buffer of\n"
"R*L*k int32 in [row, layer, slot] order, -1 for a missing (layer, row). `piece_rows`: int64 rows per\n"
"piece (R in all); `present`: L*R bytes layer-major (non-zero = present) or None when all are; `slots`,\n"
"`new`, `width`, `packed` and the result as for decode_ids, over the present (layer, row)s in coding\n"
"order. A row's previous row is the previous present row of the same piece at the same layer.");

static PyObject *decode_chunk_ids(PyObject *self, PyObject *args)
{
    Py_buffer slots, fresh, pieces, out, present;
    PyObject *present_obj;
    int packed, width, k;
    Py_ssize_t L, R;
    Grid g;
    Coding cd;
    LayerCursor *cur = NULL;
    IdError err = {ERR_NONE, 0, 0};
    PyObject *result = NULL;

    if (!PyArg_ParseTuple(args, "y*py*iinny*Ow*:decode_chunk_ids", &slots, &packed, &fresh, &width, &k, &L, &R,
                          &pieces, &present_obj, &out))
        return NULL;
    if (get_present(present_obj, &present) || init_grid(&g, L, R, &present) || check_pieces(&pieces, R)
        || init_coding(&cd, &slots, packed, count_present(&g) * k, &fresh, width, k)
        || expect_len(&out, (long long)R * L * k * 4, "out") || expect_int32_aligned(&out, "out"))
        goto done;
    cur = PyMem_Malloc((size_t)L * sizeof *cur);
    if (cur == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    if (!stray_nibble(&cd.codes, &err))
        decode_chunk(&cd, &g, (const int64_t *)pieces.buf, pieces.len / 8, cur, (int32_t *)out.buf, &err);
    Py_END_ALLOW_THREADS
    result = decode_result(&err);
done:
    PyMem_Free(cur);
    PyBuffer_Release(&present);
    PyBuffer_Release(&slots);
    PyBuffer_Release(&fresh);
    PyBuffer_Release(&pieces);
    PyBuffer_Release(&out);
    return result;
}

PyDoc_STRVAR(scatter_floats_doc,
"scatter_floats(data, width, shuffled, n, L, R, present, out)\n\n"
"Turns a chunk's WEIGHTS or LOGITS column (spec §5.5: n values of `width` bytes per present\n"
"(layer, row), layer-major; byte-shuffled (§6.1) when `shuffled`) into `out`, a writable buffer of\n"
"R*L*n values in [row, layer, value] order, zero bytes for a missing (layer, row). `present`: L*R\n"
"bytes layer-major (non-zero = present) or None when all are. Values keep their byte order.");

static PyObject *scatter_floats(PyObject *self, PyObject *args)
{
    Py_buffer data, out, present;
    PyObject *present_obj;
    int width, shuffled;
    Py_ssize_t n, L, R;
    Grid g;
    size_t *cursor = NULL;
    PyObject *result = NULL;

    if (!PyArg_ParseTuple(args, "y*ipnnnOw*:scatter_floats", &data, &width, &shuffled, &n, &L, &R, &present_obj,
                          &out))
        return NULL;
    if (get_present(present_obj, &present) || expect_width(width) || expect_range(n, 1, MAX_VALUES, "n")
        || init_grid(&g, L, R, &present) || expect_len(&data, count_present(&g) * n * width, "data")
        || expect_len(&out, (long long)R * L * n * width, "out"))
        goto done;
    cursor = PyMem_Malloc((size_t)L * sizeof *cursor);
    if (cursor == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    scatter_by_rows(&g, (const uint8_t *)data.buf, (size_t)n, width, shuffled, cursor, (uint8_t *)out.buf);
    Py_END_ALLOW_THREADS
    Py_INCREF(Py_None);
    result = Py_None;
done:
    PyMem_Free(cursor);
    PyBuffer_Release(&present);
    PyBuffer_Release(&data);
    PyBuffer_Release(&out);
    return result;
}

PyDoc_STRVAR(use_simd_doc,
"use_simd([flag]) -> bool\n\n"
"Whether the id decoders use the SSSE3 kernel for top_k <= 8 (x86 CPUs with SSSE3; the scalar code\n"
"otherwise). With `flag`, turns it on (where available) or off first. Both give the same results; tests\n"
"compare them.");

static PyObject *use_simd(PyObject *self, PyObject *args)
{
    int flag = -1;
    if (!PyArg_ParseTuple(args, "|p:use_simd", &flag))
        return NULL;
    if (flag >= 0)
        simd_enabled = flag && simd_available;
    return PyBool_FromLong(simd_enabled);
}

/* ---------------------------------------------------------------------------------------------- */
/* The module                                                                                      */

static PyMethodDef methods[] = {
    {"count_new", count_new, METH_VARARGS, count_new_doc},
    {"decode_ids", decode_ids, METH_VARARGS, decode_ids_doc},
    {"decode_chunk_ids", decode_chunk_ids, METH_VARARGS, decode_chunk_ids_doc},
    {"scatter_floats", scatter_floats, METH_VARARGS, scatter_floats_doc},
    {"use_simd", use_simd, METH_VARARGS, use_simd_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "rtrace._native",
    .m_doc = "Optional compiled decoding for rtrace.reader: ids (spec §6.2, §6.3), float columns (§5.5, §6.1).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__native(void)
{
    PyObject *m;
    init_nibble_pairs();
    simd_enabled = simd_available = init_simd();
    m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddIntConstant(m, "ERR_BAD_CODE", ERR_BAD_CODE)
        || PyModule_AddIntConstant(m, "ERR_NO_PREVIOUS", ERR_NO_PREVIOUS)
        || PyModule_AddIntConstant(m, "ERR_NEW_COUNT", ERR_NEW_COUNT)
        || PyModule_AddIntConstant(m, "ERR_STRAY_NIBBLE", ERR_STRAY_NIBBLE)) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
