import RTraceTestSupport
import Foundation
import Testing

@testable import RTrace

/// Random records: distinct ids per (row, layer), distinct consecutive tokens.
private func randomRecords(count: Int, rows: Int, L: Int, E: Int, k: Int, seed: UInt64) -> [TraceRecord] {
    var rng = TestRNG(seed)
    return (0..<count).map { i in
        var ids: [UInt16] = []
        for _ in 0..<(rows * L) {
            var set: [UInt16] = []
            while set.count < k {
                let e = UInt16(rng.int(E))
                if !set.contains(e) { set.append(e) }
            }
            ids += set
        }
        let tokens = (0...rows).map { Int32($0 * 3 + i) }
        return TraceRecord(uid: "s\(i)", tokens: tokens, promptLength: 4, rowCount: rows, layers: L, topK: k, expertIDs: ids)
    }
}

private func check(_ header: TraceHeader, _ records: [TraceRecord], _ name: String) throws -> CheckReport {
    let p = tempPath(name)
    let w = try TraceWriter(path: p, header: header, options: WriterOptions(chunkBytes: 2000))
    for r in records { try w.append(r) }
    try w.close()
    return try TraceChecker.check(path: p)
}

/// Copies row `from` of `r` over rows `rows`.
private func repeating(_ r: TraceRecord, row from: Int, over rows: ClosedRange<Int>) -> TraceRecord {
    var r = r
    let w = r.layers * r.topK
    for row in rows { for i in 0..<w { r.expertIDs[row * w + i] = r.expertIDs[from * w + i] } }
    return r
}

@Suite("rtrace check: capture bugs (non-finite floats, repeated rows)")
struct CaptureCheckTests {
    @Test("an npz with all-NaN bf16 weights imports, and check warns naming the record and position")
    func nanWeightsFromNpz() throws {
        let S = 3, R = 5, L = 2, k = 2
        var ids: [Int64] = []
        for _ in 0..<(S * R * L) { ids += [0, 1] }
        var bits = [Int64](repeating: 0x3F80, count: S * R * L * k)  // bf16 1.0
        for i in (R * L * k)..<(2 * R * L * k) { bits[i] = 0x7FC0 }  // sequence 1: all NaN
        bits[2 * R * L * k + 7] = 0x7F80  // sequence 2: one +inf, row 1, layer 1, slot 1
        var o = ImportOptions()
        o.numExperts = 4
        let (h, recs) = try NpzConversion.makeTrace([
            "topk_ids": NpyArray.ints(ids, dtype: "i4", shape: [S, R, L, k]),
            "topk_weights": NpyArray.ints(bits, dtype: "u2", shape: [S, R, L, k]),
        ], options: o)
        #expect(h.columns.topkWeights == .bf16)
        let report = try check(h, recs, "nan-weights.rtrace")
        #expect(report.clean, "warnings only: \(report.issues)")
        let w = report.issues.filter { $0.severity == .warning }
        #expect(w.count == 2, "\(w)")
        #expect(w.contains { $0.record == "1" && $0.message.contains("topk_weights: 20 NaN or infinite bf16 values, the first at row 0 (position 0), layer 0, slot 0") })
        #expect(w.contains { $0.record == "2" && $0.message.contains("topk_weights: 1 NaN or infinite bf16 values, the first at row 1 (position 1), layer 1, slot 1") }, "\(w)")
    }

    @Test("NaN or infinite router logits and logprobs are warnings with the position")
    func logitsAndLogprobs() throws {
        var recs = randomRecords(count: 2, rows: 6, L: 2, E: 4, k: 2, seed: 1)
        let h = TraceHeader(engine: EngineInfo(name: "t", role: .train), model: ModelGeometry(numLayers: 2, numExperts: 4, topK: 2),
                            columns: ColumnTypes(routerLogits: .f32, logprobs: true))
        for i in recs.indices {
            var v = [Float](repeating: 0.5, count: 6 * 2 * 4)
            if i == 1 { v[3 * 8 + 1 * 4 + 2] = .infinity; v[40] = .nan }
            recs[i].logits = FloatArray(dtype: .f32, values: v)
            recs[i].logprobs = [-0.1, i == 0 ? .nan : -0.2, -0.3]
        }
        let report = try check(h, recs, "nan-logits.rtrace")
        let w = report.issues.filter { $0.severity == .warning }.map(\.description)
        #expect(w.contains { $0.contains("record s1: router_logits: 2 NaN or infinite f32 values, the first at row 3 (position 3), layer 1, expert 2") }, "\(w)")
        #expect(w.contains { $0.contains("record s0: logprobs: 1 NaN or infinite values, the first logprob 1 (the token at position 5)") }, "\(w)")
        #expect(w.count == 2)
    }

