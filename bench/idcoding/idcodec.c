/* The id coding frontier (issue 16): bytes and single-thread decode time of candidate codings of the
 * id columns ID_SLOTS and ID_NEW (spec/format.md §6.2-§6.4), on the raw columns of real traces.
 *
 * Input: a dump written by bench/idcoding/idcoding.py (chunks' raw ID_SLOTS, nibble-packed when the file
 * used transform 2, raw ID_NEW, and the bytes the file stores today). For each candidate it encodes every
 * chunk's column (not timed), decodes all of them best of --repeat runs (one thread, hot caches as in a
 * reader that inflates a column it just read), checks the round trip, and prints one JSON line:
 * {"column", "coding", "bytes", "codes", "best_s", "ns_per_code"}.
 *
 * Candidates:
 *   ID_SLOTS (codes 0..k-1 and the new marker, nibble-packed two per byte when top_k <= 15):
 *     deflate-huffman   the file's stored bytes, inflated by libdeflate (today)
 *     deflate-fixed     deflate with its fixed (static) Huffman table, Huffman-only (zlib Z_FIXED), libdeflate
 *     raw               the nibble-packed bytes as they are (decode: none; the id kernel reads nibbles)
 *     bitpack           ceil(log2(k+1)) bits per code (k = 8: 4 bits, the same as raw), unpacked to nibbles
 *     rans-pairs        order-0 rANS over the packed bytes (256 symbols = code pairs), 32 interleaved states,
 *                       32-bit state, 16-bit renormalisation, 12-bit frequencies, a table per block;
 *                       decoded by branch-free scalar code, and (-avx2) 4 x 8 lanes with AVX2 gathers
 *     rans-nibbles      the same over single codes (16 symbols), the decoder packing two per byte
 *   ID_NEW (u8 ids):
 *     deflate-huffman   today
 *     deflate-fixed     as for ID_SLOTS
 *     raw               one byte per id
 *     bitpack           ceil(log2(num_experts)) bits per id (7 for 128 experts), unpacked to bytes
 *     rans, rans-avx2   order-0 rANS over the ids, as rans-pairs
 * A block is BLOCK symbols (--block, 65536 by default; deflate's Huffman-only blocks are 16,383 symbols);
 * each block stores its frequency table (a 32-byte presence bitmap + 2 bytes per present symbol), counted
 * in "bytes".
 *
 * Build: cc -O2 -march=native -o idcodec idcodec.c -ldeflate -lz      Run: ./idcodec DUMP [--repeat N] [--block B]
 */
#include <libdeflate.h>
#include <zlib.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define PAD 64  /* slack after every buffer, so that word loads at the end stay in bounds */

typedef struct {
    uint32_t k, width, experts, n_codes;
    uint8_t *slots;           /* raw ID_SLOTS: nibble-packed when packed */
    uint32_t slots_len, packed;
    uint8_t *slots_stored;    /* today's stored bytes */
    uint32_t slots_stored_len, slots_codec;
    uint8_t *fresh;           /* raw ID_NEW */
    uint32_t fresh_len;
    uint8_t *fresh_stored;
    uint32_t fresh_stored_len, fresh_codec;
} Chunk;

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);  /* CPU time: the machine is shared, so not wall time */
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static void *xmalloc(size_t n)
{
    void *p = calloc(n + PAD, 1);
    if (!p) {
        perror("calloc");
        exit(1);
    }
    return p;
}

static void report(const char *column, const char *coding, size_t bytes, size_t codes, double best);

/* Raw deflate of n bytes with zlib's fixed Huffman codes and no matches (Z_FIXED, level 1: LZ77 finds
 * nothing in ids; the point is the static table). Returns a malloc'd buffer, its length in *len. */
static uint8_t *deflate_fixed(const uint8_t *in, size_t n, size_t *len)
{
    z_stream z;
    memset(&z, 0, sizeof z);
    if (deflateInit2(&z, 1, Z_DEFLATED, -15, 8, Z_FIXED) != Z_OK)
        exit(1);
    size_t cap = deflateBound(&z, n) + 64;
    uint8_t *out = xmalloc(cap);
    z.next_in = (Bytef *)in;
    z.avail_in = (uInt)n;
    z.next_out = out;
    z.avail_out = (uInt)cap;
    if (deflate(&z, Z_FINISH) != Z_STREAM_END)
        exit(1);
    *len = cap - z.avail_out;
    deflateEnd(&z);
    return out;
}

