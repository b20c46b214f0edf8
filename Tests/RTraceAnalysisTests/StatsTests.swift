import Foundation
import RTrace
import Testing
@testable import RTraceAnalysis

/// MoE layers at decoder indices 0 and 2 of 3, 4 experts, top-2.
let statsGeometry = ModelGeometry(numLayers: 3, numExperts: 4, topK: 2, layerMap: [0, 2])

func statsTiny() -> [TraceRecord] {
    // rec1 rows: L0 {0,1} {0,2} {0,1};  L2 {1,2} missing {1,3}.   rec2: L0 {0,3}; L2 {1,2}
    let ids1: [UInt16] = [0, 1, 1, 2, 0, 2, M, M, 0, 1, 1, 3]
    let ids2: [UInt16] = [0, 3, 1, 2]
    // weights per row (same in both layers): [0.7,0.3] [0.2,0.8] [0.6,0.4]; rec2 [0.9,0.1]
    let w1: [Float] = [0.7, 0.3, 0.7, 0.3, 0.2, 0.8, 0.2, 0.8, 0.6, 0.4, 0.6, 0.4]
    let w2: [Float] = [0.9, 0.1, 0.9, 0.1]
    return [
        TraceRecord(uid: "r1", tokens: [1, 2, 3, 4], promptLength: 1, rowCount: 3, layers: 2, topK: 2, expertIDs: ids1,
                    weights: FloatArray(dtype: .f32, values: w1), logits: FloatArray(dtype: .f32, zeros: 3 * 2 * 4)),
        TraceRecord(uid: "r2", tokens: [1, 2], promptLength: 1, rowCount: 1, layers: 2, topK: 2, expertIDs: ids2,
                    weights: FloatArray(dtype: .f32, values: w2), logits: FloatArray(dtype: .f32, zeros: 2 * 4)),
    ]
}

@Test func statsByHand() throws {
    let d = tempDir()
    let p = try write(d + "/s.rtrace", header(statsGeometry, logprobs: false), statsTiny())
    let s = try statsTraces([p], options: StatsOptions(capacityFactor: 1, batchTokens: 2, ep: 2))
    #expect(s.layers[0].counts == [4, 2, 1, 1] && s.layers[1].counts == [0, 3, 2, 1])
    #expect(s.layers[0].tokens == 4 && s.layers[1].tokens == 3)
    let l0 = s.derived(0), l2 = s.derived(1)
    #expect(l0.layer == 0 && l2.layer == 2)
    #expect(close(l0.maxOverMean, 2) && close(l2.maxOverMean, 2))
    #expect(close(l0.cv, 1.5.squareRoot() / 2))
    #expect(l0.dead == 0 && l2.dead == 1)
    #expect(close(l0.normEntropy, 0.875) && close(l0.effectiveExperts, pow(2, 1.75)))
    #expect(l0.halfLoadExperts == 1 && l2.halfLoadExperts == 1)
    #expect(close(l0.meanTop1Weight, 0.75, 1e-6) && close(l2.meanTop1Weight, 2.2 / 3, 1e-6))
    #expect(close(l0.routerEntropy, log(4.0), 1e-12) && close(l0.auxLoss, 1, 1e-12))
    // capacity: batches of 2 rows; L0 drops 1 + 1 of 8, L2 drops 2 + 1 of 6
    #expect(close(l0.dropRate, 0.25) && close(l2.dropRate, 0.5))
    #expect(close(s.report.dropRate, 5.0 / 14))
    let ep = s.ep(0, ranks: 2)
    #expect(ep.contiguous == [6, 2] && close(ep.contiguousMaxOverMean, 1.5))
    #expect(ep.balanced == [5, 3] && ep.expertToRank == [0, 1, 1, 0] && close(ep.balancedMaxOverMean, 1.25))
    #expect(s.text.contains("balanced expert→rank map"))
    #expect(s.report.layers.map(\.layer) == [0, 2])
    #expect(try checkThresholds(jsonTree(s.report), parseThresholds(["dead_experts=0"])).count == 1)
}

