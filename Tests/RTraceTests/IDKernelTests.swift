import Foundation
import Testing
@testable import RTrace
import RTraceTestSupport

/// One chunk's id columns (spec/format.md §6.2), encoded from pieces of records, for decoding by the
/// SIMD kernel (`rtrace_decode_ids`) and by the scalar Swift code.
private struct IDChunk {
    var pieces: [Piece]
    var records: [TraceRecord]
    let L: Int, k: Int, E: Int
    var slots: [UInt8]
    var fresh: [UInt8]
    var missing: [UInt8]?

    var width: IDWidth { IDWidth.required(numExperts: E) }
    var rows: Int { pieces.reduce(0) { $0 + $1.rowCount } }

    init(pieces: [Piece], records: [TraceRecord], L: Int, k: Int, E: Int) {
        self.pieces = pieces
        self.records = records
        self.L = L
        self.k = k
        self.E = E
        let R = pieces.reduce(0) { $0 + $1.rowCount }
        var bits = [UInt8](repeating: 0, count: (L * R + 7) / 8)
        var r0 = 0
        for (p, rec) in zip(pieces, records) {
            for r in 0..<p.rowCount {
                for l in 0..<L where !rec.isPresent(row: p.rowOffset + r, layer: l) {
                    let bit = l * R + r0 + r
                    bits[bit >> 3] |= 1 << UInt8(bit & 7)
                }
            }
            r0 += p.rowCount
        }
        missing = bits.contains { $0 != 0 } ? bits : nil
        (slots, fresh) = IDCoding.encode(
            pieces: pieces, records: records, layers: L, topK: k, numExperts: E, width: IDWidth.required(numExperts: E))
    }

    /// The decoded pieces, or the error message.
    func decode(simd: Bool, check: Bool) -> Result<[DecodedPiece], DecodeFailure> {
        let starts = LayerStarts(missing: missing, layers: L, chunkRows: rows, slots: slots, topK: k)
        var out = pieces.map {
            DecodedPiece(piece: $0, meta: nil, ids: [UInt16](repeating: TraceRecord.missing, count: $0.rowCount * L * k))
        }
        if let err = IDCoding.decode(
            slots: slots, fresh: fresh + [0, 0], width: width, missing: missing, pieces: &out, layers: L, topK: k,
            chunkRows: rows, starts: starts, checkExperts: check ? E : nil, simd: simd)
        {
            return .failure(DecodeFailure(message: err))
        }
        return .success(out)
    }
}

private struct DecodeFailure: Error, Equatable {
    var message: String
}

/// The fields of an ``IDCheck``, comparable.
private func fields(_ c: IDCheck?) -> [String] {
    guard let c else { return ["none"] }
    return ["\(c.clean)", "\(c.layerOr)", "\(c.layerPresent)"]
}

/// Random routing: each (row, layer) mostly reuses experts of the layer's previous row, as real routers do.
/// `bad` adds ids ≥ E, repeated experts and rows with some (not all) slots 0xFFFF.
private func randomRecord(
    _ rng: inout TestRNG, uid: String, rows: Int, L: Int, k: Int, E: Int, missingRate: Int, bad: Bool
) -> TraceRecord {
    var ids = [UInt16]()
    ids.reserveCapacity(rows * L * k)
    var prev = [[UInt16]](repeating: Array((0..<k).map { UInt16($0 % E) }), count: L)
    for _ in 0..<rows {
        for l in 0..<L {
            if missingRate > 0 && rng.int(100) < missingRate {
                ids += [UInt16](repeating: TraceRecord.missing, count: k)
                continue
            }
            var set = [UInt16]()
            var guardCount = 0
            while set.count < k {
                let e = rng.int(3) != 0 ? prev[l][rng.int(k)] : UInt16(rng.int(E))
                guardCount += 1
                if !set.contains(e) || guardCount > 50 { set.append(e) }
            }
            if bad {
                switch rng.int(40) {
                case 0: set[rng.int(k)] = UInt16(min(E + rng.int(3), 0xFFFF))  // id ≥ E
                case 1 where k > 1: set[rng.int(k)] = set[(rng.int(k - 1) + 1 + 0) % k]  // a repeated expert
                case 2 where k > 1: set[1 + rng.int(k - 1)] = TraceRecord.missing  // partly missing
                case 3: set[rng.int(k)] = UInt16(0xFFF8 + rng.int(7))  // near the kernel's filler values
                default: break
                }
            }
            ids += set
            prev[l] = set
        }
    }
    return TraceRecord(uid: uid, rowCount: rows, layers: L, topK: k, expertIDs: ids)
}

