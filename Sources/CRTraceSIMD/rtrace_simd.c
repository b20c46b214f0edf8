// The ordered-reuse id decoder (spec/format.md §6.2) in 16-byte registers; see rtrace_simd.h.
//
// One (row, layer) of top_k <= 8 slot codes becomes one register of eight u16 ids:
//   reused = shuffle(prev, 2m, 2m+1 per slot)          the previous row's ids, by the reuse codes m < k
//   new    = shuffle(ID_NEW at the cursor, T[mask])     the next new ids, spread into the 0xFF slots
//   row    = reused | new,   cursor += popcount(mask) * width
// where bit j of mask is set when code j is 0xFF, and T is a table of 256 shuffle controls (one for
// u8 and one for u16 ID_NEW). A 0xFF code makes the reuse control bytes 0xFE, 0xFF, and T puts 0x80
// outside the mask: both shuffles give zero there. Lanes >= top_k stay zero. The checks of
// `rtrace check` run on each row while it is in a register. SSSE3/SSE4.1 on x86_64 (chosen at run time:
// the Swift code builds for baseline x86-64), NEON on aarch64.

#include "rtrace_simd.h"

#if defined(__x86_64__)
#define RT_X86 1
#include <immintrin.h>
#elif defined(__aarch64__) && defined(__ARM_NEON)
#define RT_NEON 1
#include <arm_neon.h>
#endif

#if defined(RT_X86) || defined(RT_NEON)

// ---- Shuffle controls that spread new ids into the slots of a mask of new codes ---------------------

#define RT_B(m, j) (((m) >> (j)) & 1)
// The number of set bits of m below bit j.
#define RT_PC(m, j)                                                                                     \
    ((j > 0 ? RT_B(m, 0) : 0) + (j > 1 ? RT_B(m, 1) : 0) + (j > 2 ? RT_B(m, 2) : 0) +                  \
     (j > 3 ? RT_B(m, 3) : 0) + (j > 4 ? RT_B(m, 4) : 0) + (j > 5 ? RT_B(m, 5) : 0) +                  \
     (j > 6 ? RT_B(m, 6) : 0))
// u8 ID_NEW: slot j takes new byte PC, and a zero high byte.
#define RT_W8(m, j) (uint8_t)(RT_B(m, j) ? RT_PC(m, j) : 0x80), 0x80
// u16 ID_NEW: slot j takes new bytes 2 PC and 2 PC + 1.
#define RT_W16(m, j) (uint8_t)(RT_B(m, j) ? 2 * RT_PC(m, j) : 0x80), (uint8_t)(RT_B(m, j) ? 2 * RT_PC(m, j) + 1 : 0x80)
#define RT_ROW8(m) {RT_W8(m, 0), RT_W8(m, 1), RT_W8(m, 2), RT_W8(m, 3), RT_W8(m, 4), RT_W8(m, 5), RT_W8(m, 6), RT_W8(m, 7)}
#define RT_ROW16(m)                                                                                     \
    {RT_W16(m, 0), RT_W16(m, 1), RT_W16(m, 2), RT_W16(m, 3), RT_W16(m, 4), RT_W16(m, 5), RT_W16(m, 6), RT_W16(m, 7)}
#define RT_R4(f, m) f(m), f(m + 1), f(m + 2), f(m + 3)
#define RT_R16(f, m) RT_R4(f, m), RT_R4(f, m + 4), RT_R4(f, m + 8), RT_R4(f, m + 12)
#define RT_R64(f, m) RT_R16(f, m), RT_R16(f, m + 16), RT_R16(f, m + 32), RT_R16(f, m + 48)
#define RT_R256(f) RT_R64(f, 0), RT_R64(f, 64), RT_R64(f, 128), RT_R64(f, 192)

static const uint8_t new_u8[256][16] __attribute__((aligned(16))) = {RT_R256(RT_ROW8)};
static const uint8_t new_u16[256][16] __attribute__((aligned(16))) = {RT_R256(RT_ROW16)};

#define RT_INLINE static inline __attribute__((always_inline))

