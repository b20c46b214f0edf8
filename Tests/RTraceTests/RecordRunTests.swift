import Foundation
import Testing
@testable import RTrace
import RTraceTestSupport

@Suite("RecordRunReader: runs of chunks read through the index, in any order, from several files")
struct RecordRunTests {
    /// Two files with small chunks: some records span chunks, some chunks hold several records.
    func files() throws -> (paths: [String], records: [[TraceRecord]]) {
        let h = fullHeader(experts: 40)
        let tag = UUID().uuidString  // tests run at once: each writes its own files
        var paths: [String] = [], recs: [[TraceRecord]] = []
        for (i, n) in [13, 7].enumerated() {
            let rs = makeRecords(h, count: n, seed: 40 + UInt64(i), maxRows: 120).map { r -> TraceRecord in
                var r = r
                r.uid = "f\(i)-" + r.uid
                return r
            }
            let path = tempPath("runs-\(tag)-\(i).rtrace")
            let w = try TraceWriter(path: path, header: h, options: WriterOptions(chunkBytes: 12_000))
            for r in rs { try w.append(r) }
            try w.close()
            paths.append(path)
            recs.append(rs)
        }
        return (paths, recs)
    }

    @Test("runs give every record once, hold its chunks, and share at most a boundary chunk", arguments: [1, 3])
    func runsPartitionTheFile(per: Int) throws {
        let (paths, recs) = try files()
        let ix = try #require(try TraceReader(path: paths[0]).index)
        let runs = ix.recordRuns(chunksPerRun: per)
        #expect(runs.first?.chunks.lowerBound == 0 && runs.last?.chunks.upperBound == ix.chunks.count)
        #expect(runs.first?.records.lowerBound == 0 && runs.last?.records.upperBound == recs[0].count)
        for (x, y) in zip(runs, runs.dropFirst()) {
            #expect(x.records.upperBound == y.records.lowerBound)
            #expect(y.chunks.lowerBound == x.chunks.upperBound || y.chunks.lowerBound == x.chunks.upperBound - 1)
        }
        #expect(runs.contains { $0.chunks.count > 1 }, "a record spans chunks: its run has several")
        #expect(runs.contains { $0.records.count > 1 }, "a chunk holds several records")
        for run in runs {
            #expect(run.chunks.lowerBound == ix.records[run.records.lowerBound].firstChunk)
            for o in run.records {
                let r = ix.records[o]
                #expect(run.chunks.contains(r.firstChunk) && r.firstChunk + r.chunkCount <= run.chunks.upperBound)
                #expect(r.firstChunk / per == ix.records[run.records.lowerBound].firstChunk / per)
            }
        }
    }

    @Test("runs read in file order or reversed decode each chunk once; a chunk two runs share is decoded again only when they are apart")
    func sharedChunksDecodeOnce() throws {
        let (paths, recs) = try files()
        let r = try TraceReader(path: paths[0])
        let runs = r.index!.recordRuns()
        #expect(zip(runs, runs.dropFirst()).contains { $0.chunks.upperBound - 1 == $1.chunks.lowerBound }, "records span run boundaries")
        let reader = try RecordRunReader(readers: [r], window: 2)
        var got: [TraceRecord] = []
        try reader.forEachRecord(runs.map { (0, $0) }) { got.append($2) }
        #expect(got == recs[0] && reader.chunksDecoded == r.index!.chunks.count)
        got = []
        try reader.forEachRecord(runs.reversed().map { (0, $0) }) { got.append($2) }
        #expect(Set(got.map(\.uid)) == Set(recs[0].map(\.uid)) && reader.chunksDecoded == r.index!.chunks.count)
        // Every other run, then the rest: neighbours are apart, shared chunks are decoded twice.
        let apart = runs.indices.filter { $0 % 2 == 0 } + runs.indices.filter { $0 % 2 == 1 }
        got = []
        try reader.forEachRecord(apart.map { (0, runs[$0]) }) { got.append($2) }
        #expect(Set(got.map(\.uid)) == Set(recs[0].map(\.uid)) && reader.chunksDecoded > r.index!.chunks.count)
    }

    @Test("runs of two files read in a shuffled, interleaved order give each file's records, bit-exact")
    func shuffledRunsAcrossFiles() throws {
        let (paths, recs) = try files()
        let readers = try paths.map { try TraceReader(path: $0) }
        var steps: [(reader: Int, run: RecordRun)] = []
        for (i, r) in readers.enumerated() { steps += r.index!.recordRuns(chunksPerRun: 1 + i).map { (i, $0) } }
        var rng = TestRNG(5)
        for i in stride(from: steps.count - 1, to: 0, by: -1) { steps.swapAt(i, rng.int(i + 1)) }
        let all = Dictionary(uniqueKeysWithValues: recs.joined().map { ($0.uid, $0) })
        for window in [1, 3, 16] {
            var got: [(Int, TraceRecord)] = []
            try RecordRunReader(readers: readers, window: window).forEachRecord(steps) { step, ordinal, r in
                #expect(recs[steps[step].reader][ordinal] == r)
                got.append((step, r))
            }
            #expect(got.count == all.count)
            #expect(Set(got.map(\.1.uid)).count == all.count)
            for (step, r) in got {
                #expect(r == all[r.uid], "record \(r.uid) differs read by run (window \(window))")
                #expect(steps[step].run.records.contains(recs[steps[step].reader].firstIndex { $0.uid == r.uid }!))
            }
        }
    }

    @Test("a damaged chunk or a file without index is a clear error naming the file")
    func errors() throws {
        let (paths, _) = try files()
        var bytes = try Array(Data(contentsOf: URL(fileURLWithPath: paths[1])))
        let r = try TraceReader(path: paths[1])
        let c = r.index!.chunks[1]
        bytes[c.offset + c.frameLength - 10] ^= 0xFF
        let bad = tempPath("runs-bad-\(UUID().uuidString).rtrace")
        try Data(bytes).write(to: URL(fileURLWithPath: bad))
        let rb = try TraceReader(path: bad)
        do {
            try RecordRunReader(readers: [rb]).forEachRecord(rb.index!.recordRuns().map { (0, $0) }) { _, _, _ in }
            Issue.record("expected an error")
        } catch let e as TraceError {
            #expect(e.file == bad && e.offset != nil)
        }
        let pipe = try TraceReader(bytes: Array(try Data(contentsOf: URL(fileURLWithPath: paths[0]))), name: "pipe", seekable: false)
        #expect(throws: TraceError.self) { try RecordRunReader(readers: [pipe]) }
    }
}