/// Pieces of consecutive records, the first possibly a record's tail and the last its head (records that
/// span chunks), the rest whole.
private func randomChunk(_ rng: inout TestRNG, L: Int, k: Int, E: Int, missingRate: Int, bad: Bool) -> IDChunk {
    var pieces: [Piece] = []
    var records: [TraceRecord] = []
    let count = 1 + rng.int(5)
    for i in 0..<count {
        let rows = rng.int(4) == 0 ? rng.int(4) : 1 + rng.int(120)
        let rec = randomRecord(&rng, uid: "r\(i)", rows: rows, L: L, k: k, E: E, missingRate: missingRate, bad: bad)
        var offset = 0, n = rows
        if i == 0 && rows > 1 && rng.int(2) == 0 { offset = 1 + rng.int(rows - 1); n = rows - offset }
        if i == count - 1 && n > 1 && rng.int(2) == 0 { n = 1 + rng.int(n - 1) }
        pieces.append(Piece(ordinal: UInt64(i), first: offset == 0, last: offset + n == rows, rowOffset: offset, rowCount: n))
        records.append(rec)
    }
    return IDChunk(pieces: pieces, records: records, L: L, k: k, E: E)
}

/// Expects the SIMD and the scalar decoding of `chunk` to agree: ids, errors and (with `check`) the id checks,
/// which must also be what `TraceChecker.idCheck` finds. Returns the SIMD result.
@discardableResult
private func expectSameDecoding(_ chunk: IDChunk, check: Bool, _ note: String) -> Result<[DecodedPiece], DecodeFailure> {
    let fast = chunk.decode(simd: true, check: check)
    let slow = chunk.decode(simd: false, check: check)
    switch (fast, slow) {
    case (.success(let a), .success(let b)):
        #expect(a.map(\.ids) == b.map(\.ids), "ids: \(note)")
        #expect(a.map { fields($0.idCheck) } == b.map { fields($0.idCheck) }, "checks: \(note)")
        if check {
            for p in a {
                let want = p.ids.withUnsafeBufferPointer {
                    TraceChecker.idCheck($0, rows: p.piece.rowCount, L: chunk.L, k: chunk.k, E: chunk.E)
                }
                #expect(fields(p.idCheck) == fields(want), "idCheck: \(note)")
            }
        }
    case (.failure(let a), .failure(let b)):
        #expect(a == b, "error: \(note)")
    default:
        Issue.record("SIMD \(fast) vs scalar \(slow): \(note)")
    }
    return fast
}

@Suite struct IDKernelTests {
    @Test func kernelRunsHere() {
        #if arch(x86_64) || arch(arm64)
        #expect(IDCoding.simdSupported)
        #endif
    }

    /// Random chunks for top_k 1…8 (the kernel) and 9, 12 (the scalar fallback), u8 and u16 ids.
    @Test(arguments: [1, 2, 3, 4, 5, 6, 7, 8, 9, 12])
    func kernelMatchesScalar(k: Int) {
        var rng = TestRNG(0x1D5 &+ UInt64(k))
        for round in 0..<24 {
            let E = [k, 16, 128, 247, 248, 256, 300, 4096, 65_535][round % 9]
            guard E >= k else { continue }
            let L = 1 + rng.int(round % 3 == 0 ? 60 : 7)
            let missingRate = [0, 5, 40][round % 3]
            let chunk = randomChunk(&rng, L: L, k: k, E: E, missingRate: missingRate, bad: round % 2 == 1)
            let note = "k \(k) E \(E) L \(L) round \(round)"
            expectSameDecoding(chunk, check: true, note)
            expectSameDecoding(chunk, check: false, note)
            // The ids are those encoded (u8 ids keep their low byte).
            if case .success(let got) = chunk.decode(simd: true, check: false) {
                for (p, rec) in zip(got, chunk.records) {
                    let lo = p.piece.rowOffset * L * k, hi = lo + p.piece.rowCount * L * k
                    let want = rec.expertIDs[lo..<hi].map { chunk.width == .u16 ? $0 : $0 & 0xFF }
                    // A present (row, layer) whose first id is 0xFFFF reads back as missing: compare the rest.
                    #expect(p.ids.count == want.count, "\(note)")
                    var same = true
                    for b in stride(from: 0, to: want.count, by: k) where rec.expertIDs[lo + b] != TraceRecord.missing {
                        if Array(p.ids[b..<(b + k)]) != Array(want[b..<(b + k)]) { same = false }
                    }
                    #expect(same, "decoded ids differ from the record: \(note)")
                }
            }
        }
    }