// ---- The vector operations the kernel uses ---------------------------------------------------------

#if defined(RT_X86)
typedef __m128i v128;
#define v_zero() _mm_setzero_si128()
#define v_ones() _mm_set1_epi8(1)
#define v_load(p) _mm_loadu_si128((const __m128i *)(const void *)(p))
#define v_load8(p) _mm_loadl_epi64((const __m128i *)(const void *)(p))  // 8 bytes, zero-extended
#define v_or(a, b) _mm_or_si128(a, b)
#define v_and(a, b) _mm_and_si128(a, b)
#define v_xor(a, b) _mm_xor_si128(a, b)
#define v_add8(a, b) _mm_add_epi8(a, b)
#define v_eq8(a, b) _mm_cmpeq_epi8(a, b)
#define v_max8(a, b) _mm_max_epu8(a, b)
#define v_dup8(a) _mm_unpacklo_epi8(a, a)                              // a0 a0 a1 a1 ... a7 a7
#define v_shuffle(t, c) _mm_shuffle_epi8(t, c)                         // control bytes >= 0x80 give zero
#define v_mask8(a) ((unsigned)_mm_movemask_epi8(a) & 0xFF)             // one bit per low byte
#define v_eq16(a, b) _mm_cmpeq_epi16(a, b)
#define v_max16(a, b) _mm_max_epu16(a, b)
#define v_narrow16(a) _mm_packus_epi16(a, a)                           // lanes as bytes (saturated), twice
#define v_any(a) (!_mm_testz_si128(a, a))
#define v_rot16(a, r) _mm_alignr_epi8(a, a, 2 * (r))                   // lane i takes lane (i + r) % 8

#else
typedef uint8x16_t v128;
#define v_zero() vdupq_n_u8(0)
#define v_ones() vdupq_n_u8(1)
#define v_load(p) vld1q_u8(p)
#define v_load8(p) vcombine_u8(vld1_u8(p), vdup_n_u8(0))
#define v_or(a, b) vorrq_u8(a, b)
#define v_and(a, b) vandq_u8(a, b)
#define v_xor(a, b) veorq_u8(a, b)
#define v_add8(a, b) vaddq_u8(a, b)
#define v_eq8(a, b) vceqq_u8(a, b)
#define v_max8(a, b) vmaxq_u8(a, b)
#define v_dup8(a) vzip1q_u8(a, a)
#define v_shuffle(t, c) vqtbl1q_u8(t, c)  // control bytes >= 16 give zero (the kernel's are >= 0x80)
#define v_mask8(a) ((unsigned)vaddv_u8(vand_u8(vget_low_u8(a), vcreate_u8(0x8040201008040201ull))))
#define v_eq16(a, b) vreinterpretq_u8_u16(vceqq_u16(vreinterpretq_u16_u8(a), vreinterpretq_u16_u8(b)))
#define v_max16(a, b) vreinterpretq_u8_u16(vmaxq_u16(vreinterpretq_u16_u8(a), vreinterpretq_u16_u8(b)))
#define v_narrow16(a) vcombine_u8(vqmovn_u16(vreinterpretq_u16_u8(a)), vqmovn_u16(vreinterpretq_u16_u8(a)))
#define v_any(a) (vmaxvq_u8(a) != 0)
#define v_rot16(a, r) vextq_u8(a, a, 2 * (r))
#endif

// ---- The kernel -------------------------------------------------------------------------------------

#if defined(RT_X86)
#pragma clang attribute push(__attribute__((target("ssse3,sse4.1,popcnt"))), apply_to = function)
#endif

// min(n, cap) bytes of p (cap <= 16), zero-extended: for loads near the end of a column.
RT_INLINE v128 load_partial(const uint8_t *p, ptrdiff_t n, ptrdiff_t cap) {
    uint8_t b[16] = {0};
    if (n > 0) __builtin_memcpy(b, p, (size_t)(n < cap ? n : cap));
    return v_load(b);
}

