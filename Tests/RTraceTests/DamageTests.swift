import RTraceTestSupport
import Foundation
import Testing
@testable import RTrace

/// Writes `bytes` to a temp file and returns its path.
func writeTemp(_ name: String, _ bytes: [UInt8]) -> String {
    let p = tempPath(name)
    _ = FileManager.default.createFile(atPath: p, contents: Data(bytes))
    return p
}

@Suite struct DamageTests {
    static let sample = "\(repoRoot)/samples/synthetic-E300-dense.rtrace"

    /// Truncating at every byte offset never crashes, is always reported, and salvage recovers
    /// exactly the records whose chunks are complete.
    @Test func truncationAtEveryOffset() throws {
        let bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: Self.sample)))
        let full = try TraceReader(path: Self.sample)
        let ix = try #require(full.index)
        let all = try full.readAll()
        let out = tempPath("salvaged.rtrace")
        for cut in 0..<bytes.count {
            let p = writeTemp("cut.rtrace", Array(bytes[0..<cut]))
            let report = try TraceChecker.check(path: p, salvage: cut > full.dataStart ? out : nil)
            #expect(!report.clean, "truncation at \(cut) went unreported")
            #expect(throws: TraceError.self) { try TraceReader(path: p).readAll() }
            guard cut > full.dataStart else { continue }
            // Records whose every chunk ends before the cut are recovered, whole.
            let complete = ix.chunks.filter { $0.offset + $0.frameLength <= cut }.count
            let expected = ix.records.filter { $0.firstChunk + $0.chunkCount <= complete }.count
            let salvaged = try TraceReader(path: out).readAll()
            #expect(salvaged.count == expected, "cut at \(cut)")
            #expect(Array(all.prefix(salvaged.count)) == salvaged)
        }
    }

    /// Every single flipped bit is detected (each byte gets one flipped bit, rotating its position).
    @Test func everyBitFlipIsDetected() throws {
        let bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: Self.sample)))
        for i in 0..<bytes.count {
            var b = bytes
            b[i] ^= UInt8(1) << UInt8(i % 8)
            let p = writeTemp("flip.rtrace", b)
            let report = try TraceChecker.check(path: p)
            #expect(!report.clean, "bit \(i % 8) of byte \(i) flipped undetected")
        }
    }

    /// A damaged middle chunk loses only the records that touch it.
    @Test func salvageSkipsADamagedChunk() throws {
        let h = fullHeader()
        let recs = makeRecords(h, count: 20, seed: 11, maxRows: 40)
        let path = tempPath("mid.rtrace")
        let w = try TraceWriter(path: path, header: h, options: WriterOptions(chunkBytes: 6000))
        for r in recs { try w.append(r) }
        try w.close()
        let ix = w.index
        #expect(ix.chunks.count >= 4)
        var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
        let victim = ix.chunks[2]
        bytes[victim.offset + victim.frameLength - 3] ^= 0x40
        let bad = writeTemp("mid-bad.rtrace", bytes)
        let out = tempPath("mid-salvaged.rtrace")
        let report = try TraceChecker.check(path: bad, salvage: out)
        #expect(!report.clean)
        #expect(report.badChunks == 1)
        let lost = Set(ix.records.enumerated().filter { $0.element.firstChunk <= 2 && $0.element.firstChunk + $0.element.chunkCount > 2 }.map(\.offset))
        let salvaged = try TraceReader(path: out).readAll()
        #expect(salvaged.map(\.uid) == recs.enumerated().filter { !lost.contains($0.offset) }.map(\.element.uid))
        #expect(report.lostRecords == lost.count, "\(report.issues)")
    }

    /// Invariant violations are reported with the record and position.
    @Test func checkReportsDuplicateAndOutOfRangeExperts() throws {
        let h = TraceHeader(engine: EngineInfo(name: "t", role: .rollout),
                            model: ModelGeometry(numLayers: 2, numExperts: 8, topK: 2))
        let path = tempPath("bad-ids.rtrace")
        let w = try TraceWriter(path: path, header: h)
        try w.append(TraceRecord(uid: "dup", rowCount: 2, layers: 2, topK: 2, expertIDs: [1, 2, 3, 3, 4, 5, 6, 7]))
        try w.append(TraceRecord(uid: "range", rowCount: 1, layers: 2, topK: 2, expertIDs: [1, 9, 0, 1]))
        try w.close()
        let report = try TraceChecker.check(path: path)
        #expect(!report.clean)
        #expect(report.issues.contains { $0.record == "dup" && $0.message.contains("expert 3 chosen twice") && $0.message.contains("layer 1") })
        #expect(report.issues.contains { $0.record == "range" && $0.message.contains("expert id 9 is not below num_experts 8") })
    }

    /// Other formats and empty input get errors that say what the input is.
    @Test func otherFormatsAreNamed() throws {
        let cases: [([UInt8], String)] = [
            ([], "empty"), (Array("PK\u{3}\u{4}rest of a zip".utf8), "zip"), ([0x1F, 0x8B, 8, 0, 0, 0, 0, 0], "gzip"),
            (Array("hello, world, this is text\n".utf8), "text"),
        ]
        for (bytes, word) in cases {
            let p = writeTemp("other.bin", bytes)
            let result = Result { () throws(TraceError) in try TraceReader(path: p) }
            guard case .failure(let e) = result else { Issue.record("\(word) input was accepted"); continue }
            #expect(e.description.contains(word), "\(e.description)")
            #expect(e.file == p)
        }
        var future = [UInt8](try Data(contentsOf: URL(fileURLWithPath: Self.sample)))
        future[8] = 2
        let futurePath = writeTemp("future.rtrace", future)
        let result = Result { () throws(TraceError) in try TraceReader(path: futurePath) }
        guard case .failure(let e) = result else { Issue.record("version 2 accepted"); return }
        #expect(e.kind == .unsupportedVersion)
        #expect(e.offset == 8)
    }

    /// A killed writer leaves every complete chunk recoverable (flushed chunks survive).
    @Test func writerWithoutCloseKeepsFlushedChunks() throws {
        let h = fullHeader()
        let recs = makeRecords(h, count: 9, seed: 5, maxRows: 30)
        let path = tempPath("unclosed.rtrace")
        var w: TraceWriter? = try TraceWriter(path: path, header: h, options: WriterOptions(chunkBytes: 5000))
        for r in recs { try w!.append(r) }
        let flushed = w!.index.records.count
        w = nil  // no close: as if killed
        let r = try TraceReader(path: path)
        #expect(!r.isComplete)
        let out = tempPath("unclosed-salvaged.rtrace")
        let report = try TraceChecker.check(path: path, salvage: out)
        #expect(report.records >= flushed - 1)
        let salvaged = try TraceReader(path: out).readAll()
        #expect(salvaged == Array(recs.prefix(salvaged.count)))
    }
}
