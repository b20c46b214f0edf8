import Foundation
import RTrace
import Testing
@testable import RTraceAnalysis

let samplesDir = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent().appendingPathComponent("samples/qwen3moe-L6-E32-k4").path

/// Writes a sample npz (real Qwen3-MoE routing) as a trace; nil when the samples are not there.
func sampleTrace(_ name: String, into dir: String) throws -> (String, [TraceRecord], ModelGeometry)? {
    let npz = samplesDir + "/\(name).npz"
    guard FileManager.default.fileExists(atPath: npz) else { return nil }
    var o = ImportOptions()
    o.uidPrefix = "s"
    let (h, recs) = try NpzConversion.makeTrace(try Npz.read(path: npz), options: o)
    return (try write(dir + "/\(name).rtrace", h, recs), recs, h.model)
}

@Test func realSamplesMatchReference() throws {
    let d = tempDir()
    guard let (pa, A, g) = try sampleTrace("rollout", into: d), let (pb, B, _) = try sampleTrace("train_mixed", into: d) else { return }
    let ref = RefDiff(A, B, g)
    let j = try diffTraces(a: [pa], b: [pb]).json
    let tot = ref.n.reduce(0, +)
    #expect(tot == 12 * 127 * 6)
    #expect(close(num(j["flip_rate"]), Double(ref.flips.reduce(0, +)) / Double(tot)))
    #expect(close(num(j["jaccard"]), ref.jacc.reduce(0, +) / Double(tot)))
    #expect(close(num(j["token_any_layer_flip"]), Double(ref.anyFlip) / Double(ref.rows)))
    for (l, p) in (j["per_layer"] as! [[String: Any]]).enumerated() {
        #expect(close(num(p["router_kl"]), ref.kl[l] / Double(ref.n[l]), 1e-9))
        #expect(close(num(p["weight_mae"]), ref.wsum[l] / Double(ref.wn[l])))
    }
    let p = j["policy"] as! [String: Any]
    #expect(p["tokens"] as? Int == 12 * 80 && ref.lpN == 12 * 80)
    #expect(close(num(p["k1"]), ref.k1 / Double(ref.lpN)) && close(num(p["k3"]), ref.k3 / Double(ref.lpN)))
    // A bf16 rollout against a training pass flips some, but not most, routing decisions.
    #expect(num(j["flip_rate"])! > 0 && num(j["flip_rate"])! < 0.2)
    // Stats of rollout: every row counted, loads sum to one.
    let s = try statsTraces([pa])
    for l in 0..<g.moeLayers {
        #expect(s.layers[l].tokens == 12 * 127)
        #expect(abs(s.derived(l).load.reduce(0, +) - 1) < 1e-12)
    }
}
