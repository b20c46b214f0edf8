import Foundation
import RTrace
@testable import RTraceAnalysis
import Testing

/// `rtrace split`: every record in exactly the part of its uid's CRC-32, unchanged but for the header's columns.
@Suite struct SplitTests {
    let path = samplesDir + "/rollout.rtrace"

    func records(_ p: String) throws -> [TraceRecord] { try TraceReader(path: p).readAll() }

    @Test("each record lands in part crc32(uid) % N, every part is written, the parts hold the file")
    func partsByUID() throws {
        let d = tempDir()
        let all = try records(path)
        for n in [1, 3, 50] {
            let s = try splitTrace(path, count: n, prefix: d + "/p\(n)", raw: n == 3)
            #expect(s.parts.count == n && s.records == all.count && s.rows == all.reduce(0) { $0 + $1.rowCount })
            var seen: [TraceRecord] = []
            for part in s.parts {
                let rs = try records(part.file)
                #expect(rs.count == part.records && part.file == d + "/p\(n).\(part.index).rtrace")
                for r in rs { #expect(Int(TraceRecord.uidHash(r.uid) % UInt32(n)) == part.index) }
                seen += rs
            }
            #expect(seen.sorted { $0.uid < $1.uid } == all.sorted { $0.uid < $1.uid })
            #expect(s.parts.contains { $0.records == 0 } == (n == 50))
        }
    }

    @Test("chunk ranges that tile the file split all of it once; a header drops and converts columns")
    func rangesAndHeader() throws {
        let d = tempDir()
        let all = try records(path)
        let n = try #require(TraceReader(path: path).index).chunks.count
        var got: [TraceRecord] = []
        for (a, b) in [(0, 4), (4, 5), (5, n)] {
            let s = try splitTrace(path, count: 2, chunks: "\(a):\(b)", prefix: d + "/r\(a)")
            #expect(s.chunkRange == ChunkRange(file: path, first: a, end: b, chunks: n))
            for p in s.parts { got += try records(p.file) }
        }
        #expect(got.sorted { $0.uid < $1.uid } == all.sorted { $0.uid < $1.uid })

        var h = try TraceReader(path: path).header
        h.columns.routerLogits = nil
        h.columns.topkWeights = .f32
        h.columns.logprobs = false
        let s = try splitTrace(path, count: 1, header: h, prefix: d + "/h")
        let rs = try records(s.parts[0].file)
        #expect(try TraceReader(path: s.parts[0].file).header.columns == h.columns)
        for (r, o) in zip(rs, all) {
            #expect(r.uid == o.uid && r.expertIDs == o.expertIDs && r.tokens == o.tokens)
            #expect(r.logits == nil && r.logprobs.isEmpty && r.weights?.dtype == .f32)
            #expect(r.weights?.floats == o.weights?.floats)   // f16 → f32 is exact
        }
    }

    @Test("what split refuses, and a failed split leaves no part behind")
    func refusals() throws {
        let d = tempDir()
        var h = try TraceReader(path: path).header
        h.model.numExperts += 1
        #expect(throws: TraceError.self) { try splitTrace(path, count: 2, header: h, prefix: d + "/g") }
        h = try TraceReader(path: samplesDir + "/train_r3.rtrace").header
        h.columns.routerLogits = nil
        h.columns.topkWeights = nil
        let noLogits = try splitTrace(samplesDir + "/train_r3.rtrace", count: 1, header: h, prefix: d + "/nl")
        var more = h
        more.columns.routerLogits = .f32
        do { _ = try splitTrace(noLogits.parts[0].file, count: 2, header: more, prefix: d + "/c"); Issue.record("accepted") } catch {
            #expect("\(error)".contains("router_logits"), "\(error)")
        }
        #expect(throws: TraceError.self) { try splitTrace(path, count: 2, chunks: "3:99", prefix: d + "/x") }
        // Damage inside a chunk: an error naming the file, and no part file left.
        var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
        let ix = try #require(TraceReader(path: path).index)
        let c = ix.chunks[ix.chunks.count / 2]
        bytes[c.offset + c.frameLength - 5] ^= 0x55
        let bad = d + "/bad.rtrace"
        try Data(bytes).write(to: URL(fileURLWithPath: bad))
        do { _ = try splitTrace(bad, count: 3, prefix: d + "/bad"); Issue.record("damage accepted") } catch {
            #expect("\(error)".contains("bad.rtrace"), "\(error)")
        }
        #expect(try FileManager.default.contentsOfDirectory(atPath: d).filter { $0.hasPrefix("bad.") && $0 != "bad.rtrace" }.isEmpty)
    }
}
