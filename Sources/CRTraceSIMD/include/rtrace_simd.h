// SIMD kernels for the .rtrace reader: the ordered-reuse id decoder (spec/format.md §6.2) with the
// checks of `rtrace check` fused in. The Swift code in Sources/RTrace/IDCoding.swift is the reference
// and the fallback; these functions decline (return -1) where they do not apply.
#ifndef RTRACE_SIMD_H
#define RTRACE_SIMD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/// The largest top_k the kernel decodes (one 16-byte register holds a row of u16 ids).
#define RTRACE_SIMD_MAX_TOP_K 8

/// Whether `rtrace_decode_ids` runs on this CPU: SSSE3, SSE4.1 and POPCNT on x86_64, NEON on aarch64.
bool rtrace_ids_simd_supported(void);

/// What the kernel accumulates when it also checks the ids it decodes (`rtrace check`).
typedef struct {
    /// Per layer, OR-ed with the OR of the layer's ids over the piece's present rows.
    uint16_t *layer_or;
    /// Per layer, set when the piece has a present row at that layer.
    bool *layer_present;
    /// Ids must be below this.
    ptrdiff_t num_experts;
    /// Set when a present row may hold an id >= num_experts or one expert twice: the caller then
    /// checks the piece the exact way. (A false alarm needs ids >= 248 in a u8 trace, or >= 0xFFF8 in
    /// a u16 one, with top_k < 8: they equal the fillers of the unused lanes.)
    bool flagged;
} rtrace_id_check;

/// Decodes one piece's ids: the same contract as `IDCoding.decodePiece` in Swift.
///
/// `slots` and `fresh` are the chunk's whole ID_SLOTS and ID_NEW columns (no padding is needed:
/// loads near their ends are bounded by `slots_len` and `fresh_len`). `ids` receives the piece's
/// `rows` x `layers` x `top_k` ids, row-major; missing (row, layer)s are not written. `slot_cur`,
/// `fresh_cur` and `prev_row` hold, per layer, the next ID_SLOTS index, the next ID_NEW byte and the
/// index in `ids` of the previous present row (-1 for none); they are advanced. Bit
/// `layer * chunk_rows + first_chunk_row + r` of `missing` (may be NULL) marks row r absent.
/// `check` may be NULL.
///
/// Returns 0 when decoded; 1 when some slot code is bad (>= top_k and not 0xFF, or a reuse code in
/// a layer's first present row): `ids` and the cursors are then unspecified, and the caller decodes
/// the piece again with the scalar code for the error message; -1, touching nothing, when the
/// kernel does not cover the case (top_k > 8, or no SIMD on this CPU).
int rtrace_decode_ids(
    const uint8_t *slots, ptrdiff_t slots_len, const uint8_t *fresh, ptrdiff_t fresh_len, uint16_t *ids,
    ptrdiff_t *slot_cur, ptrdiff_t *fresh_cur, ptrdiff_t *prev_row, ptrdiff_t rows, ptrdiff_t first_chunk_row,
    const uint8_t *missing, ptrdiff_t layers, ptrdiff_t top_k, ptrdiff_t chunk_rows, bool wide,
    rtrace_id_check *check);

#ifdef __cplusplus
}
#endif

#endif
