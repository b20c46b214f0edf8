// Differential test of the C id kernel (Sources/CRTraceSIMD) against spec §6.2, for the kernel's other
// architecture: `make test-aarch64` builds it for aarch64 and runs it under qemu, so the NEON path is
// checked on an x86 machine (the Swift tests check the SSE path against the Swift decoder).
// Random traces: k 1…8, u8 and u16 ids, missing rows, pieces, out-of-range and duplicate ids; each is
// encoded here by the literal rule of §6.2, decoded by rtrace_decode_ids piece by piece, and compared
// id for id, with the check's layer ORs, presence and flag.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "rtrace_simd.h"
static uint64_t s = 88172645463325252ull;
static uint64_t rnd(void) { s ^= s << 13; s ^= s >> 7; s ^= s << 17; return s; }
static int R(int n) { return (int)(rnd() % (uint64_t)n); }
int main(void) {
  if (!rtrace_ids_simd_supported()) { printf("SIMD not supported\n"); return 2; }
  int cases = 0, fails = 0;
  for (int it = 0; it < 3000; it++) {
    int L = 1 + R(6), k = 1 + R(8), E = R(2) ? 40 : 300, wide = E > 256 || R(4) == 0;
    int npieces = 1 + R(3); int prow[4]; int Rt = 0;
    for (int p = 0; p < npieces; p++) { prow[p] = R(70); Rt += prow[p]; }
    int usemiss = R(3) == 0;
    uint8_t *miss = calloc((L * Rt + 7) / 8 + 1, 1);
    uint16_t *ids = calloc(Rt * L * k + 1, sizeof(uint16_t));
    // ids row-major [r][l][j]; duplicates / out of range now and then
    for (int r = 0; r < Rt; r++) for (int l = 0; l < L; l++) {
      if (usemiss && R(5) == 0) { int b = l * Rt + r; miss[b >> 3] |= 1 << (b & 7); continue; }
      uint16_t *row = ids + (r * L + l) * k;
      for (int j = 0; j < k; j++) {
        int e;
        int pb = l * Rt + r - 1; if (r > 0 && !(miss[pb >> 3] & (1 << (pb & 7))) && R(2)) { e = ids[((r - 1) * L + l) * k + R(k)]; } else e = R(E);
        if (R(200) == 0) e = E + R(5);               // out of range
        row[j] = (uint16_t)e;
      }
      // mostly distinct
      for (int j = 1; j < k; j++) for (int q = 0; q < j; q++) if (row[j] == row[q] && R(20)) row[j] = (uint16_t)((row[j] + 1 + R(E)) % E);
    }
    // encode (§6.2), layer-major
    uint8_t *slots = malloc(Rt * L * k + 1); uint8_t *fresh = malloc(2 * Rt * L * k + 4);
    int ns = 0, nf = 0; int w = wide ? 2 : 1;
    ptrdiff_t *sc = malloc(sizeof(ptrdiff_t) * L), *fc = malloc(sizeof(ptrdiff_t) * L), *pr = malloc(sizeof(ptrdiff_t) * L);
    for (int l = 0; l < L; l++) {
      sc[l] = ns; fc[l] = nf;
      int r0 = 0;
      for (int p = 0; p < npieces; p++) {
        int prev = -1;
        for (int r = r0; r < r0 + prow[p]; r++) {
          int b = l * Rt + r; if (miss[b >> 3] & (1 << (b & 7))) continue;
          uint16_t *row = ids + (r * L + l) * k;
          for (int j = 0; j < k; j++) {
            int m = 0xFF;
            if (prev >= 0) for (int q = 0; q < k; q++) if (ids[(prev * L + l) * k + q] == row[j]) { m = q; break; }
            slots[ns++] = (uint8_t)m;
            if (m == 0xFF) { fresh[nf++] = row[j] & 0xFF; if (wide) fresh[nf++] = row[j] >> 8; }
          }
          prev = r;
        }
        r0 += prow[p];
      }
    }
    // decode with the kernel, piece by piece
    uint16_t *out = malloc(sizeof(uint16_t) * (Rt * L * k + 1));
    for (int i = 0; i < Rt * L * k; i++) out[i] = 0xFFFF;
    uint16_t *lor = calloc(L, 2); bool *lpres = calloc(L, 1);
    int r0 = 0, ok = 1, anyflag = 0;
    for (int p = 0; p < npieces; p++) {
      for (int l = 0; l < L; l++) pr[l] = -1;
      rtrace_id_check chk = { lor, lpres, E, false };
      int st = rtrace_decode_ids(slots, ns, fresh, nf, out + r0 * L * k, sc, fc, pr, prow[p], r0, usemiss ? miss : NULL,
                                 L, k, Rt, wide, &chk);
      if (st != 0) { ok = 0; printf("status %d\n", st); break; }
      anyflag |= chk.flagged;
      r0 += prow[p];
    }
    // compare
    int bad = 0, expectFlag = 0;
    for (int r = 0; r < Rt && ok; r++) for (int l = 0; l < L; l++) {
      int b = l * Rt + r; int m = (miss[b >> 3] >> (b & 7)) & 1;
      for (int j = 0; j < k; j++) {
        uint16_t want = m ? 0xFFFF : ids[(r * L + l) * k + j];
        if (out[(r * L + l) * k + j] != want) { bad++; if (getenv("DBG") && bad < 3) printf("  id mismatch r=%d l=%d j=%d got %d want %d miss=%d\n", r, l, j, out[(r*L+l)*k+j], want, m); }
        if (!m && want >= E) expectFlag = 1;
        if (!m) for (int q = 0; q < j; q++) if (ids[(r * L + l) * k + q] == want) expectFlag = 1;
      }
    }
    // layer OR over present rows
    for (int l = 0; l < L && ok; l++) { uint16_t o = 0; int pres = 0;
      for (int r = 0; r < Rt; r++) { int b = l * Rt + r; if ((miss[b >> 3] >> (b & 7)) & 1) continue; pres = 1; for (int j = 0; j < k; j++) o |= ids[(r * L + l) * k + j]; }
      if (!anyflag && (lor[l] != o || lpres[l] != pres)) { bad++; if (getenv("DBG")) printf("  layer %d or %d want %d pres %d want %d\n", l, lor[l], o, lpres[l], pres); } }
    if (expectFlag && !anyflag) { bad++; if (getenv("DBG")) printf("  not flagged\n"); }
    cases++; if (!ok || bad) { fails++; if (fails < 5) printf("FAIL it=%d L=%d k=%d E=%d wide=%d pieces=%d rows=%d bad=%d\n", it, L, k, E, wide, npieces, Rt, bad); }
    free(miss); free(ids); free(slots); free(fresh); free(sc); free(fc); free(pr); free(out); free(lor); free(lpres);
  }
  printf("%d cases, %d failed\n", cases, fails);
  return fails != 0;
}