// Stores the first k u16 lanes of v.
RT_INLINE void store_lanes(uint16_t *d, v128 v, const int k) {
#if defined(RT_X86)
    uint32_t u32;
    uint16_t u16;
    switch (k) {
    case 1: u16 = (uint16_t)_mm_cvtsi128_si32(v); __builtin_memcpy(d, &u16, 2); break;
    case 2: u32 = (uint32_t)_mm_cvtsi128_si32(v); __builtin_memcpy(d, &u32, 4); break;
    case 3:
        u32 = (uint32_t)_mm_cvtsi128_si32(v); __builtin_memcpy(d, &u32, 4);
        u16 = (uint16_t)_mm_extract_epi16(v, 2); __builtin_memcpy(d + 2, &u16, 2);
        break;
    case 4: _mm_storel_epi64((__m128i *)(void *)d, v); break;
    case 5:
        _mm_storel_epi64((__m128i *)(void *)d, v);
        u16 = (uint16_t)_mm_extract_epi16(v, 4); __builtin_memcpy(d + 4, &u16, 2);
        break;
    case 6:
        _mm_storel_epi64((__m128i *)(void *)d, v);
        u32 = (uint32_t)_mm_extract_epi32(v, 2); __builtin_memcpy(d + 4, &u32, 4);
        break;
    case 7:
        _mm_storel_epi64((__m128i *)(void *)d, v);
        u32 = (uint32_t)_mm_extract_epi32(v, 2); __builtin_memcpy(d + 4, &u32, 4);
        u16 = (uint16_t)_mm_extract_epi16(v, 6); __builtin_memcpy(d + 6, &u16, 2);
        break;
    default: _mm_storeu_si128((__m128i *)(void *)d, v); break;
    }
#else
    if (k == 8) {
        vst1q_u8((uint8_t *)d, v);
    } else {
        uint8_t t[16];
        vst1q_u8(t, v);
        __builtin_memcpy(d, t, (size_t)k * 2);
    }
#endif
}

// The OR of the eight u16 lanes.
RT_INLINE uint16_t or_lanes16(v128 a) {
    uint16_t l[8];
    __builtin_memcpy(l, &a, 16);
    return l[0] | l[1] | l[2] | l[3] | l[4] | l[5] | l[6] | l[7];
}

// Bits [bit, bit + n) of the MISSING bitmap, 1 <= n <= 32: bit i of the result for the i-th.
RT_INLINE uint64_t missing_bits(const uint8_t *m, ptrdiff_t bit, ptrdiff_t n) {
    uint64_t w = 0;
    const ptrdiff_t first = bit >> 3, last = (bit + n - 1) >> 3;
    for (ptrdiff_t i = first; i <= last; i++) w |= (uint64_t)m[i] << (8 * (i - first));
    return (w >> (bit & 7)) & ((1ull << n) - 1);
}