/* ---------------------------------------------------------------------------------------------- */
/* Bit packing                                                                                     */

static uint32_t bits_for(uint32_t symbols)
{
    uint32_t b = 1;
    while ((1u << b) < symbols)
        b++;
    return b;
}

static size_t bitpack(const uint8_t *v, size_t n, uint32_t b, uint8_t *out)
{
    size_t bytes = (n * b + 7) / 8;
    memset(out, 0, bytes + 8);
    for (size_t i = 0; i < n; i++) {
        size_t bit = i * b;
        uint64_t w;
        memcpy(&w, out + bit / 8, 8);
        w |= (uint64_t)v[i] << (bit % 8);
        memcpy(out + bit / 8, &w, 8);
    }
    return bytes;
}

/* n values of b bits (b <= 8) into bytes: 8 values from b bytes per step (one 64-bit load). */
static void bitunpack(const uint8_t *in, size_t n, uint32_t b, uint8_t *out)
{
    const uint64_t mask = (1u << b) - 1;
    size_t i = 0;
    for (; i + 8 <= n; i += 8, in += b) {
        uint64_t w;
        memcpy(&w, in, 8);
        for (int j = 0; j < 8; j++)
            out[i + j] = (uint8_t)(w >> (j * b) & mask);
    }
    for (; i < n; i++) {
        size_t bit = (i % 8) * b;
        uint64_t w;
        memcpy(&w, in, 8);
        out[i] = (uint8_t)(w >> bit & mask);
    }
}

/* Codes (0..k-1, 0xFF) as symbols 0..k (the marker last), and back. */
static void codes_to_symbols(const Chunk *c, uint8_t *sym)
{
    for (uint32_t i = 0; i < c->n_codes; i++) {
        unsigned v = c->packed ? (c->slots[i / 2] >> (4 * (i & 1))) & 15 : c->slots[i];
        if (v == 15 || v == 0xFF)
            v = c->k;
        sym[i] = (uint8_t)v;
    }
}

/* Symbols 0..k back to nibble-packed codes (k -> 15), 2 per byte, with a table per pair. */
static void symbols_to_nibbles(const uint8_t *sym, size_t n, uint32_t k, uint8_t *out)
{
    uint8_t map[256];
    for (unsigned s = 0; s < 256; s++)
        map[s] = (uint8_t)(s == k ? 15 : s & 15);
    size_t i = 0;
    for (; i + 2 <= n; i += 2)
        out[i / 2] = (uint8_t)(map[sym[i]] | map[sym[i + 1]] << 4);
    if (i < n)
        out[i / 2] = map[sym[i]];
}

/* ---------------------------------------------------------------------------------------------- */
/* rANS: 32-bit states, 16-bit renormalisation, 12-bit frequencies, NW interleaved states           */

#define PROB_BITS 12
#define PROB_SCALE (1u << PROB_BITS)
#define RANS_L (1u << 16)
#define NW 32  /* interleaved states: 4 AVX2 vectors of 8, independent chains */

typedef struct {
    uint16_t freq[256], cum[256];
} Model;

/* Frequencies of n symbols quantised to PROB_SCALE, every present symbol at least 1. */
static void build_model(const uint8_t *s, size_t n, Model *m, size_t *table_bytes)
{
    uint32_t cnt[256] = {0};
    uint32_t sum = 0, present = 0, best = 0;
    for (size_t i = 0; i < n; i++)
        cnt[s[i]]++;
    for (int i = 0; i < 256; i++) {
        m->freq[i] = 0;
        if (!cnt[i])
            continue;
        present++;
        uint32_t f = (uint32_t)((uint64_t)cnt[i] * PROB_SCALE / n);
        m->freq[i] = (uint16_t)(f ? f : 1);
        sum += m->freq[i];
        if (cnt[i] > cnt[best] || !cnt[best])
            best = (uint32_t)i;
    }
    /* fix the total on the most frequent symbol (or, when it would go below 1, spread it) */
    while (sum != PROB_SCALE) {
        if (sum < PROB_SCALE) {
            m->freq[best] += (uint16_t)(PROB_SCALE - sum);
            sum = PROB_SCALE;
        } else {
            for (int i = 0; i < 256 && sum > PROB_SCALE; i++)
                if (m->freq[i] > 1 && (i == (int)best || m->freq[i] > 8)) {
                    m->freq[i]--;
                    sum--;
                }
        }
    }
    if (m->freq[best] == PROB_SCALE) {  /* one symbol only: the decoder's table holds frequencies < 4096 */
        m->freq[best]--;
        m->freq[(best + 1) & 255] = 1;
        present++;
    }
    uint32_t c = 0;
    for (int i = 0; i < 256; i++) {
        m->cum[i] = (uint16_t)c;
        c += m->freq[i];
    }
    *table_bytes += 32 + 2 * present;
}

