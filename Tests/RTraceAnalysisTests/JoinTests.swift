import Foundation
import RTrace
import RTraceTestSupport
import Testing
@testable import RTraceAnalysis

/// The report without the file names (which differ between copies of the same data).
func sansFiles(_ r: DiffResult) -> DiffResult {
    var r = r
    r.a = []; r.b = []
    return r
}

/// `recs` in a seeded random order.
func shuffled(_ recs: [TraceRecord], seed: UInt64) -> [TraceRecord] {
    var r = recs, rng = TestRNG(seed)
    for i in stride(from: r.count - 1, to: 0, by: -1) { r.swapAt(i, rng.int(i + 1)) }
    return r
}

/// `recs` cut into files of the given sizes (the last takes the rest) in `dir`; returns the paths.
func shards(_ recs: [TraceRecord], _ sizes: [Int], _ h: TraceHeader, _ dir: String, _ name: String, chunkBytes: Int = 1 << 14) throws -> [String] {
    var out: [String] = [], at = 0
    for (i, n) in (sizes + [recs.count]).enumerated() where at < recs.count {
        let end = i < sizes.count ? min(recs.count, at + n) : recs.count
        out.append(try write("\(dir)/\(name)-\(i).rtrace", h, Array(recs[at..<end]), chunkBytes: chunkBytes))
        at = end
    }
    return out
}

@Suite("The join by uid: the same report whatever the order and sharding, in bounded memory")
struct JoinTests {
    let g = ModelGeometry(numLayers: 5, numExperts: 16, topK: 4, layerMap: [0, 2, 3, 4])

    @Test("B in order, shuffled, reversed and unevenly sharded; planned or streamed; in memory or spilled: one report")
    func orderDoesNotChangeTheReport() throws {
        let d = tempDir()
        let (A, B) = generatePair(g, sequences: 60, seed: 7, maxRows: 30)
        var extraB = B[0]
        extraB.uid = "only-in-b"
        let hA = header(g), hB = header(g, role: .train)
        // Small chunks: several records per chunk, and records over several chunks.
        let pa = try write(d + "/a.rtrace", hA, Array(A.dropLast(3)), chunkBytes: 4096)
        let pb = try write(d + "/b.rtrace", hB, B + [extraB], chunkBytes: 4096)
        var opt = DiffOptions(buckets: 3, top: 7)
        let want = try diffTraces(a: [pa], b: [pb], options: opt)
        #expect(want.join?.planned == true && want.join?.spilledRecords == 0)
        let m = want.result.matched
        #expect(m.sequences == 57 && m.sequencesOnlyA == 0 && m.sequencesOnlyB == 4)

        let sideB: [(String, [String])] = [
            ("shuffled", try shards(shuffled(B + [extraB], seed: 3), [], hB, d, "bs", chunkBytes: 4096)),
            ("reversed", try shards(Array((B + [extraB]).reversed()), [], hB, d, "br", chunkBytes: 4096)),
            ("shuffled shards", try shards(shuffled(B + [extraB], seed: 4), [1, 30, 2, 9], hB, d, "bss", chunkBytes: 3000)),
        ]
        let sideA = try shards(shuffled(Array(A.dropLast(3)), seed: 9), [20, 1, 25], hA, d, "as")
        for (name, b) in sideB {
            for a in [[pa], sideA] {
                for (stream, budget) in [(false, 32 << 20), (false, 0), (true, 32 << 20), (true, 0)] {
                    opt.streamJoin = stream
                    opt.memoryBudget = budget
                    let rep = try diffTraces(a: a, b: b, options: opt)
                    #expect(sansFiles(rep.result) == sansFiles(want.result), "B \(name), A in \(a.count) files, stream \(stream), budget \(budget)")
                    #expect(rep.join?.planned == !stream)
                    if budget == 0 {
                        #expect(rep.join!.spilledRecords > 0 && rep.join!.peakMemoryBytes == 0, "B \(name): nothing may wait in memory")
                    }
                }
            }
        }
    }