// Decodes one row: codes and the ID_NEW bytes at the cursor in, the row's ids stored and the cursors
// advanced. A macro over the locals of decode_impl, for its fast and its bounded loads.
#define RT_DECODE_ROW(CODES, NEXT)                                                                      \
    do {                                                                                                \
        const v128 codes = (CODES);                                                                     \
        const unsigned mask = v_mask8(v_eq8(codes, all_ff)) & kmask;                                    \
        /* A code is valid when code + 1 (wrapping) <= k: the run's maximum says. */                    \
        v128 c1 = v_add8(codes, ones);                                                                  \
        if (K < 8) c1 = v_and(c1, low_k);                                                               \
        acc_codes = v_max8(acc_codes, c1);                                                              \
        const v128 pairs = v_dup8(codes);                                                               \
        const v128 reused = v_shuffle(prev, v_or(v_add8(pairs, pairs), pair_ctl));                      \
        const v128 next = (NEXT);                                                                       \
        const v128 row = v_or(reused, v_shuffle(next, v_load(table[mask])));                            \
        const ptrdiff_t b = (r * L + l) * K;                                                            \
        store_lanes(ids + b, row, K);                                                                   \
        s += K;                                                                                         \
        f += (ptrdiff_t)__builtin_popcount(mask) << WIDE;                                               \
        prev = row;                                                                                     \
        p = b;                                                                                          \
        last_mask = mask;                                                                               \
        if (CHECK) {                                                                                    \
            acc_or = v_or(acc_or, row);                                                                 \
            acc_max = v_max16(acc_max, row);                                                            \
            if (CHECK == 1 && K > 1) {                                                                  \
                v128 d = v_narrow16(row);                                                               \
                if (K < 8) d = v_or(d, fill8);                                                          \
                v128 e = v_eq8(d, v_shuffle(d, rot12));                                                 \
                if (K > 3) e = v_or(e, v_eq8(d, v_shuffle(d, rot34)));                                  \
                acc_dup = v_or(acc_dup, e);                                                             \
            }                                                                                           \
            if (CHECK == 2 && K > 1) {                                                                  \
                v128 d = row;                                                                           \
                if (K < 8) d = v_or(d, fill16);                                                         \
                v128 e = v_eq16(d, v_rot16(d, 1));                                                      \
                if (K > 2) e = v_or(e, v_eq16(d, v_rot16(d, 2)));                                       \
                if (K > 3) e = v_or(e, v_eq16(d, v_rot16(d, 3)));                                       \
                if (K > 4) e = v_or(e, v_eq16(d, v_rot16(d, 4)));                                       \
                acc_dup = v_or(acc_dup, e);                                                             \
            }                                                                                           \
        }                                                                                               \
    } while (0)

// Rows per block. A block's output stays in cache while each layer's pass writes its slots into it.
#define RT_BLOCK_ROWS 32

