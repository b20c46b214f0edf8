import Foundation
import RTrace

/// Small traces that cover every column, codec and layout the writer produces: the fuzzer's
/// starting corpus, next to the samples (`make fuzz-seeds` writes them to fuzz/seeds/).
func writeSeeds(to dir: String) throws {
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    var rng: UInt64 = 0x9E37_79B9_7F4A_7C15
    func next(_ n: Int) -> Int {
        rng = rng &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
        return Int((rng >> 33) % UInt64(n))
    }
    func records(_ h: TraceHeader, count: Int, maxRows: Int, missingEvery: Int) -> [TraceRecord] {
        let L = h.model.moeLayers, k = h.model.topK, E = h.model.numExperts
        return (0..<count).map { i in
            let rows = i == 1 ? 0 : next(maxRows) + 1
            let start = i % 3 == 2 ? next(3) : 0
            let tokens = (0..<(start + rows + 1)).map { _ in Int32(next(151_936)) }
            var ids: [UInt16] = []
            var prev = (0..<k).map { UInt16($0) }
            for r in 0..<rows {
                for _ in 0..<L {
                    if missingEvery > 0 && i % missingEvery == missingEvery - 1 && r < 2 {
                        ids += Array(repeating: TraceRecord.missing, count: k); continue
                    }
                    var set: [UInt16] = []
                    while set.count < k {
                        let e = next(2) == 0 ? prev[next(prev.count)] : UInt16(next(E))
                        if !set.contains(e) { set.append(e) }
                    }
                    ids += set
                    prev = set
                }
            }
            let n = rows * L
            let w = h.columns.topkWeights.map { d in
                FloatArray(dtype: d, values: (0..<(n * k)).map { ids[$0] == TraceRecord.missing ? 0 : Float(next(1000)) / 1000 })
            }
            let g = h.columns.routerLogits.map { d in
                FloatArray(dtype: d, values: (0..<(n * E)).map { ids[$0 / E * k] == TraceRecord.missing ? 0 : Float(next(800)) / 100 - 4 })
            }
            let lp = h.columns.logprobs ? (0..<min(tokens.count, next(6))).map { _ in -Float(next(300)) / 100 } : []
            return TraceRecord(
                uid: "s\(i)", group: i % 2 == 0 ? "g\(i / 4)" : nil, tokens: tokens, promptLength: min(tokens.count, 2),
                start: start, rowCount: rows, layers: L, topK: k, expertIDs: ids, weights: w, logits: g,
                logprobs: lp, reward: i % 3 == 0 ? Double(i) / 2 : nil, attributes: i % 4 == 0 ? "{\"t\":\(i)}" : nil)
        }
    }
    struct Seed {
        var name: String
        var model: ModelGeometry
        var columns: ColumnTypes
        var count: Int
        var maxRows: Int
        var chunkBytes: Int
        var compress: Bool = true
        var missingEvery: Int = 0
        var close: Bool = true
    }
    let seeds = [
        Seed(name: "ids-only", model: ModelGeometry(numLayers: 3, numExperts: 8, topK: 2), columns: ColumnTypes(),
             count: 6, maxRows: 5, chunkBytes: 64),
        Seed(name: "all-columns", model: ModelGeometry(numLayers: 3, numExperts: 6, topK: 2, layerMap: [1, 2]),
             columns: ColumnTypes(topkWeights: .bf16, routerLogits: .f16, logprobs: true),
             count: 5, maxRows: 4, chunkBytes: 200, missingEvery: 3),
        Seed(name: "u16-f32-raw", model: ModelGeometry(numLayers: 2, numExperts: 300, topK: 3),
             columns: ColumnTypes(topkWeights: .f32, routerLogits: nil, logprobs: true),
             count: 4, maxRows: 4, chunkBytes: 100, compress: false),
        Seed(name: "f32-logits-big-chunk", model: ModelGeometry(numLayers: 2, numExperts: 4, topK: 4),
             columns: ColumnTypes(topkWeights: .f16, routerLogits: .f32), count: 4, maxRows: 6, chunkBytes: 1 << 20,
             missingEvery: 2),
        Seed(name: "unclosed", model: ModelGeometry(numLayers: 2, numExperts: 16, topK: 2),
             columns: ColumnTypes(logprobs: true), count: 5, maxRows: 5, chunkBytes: 60, close: false),
        Seed(name: "empty", model: ModelGeometry(numLayers: 1, numExperts: 2, topK: 1), columns: ColumnTypes(),
             count: 0, maxRows: 1, chunkBytes: 64),
    ]
    for s in seeds {
        let h = TraceHeader(engine: EngineInfo(name: "fuzz", version: "1", role: .rollout), model: s.model,
                            columns: s.columns, policyVersion: 3, created: "2026-01-01T00:00:00Z", attributes: ["k": "v"])
        let path = (dir as NSString).appendingPathComponent("\(s.name).rtrace")
        let w = try TraceWriter(path: path, header: h, options: WriterOptions(chunkBytes: s.chunkBytes, compress: s.compress))
        for r in records(h, count: s.count, maxRows: s.maxRows, missingEvery: s.missingEvery) { try w.append(r) }
        if s.close { try w.close() } else { try w.flush() }
    }
}
