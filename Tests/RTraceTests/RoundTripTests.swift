import Foundation
import Testing
@testable import RTrace
import RTraceTestSupport


/// A trace with every optional column, dense layers in the layer map, missing rows and long records.
func makeRecords(_ h: TraceHeader, count: Int, seed: UInt64, maxRows: Int = 300) -> [TraceRecord] {
    var rng = TestRNG(seed)
    let L = h.model.moeLayers, k = h.model.topK, E = h.model.numExperts
    return (0..<count).map { i in
        let rows = i == 1 ? 0 : rng.int(maxRows) + 1
        let start = i % 3 == 2 ? rng.int(5) : 0
        let tokens = (0..<(start + rows + 1)).map { _ in Int32(rng.int(151_936)) }
        var ids = [UInt16]()
        var prev = Array(0..<k).map { UInt16($0) }
        for r in 0..<rows {
            for _ in 0..<L {
                if i % 4 == 3 && r < 7 { ids += Array(repeating: TraceRecord.missing, count: k); continue }
                var set = [UInt16]()
                while set.count < k {
                    let e = rng.int(2) == 0 && set.count < prev.count ? prev[rng.int(prev.count)] : UInt16(rng.int(E))
                    if !set.contains(e) { set.append(e) }
                }
                ids += set
                prev = set
            }
        }
        let n = rows * L
        // Weights and logits of a missing (row, layer) are not stored: they read back as zeros.
        let w = h.columns.topkWeights.map { d in
            FloatArray(dtype: d, values: (0..<(n * k)).map { ids[$0] == TraceRecord.missing ? 0 : rng.float() })
        }
        let g = h.columns.routerLogits.map { d in
            FloatArray(dtype: d, values: (0..<(n * E)).map { ids[$0 / E * k] == TraceRecord.missing ? 0 : rng.float() * 8 - 4 })
        }
        let lp = h.columns.logprobs ? (0..<min(tokens.count, rng.int(40))).map { _ in -rng.float() * 3 } : []
        return TraceRecord(
            uid: "seq-\(i)", group: i % 2 == 0 ? "prompt-\(i / 4)" : nil, tokens: tokens, promptLength: min(tokens.count, 5),
            start: start, rowCount: rows, layers: L, topK: k, expertIDs: ids, weights: w, logits: g, logprobs: lp,
            reward: i % 5 == 0 ? nil : Double(i) / 7, attributes: i % 3 == 0 ? "{\"turn\":\(i)}" : nil)
    }
}


func fullHeader(experts: Int = 40, weights: FloatDType? = .bf16, logits: FloatDType? = .f16) -> TraceHeader {
    TraceHeader(
        engine: EngineInfo(name: "test", version: "1", role: .rollout),
        model: ModelGeometry(name: "tiny", numLayers: 6, numExperts: experts, topK: 4, layerMap: [1, 2, 4, 5]),
        columns: ColumnTypes(topkWeights: weights, routerLogits: logits, logprobs: true), policyVersion: 3,
        attributes: ["run": "unit"])
}

@Suite struct RoundTripTests {
    @Test(arguments: [(40, FloatDType.bf16, FloatDType.f16), (300, .f32, .bf16), (8, .f16, .f32)])
    func writeThenReadIsExact(experts: Int, w: FloatDType, g: FloatDType) throws {
        let h = fullHeader(experts: experts, weights: w, logits: g)
        let recs = makeRecords(h, count: 13, seed: UInt64(experts))
        let path = tempPath("rt-\(experts).rtrace")
        let writer = try TraceWriter(path: path, header: h, options: WriterOptions(chunkBytes: 20_000))
        for r in recs { try writer.append(r) }
        try writer.close()
        #expect(writer.index.chunks.count > 3, "small chunks so records span chunks")
        #expect(writer.index.records.contains { $0.chunkCount > 1 })

        let reader = try TraceReader(path: path)
        #expect(reader.isComplete)
        #expect(reader.header == h)
        let back = try reader.readAll()
        #expect(back.count == recs.count)
        for (a, b) in zip(recs, back) { #expect(a == b, "record \(a.uid) differs after the round trip") }
        let one = try #require(try reader.record(uid: "seq-7"))
        #expect(one == recs[7])
        #expect(try reader.record(uid: "absent") == nil)
    }
}