// K: top_k; WIDE: u16 ID_NEW; CHECK: 0 no check, 1 duplicates compared as bytes (u8 ids), 2 as u16.
RT_INLINE int decode_impl(
    const uint8_t *slots, ptrdiff_t slots_len, const uint8_t *fresh, ptrdiff_t fresh_len, uint16_t *ids,
    ptrdiff_t *slot_cur, ptrdiff_t *fresh_cur, ptrdiff_t *prev_row, ptrdiff_t rows, ptrdiff_t first_chunk_row,
    const uint8_t *missing, ptrdiff_t L, ptrdiff_t R, rtrace_id_check *check, const int K, const int WIDE,
    const int CHECK) {
    const unsigned kmask = (1u << K) - 1;
    uint8_t lk[16], kb[16], pc[16], f8[16], r12[16], r34[16], f16[16];
    for (int i = 0; i < 16; i++) {
        const int lane = i / 2, byte_lane = i & 7;
        lk[i] = i < K ? 0xFF : 0;                                  // the codes of this row
        kb[i] = (uint8_t)K;
        pc[i] = lane < K ? (uint8_t)(i & 1) : 0x80;                // + (0, 1) in slot lanes; zero the rest
        f8[i] = byte_lane < K ? 0 : (uint8_t)(0xF8 + byte_lane);   // distinct fillers of unused lanes
        r12[i] = (uint8_t)(i < 8 ? (i + 1) & 7 : (i + 2) & 7);     // lanes rotated by 1 | by 2
        r34[i] = (uint8_t)(i < 8 ? (i + 3) & 7 : (i + 4) & 7);     // by 3 | by 4
        f16[i] = lane < K ? 0 : (i & 1 ? 0xFF : (uint8_t)(0xF8 + lane));
    }
    const v128 all_ff = v_eq8(v_zero(), v_zero()), ones = v_ones(), low_k = v_load(lk), k_bytes = v_load(kb);
    const v128 pair_ctl = v_load(pc), fill8 = v_load(f8), rot12 = v_load(r12), rot34 = v_load(r34), fill16 = v_load(f16);
    uint8_t eb[16];
    const uint16_t e_max = (uint16_t)(CHECK ? check->num_experts - 1 : 0xFFFF);
    for (int i = 0; i < 16; i++) eb[i] = (uint8_t)(i & 1 ? e_max >> 8 : e_max);
    const v128 e_max_v = v_load(eb);
    const uint8_t(*table)[16] = WIDE ? new_u16 : new_u8;
    const ptrdiff_t s_lim = slots_len - 8, f_lim = fresh_len - 16;
    bool flagged = false;

    for (ptrdiff_t block = 0; block < rows; block += RT_BLOCK_ROWS) {
        const ptrdiff_t block_end = rows - block < RT_BLOCK_ROWS ? rows : block + RT_BLOCK_ROWS;
        // The next block's output: the passes of the layers write it with a stride of layers x k ids.
        if (block_end < rows) {
            const ptrdiff_t next_end = rows - block_end < RT_BLOCK_ROWS ? rows : block_end + RT_BLOCK_ROWS;
            for (ptrdiff_t i = block_end * L * K * 2; i < next_end * L * K * 2; i += 64) __builtin_prefetch((char *)ids + i, 1);
        }
        for (ptrdiff_t l = 0; l < L; l++) {
            ptrdiff_t s = slot_cur[l], f = fresh_cur[l], p = prev_row[l], r = block;
            const uint64_t miss = missing ? missing_bits(missing, l * R + first_chunk_row + block, block_end - block) : 0;
            v128 prev = v_zero(), acc_codes = v_zero(), acc_or = v_zero(), acc_max = v_zero(), acc_dup = v_zero();
            unsigned last_mask = kmask;
            // This layer's codes and new ids for the next block: with 48 or so layers, more streams than the
            // hardware prefetcher follows.
            for (ptrdiff_t i = 0; i < K * RT_BLOCK_ROWS; i += 64) {
                if (s + K * RT_BLOCK_ROWS + i < slots_len) __builtin_prefetch(slots + s + K * RT_BLOCK_ROWS + i);
            }
            for (ptrdiff_t i = 0; i < 2 * (K * RT_BLOCK_ROWS << WIDE); i += 64) {
                if (f + i < fresh_len) __builtin_prefetch(fresh + f + i);
            }
            if (p >= 0) prev = load_partial((const uint8_t *)(ids + p), 2 * K, 16);
            // The fast loop leaves to the bounded one the layer's first present row in the piece (which has
            // no row to reuse, so its codes must all be new) and the rows near the end of a column.
            ptrdiff_t s_stop = p >= 0 ? s_lim : -1;
            for (;;) {
                for (; r < block_end; r++) {
                    if ((miss >> (r - block)) & 1) continue;
                    if (s > s_stop || f > f_lim) break;
                    RT_DECODE_ROW(v_load8(slots + s), v_load(fresh + f));
                }
                if (r == block_end) break;
                const bool first = p < 0;
                RT_DECODE_ROW(load_partial(slots + s, slots_len - s, 8), load_partial(fresh + f, fresh_len - f, 16));
                if (first && last_mask != kmask) return 1;
                s_stop = s_lim;
                r++;
            }
            (void)last_mask;
            if (v_any(v_xor(v_max8(acc_codes, k_bytes), k_bytes))) return 1;  // a code >= k, not 0xFF
            const bool present = p != prev_row[l];
            slot_cur[l] = s;
            fresh_cur[l] = f;
            prev_row[l] = p;
            if (CHECK && present) {
                check->layer_or[l] |= or_lanes16(acc_or);
                check->layer_present[l] = true;
                // An id above e_max where max(acc, e_max) differs from e_max.
                flagged |= v_any(acc_dup) || v_any(v_xor(v_max16(acc_max, e_max_v), e_max_v));
            }
        }
    }
    if (CHECK) check->flagged |= flagged;
    return 0;
}

#undef RT_DECODE_ROW
#undef RT_BLOCK_ROWS

// One specialisation per (top_k, ID_NEW width, check), so that the loop's shapes are constants.
#define RT_CALL(K, W, C)                                                                                 \
    decode_impl(slots, slots_len, fresh, fresh_len, ids, slot_cur, fresh_cur, prev_row, rows, first_chunk_row, \
                missing, layers, chunk_rows, check, K, W, C)