/* Encodes n symbols with model m into out (written forwards; the decoder reads forwards). Returns bytes. */
static size_t rans_encode(const uint8_t *s, size_t n, const Model *m, uint8_t *out, uint8_t *scratch)
{
    uint32_t x[NW];
    uint16_t *end = (uint16_t *)(scratch + 2 * n + 64 + 4 * NW), *p = end;
    for (int j = 0; j < NW; j++)
        x[j] = RANS_L;
    for (size_t i = n; i-- > 0;) {
        int j = (int)(i % NW);
        uint32_t f = m->freq[s[i]], xmax = ((RANS_L >> PROB_BITS) << 16) * f;
        if (x[j] >= xmax) {
            *--p = (uint16_t)(x[j] & 0xFFFF);
            x[j] >>= 16;
        }
        x[j] = ((x[j] / f) << PROB_BITS) + (x[j] % f) + m->cum[s[i]];
    }
    /* the states first (so the decoder starts with them), then the words */
    size_t words = (size_t)(end - p);
    memcpy(out, x, sizeof x);
    memcpy(out + sizeof x, p, words * 2);
    return sizeof x + words * 2;
}

/* The decoder's table: per 12-bit slot, the symbol, its frequency and slot - cum (bias). */
typedef struct {
    uint32_t e[PROB_SCALE];  /* sym | freq << 8 | (slot - cum) << 20 */
} DTable;

static void build_dtable(const Model *m, DTable *t)
{
    for (int s = 0; s < 256; s++)
        for (uint32_t k = 0; k < m->freq[s]; k++)
            t->e[m->cum[s] + k] = (uint32_t)s | (uint32_t)m->freq[s] << 8 | k << 20;
}

/* One rANS decoding step of state *x: its symbol to *out, renormalised from *p without a branch. */
static inline void rans_step(uint32_t *x, const DTable *t, const uint16_t **p, uint8_t *out)
{
    uint32_t e = t->e[*x & (PROB_SCALE - 1)], y = (e >> 8 & 0xFFF) * (*x >> PROB_BITS) + (e >> 20);
    uint32_t need = y < RANS_L;
    *out = (uint8_t)e;
    *x = need ? y << 16 | **p : y;
    *p += need;
}

/* Decodes n symbols (scalar, NW states); returns the bytes read. */
static size_t rans_decode(const uint8_t *in, size_t n, const DTable *t, uint8_t *out)
{
    uint32_t x[NW];
    const uint16_t *p;
    memcpy(x, in, sizeof x);
    p = (const uint16_t *)(in + sizeof x);
    size_t i = 0;
    for (; i + NW <= n; i += NW)
        for (int j = 0; j < NW; j++)
            rans_step(&x[j], t, &p, out + i + j);
    for (int j = 0; i < n; i++, j++)
        rans_step(&x[j], t, &p, out + i);
    return (size_t)((const uint8_t *)p - in);
}

#if defined(__AVX2__)
#include <immintrin.h>
/* PERM[m]: for the lanes of renormalisation mask m, the index of the word each lane takes (its rank). */
static uint32_t PERM[256][8];

static void init_perm(void)
{
    for (unsigned m = 0; m < 256; m++)
        for (unsigned j = 0, r = 0; j < 8; j++) {
            PERM[m][j] = r;
            r += m >> j & 1;
        }
}

/* The same decoding with AVX2: 4 vectors of 8 states, each step a gather of the table entries, a
 * multiply-add and a renormalisation that takes the next words to the lanes that need one (a
 * permutation by the lanes' ranks). */