@Test func statsMatchReferenceAndMergeExactly() throws {
    let d = tempDir()
    let g = ModelGeometry(numLayers: 6, numExperts: 16, topK: 4, layerMap: [1, 3, 4, 5])
    let (A, _) = generatePair(g, sequences: 30, seed: 5, dtype: .bf16)
    let h = header(g, weights: .bf16, logits: .bf16)
    let all = try write(d + "/all.rtrace", h, A)
    let shards = [0..<7, 7..<20, 20..<30].enumerated().map { i, r in d + "/s\(i).rtrace" }
    for (i, r) in [0..<7, 7..<20, 20..<30].enumerated() { try write(shards[i], h, Array(A[r])) }
    let opts = StatsOptions(capacityFactor: 1.25, batchTokens: 1, ep: 4)
    let union = try statsTraces([all], options: opts)
    // Reference: counts, top-1 weights, entropy and aux loss computed directly.
    let L = g.moeLayers, k = g.topK, E = g.numExperts
    for l in 0..<L {
        var counts = [Int](repeating: 0, count: E), t = 0, w1 = 0.0, ent = 0.0
        var P = [Double](repeating: 0, count: E)
        for r in A {
            let w = r.weights!.floats, lg = r.logits!.floats
            for row in 0..<r.rowCount where r.isPresent(row: row, layer: l) {
                t += 1
                for e in r.experts(row: row, layer: l) { counts[Int(e)] += 1 }
                w1 += Double((0..<k).map { w[(row * L + l) * k + $0] }.max()!)
                let x = (0..<E).map { Double(lg[(row * L + l) * E + $0]) }
                let z = x.map { exp($0) }.reduce(0, +)
                let p = x.map { exp($0) / z }
                ent -= p.reduce(0.0) { $0 + $1 * log($1) }
                for e in 0..<E { P[e] += p[e] }
            }
        }
        let s = union.derived(l)
        #expect(union.layers[l].counts == counts && s.tokens == t)
        #expect(close(s.meanTop1Weight, w1 / Double(t)))
        #expect(close(s.routerEntropy, ent / Double(t)))
        let A = Double(t * k)
        #expect(close(s.auxLoss, Double(E) * (0..<E).reduce(0.0) { $0 + Double(counts[$1]) / A * P[$1] / Double(t) }))
        let f = counts.map { Double($0) / A }
        let H = -f.reduce(0.0) { $0 + ($1 > 0 ? $1 * log($1) : 0) }
        #expect(close(s.normEntropy, H / log(Double(E))) && close(s.effectiveExperts, exp(H)))
        // capacity with one-row batches: capacity floor(1.25·1·4/16) = 0, every assignment dropped
        #expect(s.dropRate == 1)
    }
    // Partials per shard, through JSON text, merge to exactly the union.
    var jsons: [String] = []
    for (i, sh) in shards.enumerated() {
        let p = try statsTraces([sh], options: opts)
        let path = d + "/p\(i).json"
        try encodeJSON(p.report).write(toFile: path, atomically: true, encoding: .utf8)
        jsons.append(path)
    }
    let merged = try mergeStats(jsons)
    #expect(merged == union)
    #expect(encodeJSON(merged.report.layers) == encodeJSON(union.report.layers))
    // Several files at once give the union too.
    #expect(try statsTraces(shards, options: opts) == union)
    // Different capacity options refuse to merge.
    let other = d + "/other.json"
    try encodeJSON(try statsTraces([shards[0]], options: StatsOptions(capacityFactor: 2)).report).write(toFile: other, atomically: true, encoding: .utf8)
    #expect(throws: TraceError.self) { try mergeStats([jsons[0], other]) }
}

/// Files of which only some carry router logits: the union's statistics leave logits out (no crash), and
/// the counts equal those of the same records written without logits.
/// Two traces of the tiny records: the first record with router logits, the second without.
func filesWithAndWithoutLogits(_ d: String) throws -> (with: String, without: String, noLogits: [TraceRecord]) {
    let recs = statsTiny()
    let withLogits = try write(d + "/with.rtrace", header(statsGeometry, logprobs: false), [recs[0]])
    let noLogits = recs.map { r in var r = r; r.logits = nil; return r }
    let without = try write(d + "/without.rtrace", header(statsGeometry, logits: nil, logprobs: false), [noLogits[1]])
    return (withLogits, without, noLogits)
}

@Test func statsOverFilesWithAndWithoutLogits() throws {
    let d = tempDir()
    let (withLogits, without, noLogits) = try filesWithAndWithoutLogits(d)
    let mixed = try statsTraces([withLogits, without], options: StatsOptions())
    let plain = try statsTraces([try write(d + "/plain.rtrace", header(statsGeometry, logits: nil, logprobs: false), noLogits)],
                                options: StatsOptions())
    #expect(!mixed.hasLogits)
    #expect(mixed.layers == plain.layers)
    #expect(mixed.records == 2 && mixed.rows == 4)
}

@Test func mergedPartialsDropLogitsLikeTheUnion() throws {
    let d = tempDir()
    let (withLogits, without, _) = try filesWithAndWithoutLogits(d)
    let union = try statsTraces([withLogits, without], options: StatsOptions())
    var jsons: [String] = []
    for (i, f) in [withLogits, without].enumerated() {
        let path = d + "/p\(i).json"
        try encodeJSON(try statsTraces([f], options: StatsOptions()).report).write(toFile: path, atomically: true, encoding: .utf8)
        jsons.append(path)
    }
    let merged = try mergeStats(jsons)
    #expect(!merged.hasLogits)
    #expect(merged == union)
    #expect(merged.derived(0).auxLoss == nil && merged.derived(0).routerEntropy == nil)
    #expect(encodeJSON(merged.report.layers) == encodeJSON(union.report.layers))
}