#define RT_CASES(W, C)                                                                                   \
    switch (top_k) {                                                                                     \
    case 1: return RT_CALL(1, W, C);                                                                     \
    case 2: return RT_CALL(2, W, C);                                                                     \
    case 3: return RT_CALL(3, W, C);                                                                     \
    case 4: return RT_CALL(4, W, C);                                                                     \
    case 5: return RT_CALL(5, W, C);                                                                     \
    case 6: return RT_CALL(6, W, C);                                                                     \
    case 7: return RT_CALL(7, W, C);                                                                     \
    default: return RT_CALL(8, W, C);                                                                    \
    }

static int decode_simd(
    const uint8_t *slots, ptrdiff_t slots_len, const uint8_t *fresh, ptrdiff_t fresh_len, uint16_t *ids,
    ptrdiff_t *slot_cur, ptrdiff_t *fresh_cur, ptrdiff_t *prev_row, ptrdiff_t rows, ptrdiff_t first_chunk_row,
    const uint8_t *missing, ptrdiff_t layers, ptrdiff_t top_k, ptrdiff_t chunk_rows, bool wide,
    rtrace_id_check *check) {
    // u8 ids compare as bytes; u16 ids (num_experts > 256) as u16.
    if (wide) {
        if (check) { RT_CASES(1, 2) } else { RT_CASES(1, 0) }
    } else {
        if (check) { RT_CASES(0, 1) } else { RT_CASES(0, 0) }
    }
}

#undef RT_CALL
#undef RT_CASES

#if defined(RT_X86)
#pragma clang attribute pop

// Whether this CPU runs the kernel; asked once (racing threads store the same value).
static bool cpu_supported(void) {
    static int supported = -1;
    int s = __atomic_load_n(&supported, __ATOMIC_RELAXED);
    if (s < 0) {
        __builtin_cpu_init();
        s = __builtin_cpu_supports("ssse3") && __builtin_cpu_supports("sse4.1") && __builtin_cpu_supports("popcnt");
        __atomic_store_n(&supported, s, __ATOMIC_RELAXED);
    }
    return s != 0;
}
#else
static bool cpu_supported(void) { return true; }
#endif

bool rtrace_ids_simd_supported(void) { return cpu_supported(); }

int rtrace_decode_ids(
    const uint8_t *slots, ptrdiff_t slots_len, const uint8_t *fresh, ptrdiff_t fresh_len, uint16_t *ids,
    ptrdiff_t *slot_cur, ptrdiff_t *fresh_cur, ptrdiff_t *prev_row, ptrdiff_t rows, ptrdiff_t first_chunk_row,
    const uint8_t *missing, ptrdiff_t layers, ptrdiff_t top_k, ptrdiff_t chunk_rows, bool wide,
    rtrace_id_check *check) {
    if (top_k < 1 || top_k > RTRACE_SIMD_MAX_TOP_K || !cpu_supported()) return -1;
    return decode_simd(slots, slots_len, fresh, fresh_len, ids, slot_cur, fresh_cur, prev_row, rows, first_chunk_row,
                       missing, layers, top_k, chunk_rows, wide, check);
}

#else  // no kernel for this architecture: the Swift code decodes

bool rtrace_ids_simd_supported(void) { return false; }

int rtrace_decode_ids(
    const uint8_t *slots, ptrdiff_t slots_len, const uint8_t *fresh, ptrdiff_t fresh_len, uint16_t *ids,
    ptrdiff_t *slot_cur, ptrdiff_t *fresh_cur, ptrdiff_t *prev_row, ptrdiff_t rows, ptrdiff_t first_chunk_row,
    const uint8_t *missing, ptrdiff_t layers, ptrdiff_t top_k, ptrdiff_t chunk_rows, bool wide,
    rtrace_id_check *check) {
    (void)slots, (void)slots_len, (void)fresh, (void)fresh_len, (void)ids, (void)slot_cur, (void)fresh_cur;
    (void)prev_row, (void)rows, (void)first_chunk_row, (void)missing, (void)layers, (void)top_k, (void)chunk_rows;
    (void)wide, (void)check;
    return -1;
}

#endif