static inline __m256i rans_step8(__m256i x, const DTable *t, const uint16_t **p, uint8_t *out)
{
    const __m256i slot = _mm256_set1_epi32(PROB_SCALE - 1), f12 = _mm256_set1_epi32(0xFFF);
    const __m256i pick = _mm256_setr_epi8(0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, 0, 4, 8, 12,
                                          -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1);
    __m256i e = _mm256_i32gather_epi32((const int *)t->e, _mm256_and_si256(x, slot), 4);
    __m256i y = _mm256_add_epi32(_mm256_mullo_epi32(_mm256_and_si256(_mm256_srli_epi32(e, 8), f12),
                                                    _mm256_srli_epi32(x, PROB_BITS)),
                                 _mm256_srli_epi32(e, 20));
    __m256i need = _mm256_cmpeq_epi32(_mm256_srli_epi32(y, 16), _mm256_setzero_si256());
    unsigned m = (unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(need));
    __m256i words = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)*p));
    __m256i w = _mm256_permutevar8x32_epi32(words, _mm256_loadu_si256((const __m256i *)PERM[m]));
    __m256i s = _mm256_shuffle_epi8(e, pick);
    _mm_storel_epi64((__m128i *)out, _mm_unpacklo_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1)));
    *p += __builtin_popcount(m);
    return _mm256_blendv_epi8(y, _mm256_or_si256(_mm256_slli_epi32(y, 16), w), need);
}

static size_t rans_decode_avx2(const uint8_t *in, size_t n, const DTable *t, uint8_t *out)
{
    uint32_t x[NW];
    const uint16_t *p;
    __m256i v0, v1, v2, v3;
    size_t i = 0;
    memcpy(x, in, sizeof x);
    p = (const uint16_t *)(in + sizeof x);
    v0 = _mm256_loadu_si256((const __m256i *)x);
    v1 = _mm256_loadu_si256((const __m256i *)x + 1);
    v2 = _mm256_loadu_si256((const __m256i *)x + 2);
    v3 = _mm256_loadu_si256((const __m256i *)x + 3);
    for (; i + NW <= n; i += NW) {
        v0 = rans_step8(v0, t, &p, out + i);
        v1 = rans_step8(v1, t, &p, out + i + 8);
        v2 = rans_step8(v2, t, &p, out + i + 16);
        v3 = rans_step8(v3, t, &p, out + i + 24);
    }
    _mm256_storeu_si256((__m256i *)x, v0);
    _mm256_storeu_si256((__m256i *)x + 1, v1);
    _mm256_storeu_si256((__m256i *)x + 2, v2);
    _mm256_storeu_si256((__m256i *)x + 3, v3);
    for (int j = 0; i < n; i++, j++)
        rans_step(&x[j], t, &p, out + i);
    return (size_t)((const uint8_t *)p - in);
}
#define RANS_DECODE(in, n, t, out) (use_avx2 ? rans_decode_avx2(in, n, t, out) : rans_decode(in, n, t, out))
#define HAVE_AVX2 1
#else
#define HAVE_AVX2 0
#define RANS_DECODE(in, n, t, out) rans_decode(in, n, t, out)
static void init_perm(void) {}
#endif
static int use_avx2;

/* A column coded with rANS in blocks: per block, its decode table (built at decode time from the
 * stored frequencies, so timed) and its stream. */
typedef struct {
    size_t n_blocks;
    Model *models;
    uint8_t **streams;
    size_t *lens, *counts;
} RansColumn;

static size_t rans_column_encode(const uint8_t *s, size_t n, size_t block, RansColumn *rc)
{
    size_t bytes = 0;
    rc->n_blocks = n ? (n + block - 1) / block : 0;
    rc->models = xmalloc(rc->n_blocks * sizeof(Model));
    rc->streams = xmalloc(rc->n_blocks * sizeof(uint8_t *));
    rc->lens = xmalloc(rc->n_blocks * sizeof(size_t));
    rc->counts = xmalloc(rc->n_blocks * sizeof(size_t));
    uint8_t *scratch = xmalloc(2 * block + 4096);
    for (size_t b = 0; b < rc->n_blocks; b++) {
        size_t from = b * block, cnt = n - from < block ? n - from : block;
        build_model(s + from, cnt, &rc->models[b], &bytes);
        rc->streams[b] = xmalloc(2 * cnt + 4 * NW + 64);
        rc->lens[b] = rans_encode(s + from, cnt, &rc->models[b], rc->streams[b], scratch);
        rc->counts[b] = cnt;
        bytes += rc->lens[b];
    }
    free(scratch);
    return bytes;
}

static void rans_column_decode(const RansColumn *rc, uint8_t *out, DTable *t)
{
    size_t at = 0;
    for (size_t b = 0; b < rc->n_blocks; b++) {
        build_dtable(&rc->models[b], t);
        RANS_DECODE(rc->streams[b], rc->counts[b], t, out + at);
        at += rc->counts[b];
    }
}

