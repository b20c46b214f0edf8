import RTraceTestSupport
import Foundation
import RTrace
@testable import RTraceAnalysis

/// A fresh temporary directory.
func tempDir(_ tag: String = #function) -> String {
    let d = NSTemporaryDirectory() + "rtrace-analysis-\(tag.filter { $0.isLetter || $0.isNumber })-\(UUID().uuidString)"
    try! FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
    return d
}

func header(_ g: ModelGeometry, weights: FloatDType? = .f32, logits: FloatDType? = .f32, logprobs: Bool = true,
            role: EngineInfo.Role = .rollout) -> TraceHeader {
    TraceHeader(engine: EngineInfo(name: "test", role: role), model: g,
                columns: ColumnTypes(topkWeights: weights, routerLogits: logits, logprobs: logprobs))
}

@discardableResult
func write(_ path: String, _ h: TraceHeader, _ recs: [TraceRecord], chunkBytes: Int = 1 << 14) throws -> String {
    let w = try TraceWriter(path: path, header: h, options: WriterOptions(chunkBytes: chunkBytes))
    for r in recs { try w.append(r) }
    try w.close()
    return path
}

/// Generated pair of sides: A with neighbouring rows sharing experts; B flips some (row, layer)s,
/// perturbs weights, logits and logprobs; some rows are missing on either side; B may start later.
func generatePair(_ g: ModelGeometry, sequences: Int, seed: UInt64, maxRows: Int = 40, flip: Double = 0.15,
                  dtype: FloatDType = .f32) -> (a: [TraceRecord], b: [TraceRecord]) {
    var rng = TestRNG(seed)
    let L = g.moeLayers, k = g.topK, E = g.numExperts
    var A: [TraceRecord] = [], B: [TraceRecord] = []
    for s in 0..<sequences {
        let rows = 2 + rng.int(maxRows)
        let prompt = 1 + rng.int(rows)
        let tokens = (0...rows).map { _ in Int32(rng.int(1000)) }
        var ids = [UInt16](), idsB = [UInt16]()
        var w = [Float](), wB = [Float](), lg = [Float](), lgB = [Float]()
        var prev = Array(0..<k).map { UInt16($0) }
        for r in 0..<rows {
            for _ in 0..<L {
                var set = [UInt16]()
                while set.count < k {
                    let e = rng.int(2) == 0 ? prev[rng.int(k)] : UInt16(rng.int(E))
                    if !set.contains(e) { set.append(e) }
                }
                prev = set
                var setB = set
                let u = rng.unit()
                if u < flip {  // replace one or two experts
                    for _ in 0..<(1 + rng.int(2)) {
                        var e: UInt16
                        repeat { e = UInt16(rng.int(E)) } while setB.contains(e)
                        setB[rng.int(k)] = e
                    }
                } else if u < flip * 1.5 {
                    setB.swapAt(0, k - 1)
                }
                let missA = s % 5 == 1 && r < 3, missB = s % 7 == 2 && r % 4 == 1
                ids += missA ? Array(repeating: TraceRecord.missing, count: k) : set
                idsB += missB ? Array(repeating: TraceRecord.missing, count: k) : setB
                for _ in 0..<k {
                    let x = Float(rng.unit())
                    w.append(x); wB.append(x + Float(rng.unit() * 0.01))
                }
                for _ in 0..<E {
                    let x = Float(rng.unit() * 4 - 2)
                    lg.append(x); lgB.append(x + Float(rng.unit() * 0.2 - 0.1))
                }
            }
        }
        let nlp = rows + 1 - prompt + rng.int(2)
        let lpA = (0..<min(nlp, rows + 1)).map { _ in Float(-rng.unit() * 3) }
        let lpB = lpA.map { $0 + Float(rng.unit() * 0.6 - 0.3) }
        let uid = "seq-\(s)"
        A.append(TraceRecord(uid: uid, tokens: tokens, promptLength: prompt, start: 0, rowCount: rows, layers: L, topK: k,
                             expertIDs: ids, weights: FloatArray(dtype: dtype, values: w), logits: FloatArray(dtype: dtype, values: lg),
                             logprobs: lpA))
        // B: training pass may start later (drop first rows) for some sequences.
        let st = s % 6 == 3 ? 2 : 0
        let cut = st * L
        B.append(TraceRecord(uid: uid, tokens: tokens, promptLength: prompt, start: st, rowCount: rows - st, layers: L, topK: k,
                             expertIDs: Array(idsB[(cut * k)...]), weights: FloatArray(dtype: dtype, values: Array(wB[(cut * k)...])),
                             logits: FloatArray(dtype: dtype, values: Array(lgB[(cut * E)...])), logprobs: Array(lpB.suffix(lpB.count - (s % 4 == 0 ? 1 : 0)))))
    }
    return (A, B)
}

func num(_ x: Any?) -> Double? { (x as? NSNumber)?.doubleValue ?? (x as? Double) }

/// |a − b| ≤ tol·max(1, |b|)
func close(_ a: Double?, _ b: Double, _ tol: Double = 1e-9) -> Bool {
    guard let a else { return false }
    return abs(a - b) <= tol * max(1, abs(b))
}