    @Test("a run of rows repeating the previous row in every layer at different tokens is flagged; chance runs are not")
    func repeatedRows() throws {
        let L = 4, E = 16, k = 2
        let h = TraceHeader(engine: EngineInfo(name: "t", role: .rollout), model: ModelGeometry(numLayers: L, numExperts: E, topK: k))
        var recs = randomRecords(count: 20, rows: 60, L: L, E: E, k: k, seed: 2)
        #expect(try check(h, recs, "rep-none.rtrace").issues.isEmpty)
        recs[7] = repeating(recs[7], row: 19, over: 20...24)
        // The same in a record whose tokens repeat there too (a repeated input token may route alike): not flagged.
        recs[9] = repeating(recs[9], row: 9, over: 10...14)
        for p in 10...14 { recs[9].tokens[p] = recs[9].tokens[9] }
        let report = try check(h, recs, "rep-run.rtrace")
        #expect(report.clean)
        #expect(report.issues.count == 1, "\(report.issues)")
        let m = report.issues.first?.message ?? ""
        #expect(report.issues.first?.record == "s7" && m.contains("rows 20…24 (positions 20…24)") && m.contains("a run of 5"), "\(m)")
    }

    @Test("the chance level comes from the trace: with 2 experts and top-1, short runs are chance, long ones are not")
    func chanceFromTheTrace() throws {
        let h = TraceHeader(engine: EngineInfo(name: "t", role: .rollout), model: ModelGeometry(numLayers: 1, numExperts: 2, topK: 1))
        var recs = randomRecords(count: 10, rows: 100, L: 1, E: 2, k: 1, seed: 3)
        var c = CaptureCheck(header: h)
        for r in recs { _ = c.add(r, offset: 0) }
        // q ≈ 0.5: a run of m has chance ≈ 990 · 0.5^m; runs up to log2(99000) ≈ 16 are chance.
        let limit = try #require(c.longestRunByChance)
        #expect((14...18).contains(limit), "\(limit), p = \(c.repeatChance ?? -1)")
        #expect(c.finish().isEmpty)
        recs[4] = repeating(recs[4], row: 10, over: 11...40)
        var c2 = CaptureCheck(header: h)
        for r in recs { _ = c2.add(r, offset: 0) }
        let flagged = c2.finish()
        #expect(!flagged.isEmpty && flagged.allSatisfy { $0.record == "s4" }, "\(flagged)")
    }

    @Test("rtrace check: warnings keep exit 0 and say so in the summary; --strict fails on them", .enabled(if: binaryTestsEnabled))
    func cliStrict() throws {
        let h = TraceHeader(engine: EngineInfo(name: "t", role: .train), model: ModelGeometry(numLayers: 2, numExperts: 4, topK: 2),
                            columns: ColumnTypes(logprobs: true))
        var recs = randomRecords(count: 2, rows: 4, L: 2, E: 4, k: 2, seed: 4)
        recs[1].logprobs = [.nan]
        let p = tempPath("strict.rtrace")
        let w = try TraceWriter(path: p, header: h)
        for r in recs { try w.append(r) }
        try w.close()
        let plain = try runRTrace(["check", p])
        #expect(plain.status == 0 && plain.stdout.contains("record s1: logprobs: 1 NaN") && plain.stdout.contains("OK with 1 warning:"), "\(plain.stdout)")
        let strict = try runRTrace(["check", "--strict", "--quiet", p])
        #expect(strict.status == 1 && strict.stdout.contains("FAILED"), "\(strict.stdout)")
    }
}
