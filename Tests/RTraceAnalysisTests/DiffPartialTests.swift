import Foundation
import RTrace
import RTraceTestSupport
import Testing
@testable import RTraceAnalysis

/// A partial through its JSON text and back, as `rtrace diff --partial` and `rtrace merge` pass it on.
func viaJSON(_ p: DiffPartial) throws -> DiffPartial {
    try JSONDecoder().decode(DiffPartial.self, from: Data(encodeJSON(p).utf8))
}

/// `(report JSON without a/b, CSV, table)` of a report: what a merge must reproduce.
func outputs(_ r: DiffReport) -> (String, String, String) {
    (encodeJSON(sansFiles(r.result)), r.csv, r.text)
}

@Suite("Diff partials: exact, mergeable, and merged to the single-run report")
struct DiffPartialTests {
    /// The real Qwen3-MoE samples (rollout vs mixed-precision training pass) as traces, in a directory.
    func samples(_ d: String) throws -> (a: [TraceRecord], b: [TraceRecord], ha: TraceHeader, hb: TraceHeader, pa: String, pb: String) {
        let ra = try TraceReader(path: samplesDir + "/rollout.rtrace"), rb = try TraceReader(path: samplesDir + "/train_mixed.rtrace")
        return (try ra.readAll(), try rb.readAll(), ra.header, rb.header, samplesDir + "/rollout.rtrace", samplesDir + "/train_mixed.rtrace")
    }