/* ---------------------------------------------------------------------------------------------- */
/* The dump                                                                                        */

static uint32_t rd32(FILE *f)
{
    uint32_t v;
    if (fread(&v, 4, 1, f) != 1) {
        fprintf(stderr, "idcodec: dump ends early\n");
        exit(1);
    }
    return v;
}

static uint8_t *rdbytes(FILE *f, uint32_t n)
{
    uint8_t *p = xmalloc(n);
    if (n && fread(p, 1, n, f) != n) {
        fprintf(stderr, "idcodec: dump ends early\n");
        exit(1);
    }
    return p;
}

static Chunk *load(const char *path, size_t *count)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        perror(path);
        exit(1);
    }
    uint32_t n = rd32(f);
    Chunk *c = xmalloc(n * sizeof *c);
    for (uint32_t i = 0; i < n; i++) {
        c[i].k = rd32(f);
        c[i].width = rd32(f);
        c[i].experts = rd32(f);
        c[i].n_codes = rd32(f);
        c[i].packed = rd32(f);
        c[i].slots_len = rd32(f);
        c[i].slots = rdbytes(f, c[i].slots_len);
        c[i].slots_codec = rd32(f);
        c[i].slots_stored_len = rd32(f);
        c[i].slots_stored = rdbytes(f, c[i].slots_stored_len);
        c[i].fresh_len = rd32(f);
        c[i].fresh = rdbytes(f, c[i].fresh_len);
        c[i].fresh_codec = rd32(f);
        c[i].fresh_stored_len = rd32(f);
        c[i].fresh_stored = rdbytes(f, c[i].fresh_stored_len);
        if (c[i].width != 1) {
            fprintf(stderr, "idcodec: u16 ids are not measured here\n");
            exit(1);
        }
    }
    fclose(f);
    *count = n;
    return c;
}

/* ---------------------------------------------------------------------------------------------- */

/* One column of every chunk as deflate streams (codec 1) or raw bytes (codec 0), and what each gives. */
typedef struct {
    const uint8_t **in, **want;
    size_t *in_len, bytes;
    uint32_t *want_len, *codec;
} Streams;

static Streams streams_new(size_t n)
{
    Streams s = {xmalloc(n * sizeof(uint8_t *)), xmalloc(n * sizeof(uint8_t *)), xmalloc(n * sizeof(size_t)), 0,
                 xmalloc(n * sizeof(uint32_t)), xmalloc(n * sizeof(uint32_t))};
    return s;
}

/* Today's stored ID_SLOTS (slots) or ID_NEW of every chunk. */
static Streams stored_streams(const Chunk *c, size_t n, int slots)
{
    Streams s = streams_new(n);
    for (size_t i = 0; i < n; i++) {
        s.in[i] = slots ? c[i].slots_stored : c[i].fresh_stored;
        s.in_len[i] = slots ? c[i].slots_stored_len : c[i].fresh_stored_len;
        s.want[i] = slots ? c[i].slots : c[i].fresh;
        s.want_len[i] = slots ? c[i].slots_len : c[i].fresh_len;
        s.codec[i] = slots ? c[i].slots_codec : c[i].fresh_codec;
        s.bytes += s.in_len[i];
    }
    return s;
}

/* The same columns deflated with the fixed Huffman table. */
static Streams fixed_streams(const Chunk *c, size_t n, int slots)
{
    Streams s = stored_streams(c, n, slots);
    s.bytes = 0;
    for (size_t i = 0; i < n; i++) {
        s.in[i] = deflate_fixed(s.want[i], s.want_len[i], &s.in_len[i]);
        s.codec[i] = 1;
        s.bytes += s.in_len[i];
    }
    return s;
}

/* The best time (of repeat) to decode every stream with libdeflate (a copy for codec 0); checks each. */
static double time_streams(struct libdeflate_decompressor *d, const Streams *s, size_t n, uint8_t *out, int repeat)
{
    double best = 1e30;
    for (int r = 0; r <= repeat; r++) {
        double t = now();
        for (size_t i = 0; i < n; i++) {
            size_t got = s->want_len[i];
            if (s->codec[i] == 0)
                memcpy(out, s->in[i], s->want_len[i]);
            else if (libdeflate_deflate_decompress(d, s->in[i], s->in_len[i], out, s->want_len[i], &got)
                         != LIBDEFLATE_SUCCESS
                     || got != s->want_len[i]) {
                fprintf(stderr, "idcodec: inflate failed\n");
                exit(1);
            }
            if (r == repeat && memcmp(out, s->want[i], s->want_len[i]) != 0) {
                fprintf(stderr, "idcodec: a deflate stream does not round-trip\n");
                exit(1);
            }
        }
        t = now() - t;
        if (r < repeat && t < best)   /* the last pass checks, untimed */
            best = t;
    }
    return best;
}