    /// Clean routing: the kernel's own check (it leaves only what it flags to `idCheck`) equals `idCheck`.
    @Test(arguments: [(4, 32), (8, 128), (6, 300), (8, 65_535), (2, 248), (3, 256)])
    func cleanTracesCheckedInTheKernel(k: Int, E: Int) {
        var rng = TestRNG(UInt64(k * 100_000 + E))
        for round in 0..<6 {
            let chunk = randomChunk(&rng, L: 1 + rng.int(48), k: k, E: E, missingRate: round % 2 == 0 ? 0 : 10, bad: false)
            if case .success(let pieces) = expectSameDecoding(chunk, check: true, "k \(k) E \(E) round \(round)") {
                for p in pieces { #expect(p.idCheck?.clean == true) }
            }
        }
    }

    /// One fault in otherwise clean routing, at each slot (pair) of a row: an expert twice, an id ≥ E, a
    /// slot 0xFFFF. The piece is unclean, as `idCheck` says.
    @Test(arguments: [(2, 64), (3, 40), (4, 128), (5, 256), (6, 248), (7, 300), (8, 128), (8, 4096)])
    func singleFaultsAreFound(k: Int, E: Int) {
        var rng = TestRNG(UInt64(k * 7919 + E))
        var faults: [(Int, Int, UInt16?)] = []  // (slot, source slot, or a value)
        for i in 0..<k {
            for j in 0..<k where j != i { faults.append((i, j, nil)) }
            faults.append((i, 0, UInt16(E)))
            faults.append((i, 0, UInt16(min(E + 1 + rng.int(1000), 0xFFFE))))
            if i > 0 { faults.append((i, 0, TraceRecord.missing)) }
        }
        for (n, (i, j, value)) in faults.enumerated() {
            let L = 1 + rng.int(6)
            var chunk = randomChunk(&rng, L: L, k: k, E: E, missingRate: 0, bad: false)
            guard let p = chunk.pieces.indices.first(where: { chunk.pieces[$0].rowCount > 0 }) else { continue }
            let row = chunk.pieces[p].rowOffset + rng.int(chunk.pieces[p].rowCount), l = rng.int(L)
            var rec = chunk.records[p]
            let b = (row * L + l) * k
            rec.expertIDs[b + i] = value ?? rec.expertIDs[b + j]
            chunk.records[p] = rec
            chunk = IDChunk(pieces: chunk.pieces, records: chunk.records, L: L, k: k, E: E)
            let note = "k \(k) E \(E) fault \(n): slot \(i) = \(value.map(String.init) ?? "slot \(j)")"
            if case .success(let got) = expectSameDecoding(chunk, check: true, note) {
                // A u8 trace keeps the low byte of an id: 256 + x reads back as x.
                let stored = chunk.width == .u8 && value.map({ $0 > 0xFF }) == true ? UInt16(value! & 0xFF) : nil
                if stored.map({ Int($0) < E }) != true {
                    #expect(got[p].idCheck?.clean == false, "\(note)")
                }
            }
        }
    }

    /// Bad slot codes: a reuse code ≥ top_k, and a reuse code in a layer's first present row of a piece.
    /// Both decoders report the same message.
    @Test(arguments: [1, 2, 3, 4, 6, 8, 10])
    func badCodesReportTheSameError(k: Int) {
        var rng = TestRNG(0xBAD &+ UInt64(k))
        var errors = 0
        for round in 0..<40 {
            let E = round % 2 == 0 ? 64 : 1000
            guard E >= k else { continue }
            var chunk = randomChunk(&rng, L: 1 + rng.int(9), k: k, E: E, missingRate: round % 3 == 0 ? 20 : 0, bad: false)
            guard !chunk.slots.isEmpty else { continue }
            let w = chunk.width.size
            let i = rng.int(chunk.slots.count)
            if chunk.slots[i] != IDCoding.newMarker {
                chunk.slots[i] = UInt8(k + rng.int(0xFF - k))  // ≥ top_k, not the new marker
            } else {
                chunk.slots[i] = UInt8(rng.int(k))  // a reuse code, maybe where there is no previous row
                chunk.fresh.removeLast(w)  // one new id fewer (which one does not matter: decoding fails or not alike)
            }
            if case .failure = expectSameDecoding(chunk, check: true, "k \(k) round \(round) at \(i)") { errors += 1 }
            expectSameDecoding(chunk, check: false, "k \(k) round \(round) at \(i)")
        }
        #expect(errors > 5)
    }

    /// The error messages name the code, the layer and the chunk row.
    @Test func errorMessages() {
        let rec = TraceRecord(uid: "a", rowCount: 3, layers: 2, topK: 2, expertIDs: [1, 2, 3, 4, 1, 5, 3, 6, 5, 1, 6, 7])
        var chunk = IDChunk(
            pieces: [Piece(ordinal: 0, first: true, last: true, rowOffset: 0, rowCount: 3)], records: [rec], L: 2, k: 2, E: 8)
        // Layer 0: rows (1,2), (1,5), (5,1): codes FF FF | 00 FF | 01 00. Layer 1: (3,4), (3,6), (6,7).
        #expect(chunk.slots == [0xFF, 0xFF, 0, 0xFF, 1, 0, 0xFF, 0xFF, 0, 0xFF, 1, 0xFF])
        chunk.slots[5] = 7
        for simd in [true, false] {
            if case .failure(let f) = chunk.decode(simd: simd, check: false) {
                #expect(f.message == "slot code 7 at layer 0, chunk row 2 is not below top_k 2")
            } else {
                Issue.record("no error")
            }
        }
        chunk.slots[5] = 0
        chunk.slots[6] = 1
        chunk.fresh.removeLast()
        for simd in [true, false] {
            if case .failure(let f) = chunk.decode(simd: simd, check: false) {
                #expect(f.message == "slot code 1 at layer 1, chunk row 0 refers to a previous row the piece does not have")
            } else {
                Issue.record("no error")
            }
        }
    }

    /// Real Qwen3-MoE routing (samples/qwen3moe-L6-E32-k4) decodes alike both ways, in chunks of pieces.
    @Test(arguments: ["rollout", "train_mixed", "train_r3"])
    func realRoutingDecodesAlike(_ name: String) throws {
        let reader = try TraceReader(path: "\(repoRoot)/samples/qwen3moe-L6-E32-k4/\(name).rtrace")
        let h = reader.header
        let records = try reader.readAll()
        let L = h.model.moeLayers, k = h.model.topK, E = h.model.numExperts
        // Chunks of 3 records, the first of each continuing the last one of the chunk before.
        var rng = TestRNG(7)
        var at = 0, offset = 0
        var total = 0
        while at < records.count {
            var pieces: [Piece] = [], recs: [TraceRecord] = []
            for j in at..<min(records.count, at + 3) {
                let r = records[j]
                let start = j == at ? offset : 0
                var n = r.rowCount - start
                if j == at + 2 && n > 1 { n = 1 + rng.int(n - 1) }
                pieces.append(Piece(ordinal: UInt64(j), first: start == 0, last: start + n == r.rowCount, rowOffset: start, rowCount: n))
                recs.append(r)
            }
            let last = pieces[pieces.count - 1]
            if last.last { at += pieces.count; offset = 0 } else { at += pieces.count - 1; offset = last.rowOffset + last.rowCount }
            let chunk = IDChunk(pieces: pieces, records: recs, L: L, k: k, E: E)
            if case .success(let got) = expectSameDecoding(chunk, check: true, "\(name) record \(at)") {
                for (p, rec) in zip(got, recs) {
                    let lo = p.piece.rowOffset * L * k
                    #expect(p.ids[...] == rec.expertIDs[lo..<(lo + p.piece.rowCount * L * k)])
                    #expect(p.idCheck?.clean == true)
                    total += p.piece.rowCount
                }
            }
        }
        #expect(total == records.reduce(0) { $0 + $1.rowCount })
    }
}