    @Test("uid shards of shuffled, unevenly sharded copies of the samples merge, in any order, to exactly the single-run report")
    func uidShardsOfSamples() throws {
        let d = tempDir()
        let s = try samples(d)
        let opt = DiffOptions(buckets: 5, top: 4)
        let single = try diffTraces(a: [s.pa], b: [s.pb], options: opt)
        // Copies: A shuffled in files of 2, 7 and 3 records; B shuffled in files of 9 and 3.
        let fa = try shards(shuffled(s.a, seed: 1), [2, 7], s.ha, d, "a", chunkBytes: 1 << 15)
        let fb = try shards(shuffled(s.b, seed: 2), [9], s.hb, d, "b", chunkBytes: 1 << 15)
        for n in [1, 3, 5] {
            var parts: [DiffPartial] = []
            for i in 0..<n {
                var o = opt
                o.uidShard = try UIDShard(index: i, count: n)
                parts.append(try viaJSON(try diffPartial(a: fa, b: fb, options: o)))
            }
            #expect(parts.map(\.sequencesMatched).reduce(0, +) == single.partial.sequencesMatched)
            for order in [Array(0..<n), Array((0..<n).reversed())] {
                var m = parts[order[0]]
                for i in order.dropFirst() { try m.merge(parts[i]) }
                try m.checkComplete()
                let rep = DiffReport(partial: try viaJSON(m))
                #expect(outputs(rep) == outputs(single), "\(n) shards merged in order \(order)")
                #expect(rep.result.a == fa && rep.result.b == fb)
                // Counts identical; floats identical to the bit (exact sums), so well within 1e-12.
                #expect(rep.result.perLayer == single.result.perLayer && rep.result.policy == single.result.policy)
                // Including the standard deviations, which need the exact sums of squares to merge.
                let th = try #require(rep.result.policy?.thresholds.first)
                #expect(th.rolloutIsToken.rolloutIsStd ?? 0 > 0 && th.rolloutIsSequence.rolloutIsSeqStd ?? 0 > 0
                        && th.rolloutRs.options.allSatisfy { ($0.std ?? 0) > 0 && ($0.seqStd ?? 0) > 0 })
            }
        }
        // The same sample files split by uid shard give the same files in the merged report.
        var p0 = opt, p1 = opt
        p0.uidShard = try UIDShard(parsing: "0/2"); p1.uidShard = try UIDShard(parsing: "1/2")
        var m = try diffPartial(a: [s.pa], b: [s.pb], options: p0)
        try m.merge(try diffPartial(a: [s.pa], b: [s.pb], options: p1))
        #expect(encodeJSON(DiffReport(partial: m).result) == encodeJSON(single.result))
    }

    @Test("parts made of files co-partitioned by uid (as a Ray job writes them) merge to the single-run report")
    func coPartitionedFiles() throws {
        let d = tempDir()
        let s = try samples(d)
        let opt = DiffOptions(buckets: 4, top: 3)
        let single = try diffTraces(a: [s.pa], b: [s.pb], options: opt)
        let n = 3
        var merged: DiffPartial? = nil
        for i in 0..<n {
            let shard = try UIDShard(index: i, count: n)
            let pa = try write("\(d)/a-part\(i).rtrace", s.ha, shuffled(s.a.filter { shard.contains($0.uid) }, seed: UInt64(i)))
            let pb = try write("\(d)/b-part\(i).rtrace", s.hb, s.b.filter { shard.contains($0.uid) }.reversed())
            let p = try viaJSON(try diffPartial(a: [pa], b: [pb], options: opt))
            if merged == nil { merged = p } else { try merged!.merge(p) }
        }
        try merged!.checkComplete()
        #expect(outputs(DiffReport(partial: merged!)) == outputs(single))
        // The part is CRC-32 of the uid, as Python's zlib.crc32(uid.encode()) computes it.
        #expect(TraceRecord.uidHash("123456789") == 0xCBF4_3926)  // CRC-32's check value
        for u in ["s3", "seq-000017", "ünïcødé-uid", String(repeating: "x", count: 1000)] { #expect(TraceRecord.uidHash(u) == crcReference(u)) }
    }

    @Test("the top list of merged partials is the single run's: each part keeps its N best, the order is total")
    func topMerges() throws {
        let d = tempDir()
        let g = ModelGeometry(numLayers: 3, numExperts: 16, topK: 2)
        let (A, B) = generatePair(g, sequences: 50, seed: 12, maxRows: 12, flip: 0.3)
        let pa = try write(d + "/a.rtrace", header(g), A), pb = try write(d + "/b.rtrace", header(g), B)
        let single = try diffTraces(a: [pa], b: [pb], options: DiffOptions(top: 6))
        #expect(single.result.top.count == 6)
        var m: DiffPartial? = nil
        for i in 0..<7 {
            var o = DiffOptions(top: 6)
            o.uidShard = try UIDShard(index: i, count: 7)
            let p = try diffPartial(a: [pa], b: [pb], options: o)
            #expect(p.acc.top.count <= 6)
            if m == nil { m = p } else { try m!.merge(p) }
        }
        #expect(DiffReport(partial: m!).result.top == single.result.top)
        var fewer = m!
        fewer.top = 2
        #expect(DiffReport(partial: fewer).result.top == Array(single.result.top.prefix(2)))
    }

    @Test("partials that are not parts of one comparison are refused, naming why")
    func refusals() throws {
        let d = tempDir()
        let g = ModelGeometry(numLayers: 3, numExperts: 16, topK: 2)
        let (A, B) = generatePair(g, sequences: 10, seed: 13)
        let pa = try write(d + "/a.rtrace", header(g), A), pb = try write(d + "/b.rtrace", header(g), B)
        func part(_ s: String?, buckets: Int = 4, a: String? = nil) throws -> DiffPartial {
            var o = DiffOptions(buckets: buckets)
            if let s { o.uidShard = try UIDShard(parsing: s) }
            return try diffPartial(a: [a ?? pa], b: [pb], options: o)
        }
        func refused(_ x: DiffPartial, _ y: DiffPartial, _ words: String) {
            var m = x
            do {
                try m.merge(y)
                Issue.record("merge accepted: \(words)")
            } catch {
                #expect(error.message.contains(words), "\(error)")
            }
        }
        refused(try part("1/3"), try part("1/3"), "uid shard 1/3")
        refused(try part("0/2", buckets: 4), try part("1/2", buckets: 5), "--buckets")
        let pa2 = try write(d + "/a2.rtrace", header(g), A)
        refused(try part(nil), try part(nil, a: pa2), "\(pb) is on side B of two partials")
        var m = try part("0/3")
        try m.merge(try part("2/3"))
        #expect(throws: TraceError.self) { try m.checkComplete() }
        do { try m.checkComplete() } catch { #expect(error.message.contains("uid shards 1 of 3")) }
        let other = ModelGeometry(numLayers: 3, numExperts: 16, topK: 2, layerMap: [0, 2])
        let (A2, B2) = generatePair(other, sequences: 3, seed: 14)
        let po = try diffPartial(a: [try write(d + "/o.rtrace", header(other), A2)], b: [try write(d + "/ob.rtrace", header(other), B2)])
        refused(try part(nil), po, "layer_map")
        // A shard may hold no sequence: its partial is empty, not an error; the report of only it is.
        var empty: DiffPartial? = nil
        for i in 0..<64 where empty == nil {
            let p = try part("\(i)/64")
            if p.sequencesMatched == 0 { empty = p }
        }
        #expect(throws: TraceError.self) { try empty!.checkMatched() }
    }

    @Test("a damaged or foreign partial file is an error naming the file and the field")
    func badFiles() throws {
        let d = tempDir()
        let g = ModelGeometry(numLayers: 3, numExperts: 16, topK: 2)
        let (A, B) = generatePair(g, sequences: 5, seed: 15)
        let good = try diffPartial(a: [try write(d + "/a.rtrace", header(g), A)], b: [try write(d + "/b.rtrace", header(g), B)])
        let text = encodeJSON(good)
        let cases: [(String, String, String)] = [
            ("format", text.replacingOccurrences(of: "\"rtrace-diff-partial\"", with: "\"rtrace-stats\""), "format"),
            ("version", text.replacingOccurrences(of: "\"version\" : 1", with: "\"version\" : 99"), "version 99"),
            ("intersections", text.replacingOccurrences(of: "\"intersections\" : [", with: "\"intersections\" : [7,"), "intersections has"),
            ("sum", text.replacingOccurrences(of: "\"sum\" : [", with: "\"sum\" : [\"1 2\","), "router_kl.sum"),
            ("missing", text.replacingOccurrences(of: "\"order_flips\"", with: "\"order_flipz\""), "order_flips is missing"),
            ("text", "not json", "not a diff partial"),
        ]
        for (name, body, words) in cases {
            #expect(body != text || name == "text", "\(name): the edit did not apply")
            let p = d + "/\(name).json"
            try body.write(toFile: p, atomically: true, encoding: .utf8)
            do {
                _ = try DiffPartial.read(path: p)
                Issue.record("\(name): accepted")
            } catch {
                #expect(error.file == p && error.message.contains(words), "\(name): \(error)")
            }
        }
        do {
            _ = try DiffPartial.read(path: d + "/absent.json")
            Issue.record("a missing file was read")
        } catch {
            #expect(error.kind == .io && error.file == d + "/absent.json")
        }
        #expect(try DiffPartial.read(path: d + "/good.json", writing: text) == good)
    }
}

extension DiffPartial {
    /// Writes `text` to `path`, then reads it as a partial.
    static func read(path: String, writing text: String) throws -> DiffPartial {
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        return try read(path: path)
    }
}

/// CRC-32 (ISO-HDLC, zlib's), bit by bit: an independent check of ``TraceRecord/uidHash(_:)``.
func crcReference(_ s: String) -> UInt32 {
    var c: UInt32 = 0xFFFF_FFFF
    for b in s.utf8 {
        c ^= UInt32(b)
        for _ in 0..<8 { c = (c >> 1) ^ (c & 1 == 1 ? 0xEDB8_8320 : 0) }
    }
    return ~c
}