    @Test("a plan over the indexes spills and re-decodes little when B is reversed or in another shard order")
    func planWaitsLittle() throws {
        let d = tempDir()
        let (A, B) = generatePair(g, sequences: 80, seed: 8, maxRows: 20)
        let hA = header(g), hB = header(g, role: .train)
        let a = try TraceReader(path: try write(d + "/a.rtrace", hA, A, chunkBytes: 3000))
        let total = A.reduce(0) { $0 + $1.rowCount + 1 }
        let budget = total / 20
        func plan(_ b: [[TraceRecord]], _ name: String) throws -> JoinPlan {
            let files = try b.enumerated().map { try write("\(d)/\(name)-\($0.offset).rtrace", hB, $0.element, chunkBytes: 3000) }
            return try JoinPlan(a: [a], b: try files.map { try TraceReader(path: $0) }, shard: .all, budgetRows: budget)
        }
        let shuffledPlan = try plan([shuffled(B, seed: 1)], "bs")
        for (name, p) in [("in order", try plan([B], "b")), ("reversed", try plan([B.reversed()], "br")),
                          ("shard order", try plan([Array(B[60...]), Array(B[30..<60]), Array(B[..<30])], "bp"))] {
            #expect(p.spilledRows + p.redecodedRows < total / 10, "\(name): spills \(p.spilledRows), re-decodes \(p.redecodedRows) of \(total) rows")
            #expect(p.peakWaitingRows <= 2 * budget, "\(name): \(p.peakWaitingRows) rows wait at once")
            #expect(p.steps.count == Set(p.steps.map { "\($0.reader)/\($0.run.records)" }).count, "\(name): a run is read twice")
        }
        // Records in a random order cost something: rows spilled, or chunks decoded twice.
        #expect(2 * shuffledPlan.spilledRows + shuffledPlan.redecodedRows > total / 10,
                "shuffled: spills \(shuffledPlan.spilledRows), re-decodes \(shuffledPlan.redecodedRows) of \(total) rows")
    }

    @Test("a uid twice on one side is an error naming the files, planned or streamed")
    func duplicateUid() throws {
        let d = tempDir()
        let (A, B) = generatePair(g, sequences: 6, seed: 9)
        let a0 = try write(d + "/a0.rtrace", header(g), Array(A[0..<4]))
        let a1 = try write(d + "/a1.rtrace", header(g), Array(A[3...]))
        let b = try write(d + "/b.rtrace", header(g), B)
        for stream in [false, true] {
            var o = DiffOptions()
            o.streamJoin = stream
            do {
                _ = try diffTraces(a: [a0, a1], b: [b], options: o)
                Issue.record("expected an error (stream \(stream))")
            } catch let e as TraceError {
                #expect(e.message.contains("seq-3") && e.message.contains("twice in side A"), "\(e)")
                if !stream { #expect(e.description.contains(a0) && e.description.contains(a1), "\(e)") }
            }
        }
    }

    @Test("records wait in memory up to the budget, the rest in an unlinked file; each comes back bit-exact")
    func pendingStoreSpills() throws {
        let big = ModelGeometry(numLayers: 2, numExperts: 300, topK: 3, layerMap: [0, 1])
        let (A, _) = generatePair(big, sequences: 12, seed: 10, maxRows: 20, dtype: .bf16)
        var recs = A
        recs[1].reward = -2.5; recs[2].group = "g"; recs[3].attributes = "{\"k\":1}"; recs[4].logits = nil
        var store = PendingStore<String>(budget: 3 * RecordSpill.memoryBytes(recs[0]), spillDirectory: tempDir())
        for (i, r) in recs.enumerated() {
            try store.put(r, key: r.uid, side: i % 2, priority: i)
            #expect(store.bytesInMemory <= store.budget)
        }
        #expect(store.spilledRecords >= recs.count - 3 && store.spilledBytes > 0)
        for (i, r) in recs.enumerated().reversed() {
            let got = try #require(try store.take(r.uid))
            #expect(got.side == i % 2 && got.record == r, "record \(r.uid) differs after waiting")
        }
        #expect(store.count == 0 && store.bytesInMemory == 0)
        // Records past the write buffer go to the file directly, and give their space back when read.
        var rng = TestRNG(12)
        let bigs = (0..<3).map { i in
            TraceRecord(uid: "big-\(i)", tokens: (0..<10_001).map { _ in Int32(rng.int(1000)) }, promptLength: 7, rowCount: 10_000, layers: 4, topK: 8,
                        expertIDs: (0..<320_000).map { _ in rng.int(9) == 0 ? TraceRecord.missing : UInt16(rng.int(128)) })
        }
        var wide = PendingStore<Int>(budget: 0, spillDirectory: tempDir())
        for (i, r) in bigs.enumerated() { try wide.put(r, key: i, side: 0, priority: i) }
        #expect(wide.spilledRecords == 3 && wide.spilledBytes > 3 * 320_000)
        for i in [1, 0, 2] { #expect(try wide.take(i)?.record == bigs[i]) }
        // Narrow ids (fewer than 255 experts, missing rows) round-trip as well.
        let (small, _) = generatePair(g, sequences: 3, seed: 11)
        var buf: [UInt8] = []
        for r in small + recs {
            _ = RecordSpill.encode(r, into: &buf)
            #expect(RecordSpill.decode(buf) == r)
        }
        #expect(throws: TraceError.self) { _ = try SpillFile(directory: "/nonexistent/dir") }
    }
}