static void deflate_columns(const Chunk *c, size_t n, int slots, struct libdeflate_decompressor *d, uint8_t *out,
                            int repeat, size_t codes)
{
    const char *column = slots ? "ID_SLOTS" : "ID_NEW";
    Streams today = stored_streams(c, n, slots), fixed = fixed_streams(c, n, slots);
    report(column, "deflate-huffman", today.bytes, codes, time_streams(d, &today, n, out, repeat));
    report(column, "deflate-fixed", fixed.bytes, codes, time_streams(d, &fixed, n, out, repeat));
    size_t raw = 0;
    for (size_t i = 0; i < n; i++)
        raw += today.want_len[i];
    report(column, "raw", raw, codes, 0.0);   /* no decoding: a reader uses the bytes as they are */
}

static void report(const char *column, const char *coding, size_t bytes, size_t codes, double best)
{
    printf("{\"column\": \"%s\", \"coding\": \"%s\", \"bytes\": %zu, \"codes\": %zu, \"best_s\": %.6f, "
           "\"ns_per_code\": %.3f}\n",
           column, coding, bytes, codes, best, codes ? best * 1e9 / codes : 0.0);
    fflush(stdout);
}

static void check(const uint8_t *a, const uint8_t *b, size_t n, const char *what)
{
    if (memcmp(a, b, n) != 0) {
        fprintf(stderr, "idcodec: %s does not round-trip\n", what);
        exit(1);
    }
}

/* Times BODY: the best of `repeat` runs into `best` (needs double best, t and int repeat in scope). */
#define TIME(BODY)                                                                                      \
    best = 1e30;                                                                                        \
    for (int r = 0; r < repeat; r++) {                                                                  \
        t = now();                                                                                      \
        BODY;                                                                                           \
        t = now() - t;                                                                                  \
        if (t < best)                                                                                   \
            best = t;                                                                                   \
    }

/* rANS over the bytes of one column of every chunk (ID_SLOTS' packed code pairs, or ID_NEW's ids), decoded
 * by the scalar and (where built) the AVX2 decoder; reports both. */
static void rans_bytes(const Chunk *c, size_t n, int slots, size_t block, int repeat, size_t codes, uint8_t *out,
                       DTable *dt)
{
    RansColumn *rc = xmalloc(n * sizeof *rc);
    size_t bytes = 0;
    double best, t;
    for (size_t i = 0; i < n; i++)
        bytes += rans_column_encode(slots ? c[i].slots : c[i].fresh, slots ? c[i].slots_len : c[i].fresh_len, block,
                                    &rc[i]);
    for (use_avx2 = 0; use_avx2 <= HAVE_AVX2; use_avx2++) {
        TIME(for (size_t i = 0; i < n; i++) rans_column_decode(&rc[i], out, dt));
        for (size_t i = 0; i < n; i++) {
            rans_column_decode(&rc[i], out, dt);
            check(out, slots ? c[i].slots : c[i].fresh, slots ? c[i].slots_len : c[i].fresh_len, "rans");
        }
        report(slots ? "ID_SLOTS" : "ID_NEW",
               slots ? (use_avx2 ? "rans-pairs-avx2" : "rans-pairs") : (use_avx2 ? "rans-avx2" : "rans"), bytes,
               codes, best);
    }
    use_avx2 = HAVE_AVX2;
}