@Test func statsReportRoundTripsAndNamesWhatIsWrong() throws {
    let d = tempDir()
    let (withLogits, without, _) = try filesWithAndWithoutLogits(d)
    for opts in [StatsOptions(), StatsOptions(capacityFactor: 1.5, batchTokens: 3, ep: 2)] {
        let p = try statsTraces([withLogits, without], options: opts)
        let path = d + "/r.json"
        try encodeJSON(p.report).write(toFile: path, atomically: true, encoding: .utf8)
        let back = try StatsPartial(report: StatsReport.read(path: path), name: path)
        #expect(back == p && back.files == p.files && back.options.capacityFactor == opts.capacityFactor)
        #expect(encodeJSON(back.report) == encodeJSON(p.report))
    }
    func error(_ json: String) -> String {
        let path = d + "/bad.json"
        try? json.write(toFile: path, atomically: true, encoding: .utf8)
        do { _ = try mergeStats([path]); return "no error" } catch { return "\(error)" }
    }
    #expect(error(#"{"format": "rtrace-stats", "version": 1}"#).contains("files is missing"))
    #expect(error("[1]").contains("bad.json"))
    let good = encodeJSON(try statsTraces([withLogits], options: StatsOptions()).report)
    var tree = try #require(try JSONSerialization.jsonObject(with: Data(good.utf8)) as? [String: Any])
    var partial = tree["partial"] as! [String: Any], layers = partial["layers"] as! [[String: Any]]
    layers[1]["counts"] = [1, 2]
    partial["layers"] = layers; tree["partial"] = partial
    let text = String(decoding: try JSONSerialization.data(withJSONObject: tree), as: UTF8.self)
    #expect(error(text).contains("partial.layers[1].counts has 2 experts"), "\(error(text))")
}

@Test func chunkRangesMergeToTheWholeFileAndNothingTwice() throws {
    let d = tempDir()
    let path = samplesDir + "/rollout.rtrace"
    let n = try #require(TraceReader(path: path).index).chunks.count
    let whole = try statsTraces([path])
    func part(_ a: Int, _ b: Int) throws -> String {
        let out = d + "/p\(a)-\(b).json"
        try encodeJSON(try statsTraces([path], chunks: "\(a):\(b)").report).write(toFile: out, atomically: true, encoding: .utf8)
        return out
    }
    for cuts in [[0, n], [0, 1, n], [0, 3, 4, 9, n], Array(0...n)] {
        let parts = try zip(cuts, cuts.dropFirst()).map { try part($0, $1) }
        for order in [parts, parts.reversed()] {
            let m = try mergeStats(order)
            #expect(m == whole && m.files == whole.files && m.chunkRanges.isEmpty, "cuts \(cuts)")
            #expect(encodeJSON(m.report) == encodeJSON(whole.report), "cuts \(cuts)")
        }
        let counts = try parts.map { try StatsReport.read(path: $0).records }
        #expect(counts.reduce(0, +) == whole.records)
    }
    // Parts that do not cover the file stay parts; a merge of merges completes them.
    let left = try mergeStats([try part(0, 3), try part(5, n)])
    #expect(left.files.isEmpty && left.chunkRanges.map { [$0.first, $0.end] } == [[0, 3], [5, n]])
    let leftPath = d + "/left.json"
    try encodeJSON(left.report).write(toFile: leftPath, atomically: true, encoding: .utf8)
    #expect(try mergeStats([leftPath, try part(3, 5)]) == whole)
    // Nothing counts twice: overlapping parts, a part with its whole file, a file twice.
    let wholePath = d + "/whole.json"
    try encodeJSON(whole.report).write(toFile: wholePath, atomically: true, encoding: .utf8)
    for (paths, says) in [([try part(0, 4), try part(3, n)], "chunks 3:4 counted twice"),
                          ([try part(0, 4), wholePath], "counted twice"), ([wholePath, wholePath], "counted twice")] {
        #expect(throws: TraceError.self) { try mergeStats(paths) }
        do { _ = try mergeStats(paths) } catch { #expect("\(error)".contains(says), "\(error)") }
    }
    // What --chunks refuses.
    for (chunks, says) in [("0:\(n + 1)", "give 0 ≤ FIRST < END ≤ \(n)"), ("2:2", "give 0 ≤ FIRST"), ("x", "FIRST:END")] {
        do { _ = try statsTraces([path], chunks: chunks); Issue.record("--chunks \(chunks) accepted") } catch {
            #expect("\(error)".contains(says), "\(error)")
        }
    }
    #expect(throws: TraceError.self) { try statsTraces([path, path], chunks: "0:1") }
    #expect(throws: TraceError.self) { try statsTraces([path], options: StatsOptions(capacityFactor: 1), chunks: "0:1") }
}