int main(int argc, char **argv)
{
    int repeat = 7;
    size_t block = 65536, n;
    if (argc < 2) {
        fprintf(stderr, "usage: idcodec DUMP [--repeat N] [--block B]\n");
        return 2;
    }
    for (int i = 2; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--repeat"))
            repeat = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--block"))
            block = (size_t)atol(argv[i + 1]);
    }
    Chunk *c = load(argv[1], &n);
    init_perm();
    size_t codes = 0, ids = 0, max_slots = 0, max_codes = 0, max_fresh = 0;
    for (size_t i = 0; i < n; i++) {
        codes += c[i].n_codes;
        ids += c[i].fresh_len;
        if (c[i].slots_len > max_slots)
            max_slots = c[i].slots_len;
        if (c[i].n_codes > max_codes)
            max_codes = c[i].n_codes;
        if (c[i].fresh_len > max_fresh)
            max_fresh = c[i].fresh_len;
    }
    size_t max_any = max_codes > max_fresh ? max_codes : max_fresh;
    uint8_t *out = xmalloc(max_any + 16), *tmp = xmalloc(max_any + 16);
    struct libdeflate_decompressor *d = libdeflate_alloc_decompressor();
    DTable *dt = xmalloc(sizeof *dt);
    double best, t;

    /* ---- ID_SLOTS ---- */
    {
        size_t bytes;
        deflate_columns(c, n, 1, d, out, repeat, codes);

        /* bitpack: symbols 0..k in ceil(log2(k+1)) bits, decoded to nibble-packed codes */
        uint8_t **packed = xmalloc(n * sizeof *packed);
        bytes = 0;
        for (size_t i = 0; i < n; i++) {
            uint32_t b = bits_for(c[i].k + 1);
            codes_to_symbols(&c[i], tmp);
            packed[i] = xmalloc((c[i].n_codes * b + 7) / 8 + 16);
            bytes += bitpack(tmp, c[i].n_codes, b, packed[i]);
        }
        TIME(for (size_t i = 0; i < n; i++) {
            bitunpack(packed[i], c[i].n_codes, bits_for(c[i].k + 1), tmp);
            symbols_to_nibbles(tmp, c[i].n_codes, c[i].k, out);
        });
        for (size_t i = 0; i < n; i++) {
            bitunpack(packed[i], c[i].n_codes, bits_for(c[i].k + 1), tmp);
            symbols_to_nibbles(tmp, c[i].n_codes, c[i].k, out);
            if (c[i].packed)
                check(out, c[i].slots, c[i].slots_len, "bitpack slots");
            free(packed[i]);
        }
        report("ID_SLOTS", "bitpack", bytes, codes, best);

        /* rANS over the packed bytes (code pairs) */
        rans_bytes(c, n, 1, block, repeat, codes, out, dt);
        RansColumn *rc = xmalloc(n * sizeof *rc);
        use_avx2 = HAVE_AVX2;

        /* rANS over single codes (symbols 0..k), packed into nibbles after decoding */
        bytes = 0;
        for (size_t i = 0; i < n; i++) {
            codes_to_symbols(&c[i], tmp);
            bytes += rans_column_encode(tmp, c[i].n_codes, block, &rc[i]);
        }
        TIME(for (size_t i = 0; i < n; i++) {
            rans_column_decode(&rc[i], tmp, dt);
            symbols_to_nibbles(tmp, c[i].n_codes, c[i].k, out);
        });
        for (size_t i = 0; i < n; i++) {
            rans_column_decode(&rc[i], tmp, dt);
            symbols_to_nibbles(tmp, c[i].n_codes, c[i].k, out);
            if (c[i].packed)
                check(out, c[i].slots, c[i].slots_len, "rans-nibbles");
        }
        report("ID_SLOTS", use_avx2 ? "rans-nibbles-avx2" : "rans-nibbles", bytes, codes, best);
    }

    /* ---- ID_NEW ---- */
    {
        size_t bytes;
        deflate_columns(c, n, 0, d, out, repeat, ids);

        uint8_t **packed = xmalloc(n * sizeof *packed);
        bytes = 0;
        for (size_t i = 0; i < n; i++) {
            uint32_t b = bits_for(c[i].experts);
            packed[i] = xmalloc((c[i].fresh_len * b + 7) / 8 + 16);
            bytes += bitpack(c[i].fresh, c[i].fresh_len, b, packed[i]);
        }
        TIME(for (size_t i = 0; i < n; i++) bitunpack(packed[i], c[i].fresh_len, bits_for(c[i].experts), out));
        for (size_t i = 0; i < n; i++) {
            bitunpack(packed[i], c[i].fresh_len, bits_for(c[i].experts), out);
            check(out, c[i].fresh, c[i].fresh_len, "bitpack new");
        }
        report("ID_NEW", "bitpack", bytes, ids, best);

        rans_bytes(c, n, 0, block, repeat, ids, out, dt);
    }
    libdeflate_free_decompressor(d);
    return 0;
}
