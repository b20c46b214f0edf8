import Foundation
import RTrace
import Testing
@testable import RTraceAnalysis

/// Two MoE layers at decoder indices 1 and 3 of 4 (layers 0 and 2 dense), 8 experts, top-2.
let tinyGeometry = ModelGeometry(numLayers: 4, numExperts: 8, topK: 2, layerMap: [1, 3])
let M = TraceRecord.missing

/// The hand example: rows × layers × slots.
///   row 0 (prompt):   L1 {0,1} vs {0,1};    L3 {2,3} vs {3,2} (order only)
///   row 1 (response): L1 {0,1} vs {0,2} (I=1);  L3 {4,5} vs {6,7} (I=0)
///   row 2 (response): L1 {1,2} vs missing;  L3 {1,2} vs {1,2}
func tinyPair() -> (TraceRecord, TraceRecord) {
    let idsA: [UInt16] = [0, 1, 2, 3, 0, 1, 4, 5, 1, 2, 1, 2]
    let idsB: [UInt16] = [0, 1, 3, 2, 0, 2, 6, 7, M, M, 1, 2]
    let n = 3 * 2
    var lgB = [Float](repeating: 0, count: n * 8)
    for s in 0..<n { lgB[s * 8] = Float(log(2.0)) }
    let a = TraceRecord(uid: "s", tokens: [5, 6, 7, 8], promptLength: 2, rowCount: 3, layers: 2, topK: 2, expertIDs: idsA,
                        weights: FloatArray(dtype: .f32, values: Array(repeating: 0.5, count: n * 2)),
                        logits: FloatArray(dtype: .f32, values: Array(repeating: 0, count: n * 8)), logprobs: [-1, -1])
    let lp: [Float] = [-0.5, -1 + Float(log(1.8)), -1 - Float(log(3.0))]
    let b = TraceRecord(uid: "s", tokens: [5, 6, 7, 8], promptLength: 2, rowCount: 3, layers: 2, topK: 2, expertIDs: idsB,
                        weights: FloatArray(dtype: .f32, values: Array(repeating: 0.25, count: n * 2)),
                        logits: FloatArray(dtype: .f32, values: lgB), logprobs: lp)
    return (a, b)
}

@Test func diffByHand() throws {
    let d = tempDir()
    let (a, b) = tinyPair()
    let pa = try write(d + "/a.rtrace", header(tinyGeometry), [a])
    let pb = try write(d + "/b.rtrace", header(tinyGeometry, role: .train), [b])
    let j = try diffTraces(a: [pa], b: [pb], options: DiffOptions(buckets: 1)).json
    let m = j["matched"] as! [String: Any]
    #expect(m["sequences"] as? Int == 1 && m["rows"] as? Int == 3)
    #expect(m["layer_rows_compared"] as? Int == 5 && m["layer_rows_missing_b"] as? Int == 1 && m["layer_rows_missing_a"] as? Int == 0)
    #expect(close(num(j["flip_rate"]), 2.0 / 5))
    #expect(close(num(j["ordered_flip_rate"]), 3.0 / 5))
    #expect(close(num(j["jaccard"]), 2.0 / 3))
    #expect(close(num(j["mean_experts_changed"]), 3.0 / 5))
    #expect(close(num(j["token_any_layer_flip"]), 1.0 / 3))
    #expect(close(num(j["mean_flipped_layers_per_row"]), 2.0 / 3))
    let per = j["per_layer"] as! [[String: Any]]
    #expect(per.map { $0["layer"] as! Int } == [1, 3])
    #expect(close(num(per[0]["flip_rate"]), 0.5) && close(num(per[1]["flip_rate"]), 1.0 / 3))
    #expect(close(num(per[0]["ordered_flip_rate"]), 0.5) && close(num(per[1]["ordered_flip_rate"]), 2.0 / 3))
    #expect(close(num(per[0]["jaccard"]), 2.0 / 3) && close(num(per[1]["jaccard"]), 2.0 / 3))
    #expect(close(num(per[0]["weight_mae"]), 0.25) && close(num(per[1]["weight_mae"]), 0.25))
    // softmax(B) = (c, 1, …, 1) / (c + 7) with c = exp(ln 2 rounded to f32); A uniform.
    let c = exp(Double(Float(log(2.0)))), z = c + 7
    let kl = 1.0 / 8 * log((1.0 / 8) / (c / z)) + 7.0 / 8 * log((1.0 / 8) / (1 / z))
    #expect(close(num(per[0]["router_kl"]), kl, 1e-12) && close(num(j["router_kl"]), kl, 1e-12))
    let prompt = j["prompt"] as! [String: Any], resp = j["response"] as! [String: Any]
    #expect(prompt["rows"] as? Int == 1 && close(num(prompt["token_any_layer_flip"]), 0) && close(num(prompt["flip_rate"]), 0))
    #expect(resp["rows"] as? Int == 2 && close(num(resp["token_any_layer_flip"]), 0.5))
    let p = j["policy"] as! [String: Any]
    #expect(p["tokens"] as? Int == 2)
    #expect(close(num(p["k1"]), (-log(1.8) + log(3.0)) / 2, 1e-6))
    #expect(close(num(p["k3"]), ((1.8 - 1 - log(1.8)) + (1.0 / 3 - 1 + log(3.0))) / 2, 1e-6))
    let e = p["extreme_frac"] as! [String: Any]
    #expect(close(num(e["1.5"]), 1) && close(num(e["2"]), 0.5) && close(num(e["5"]), 0))
    let top = j["top"] as! [[String: Any]]
    #expect(top.count == 1 && top[0]["uid"] as? String == "s" && top[0]["flipped_rows"] as? Int == 1)
    // Table and CSV name decoder layers.
    let rep = try diffTraces(a: [pa], b: [pb])
    #expect(rep.csv.split(separator: "\n").dropFirst().map { $0.split(separator: ",")[0] } == ["1", "3"])
    #expect(rep.text.contains("most flipped sequences"))
}

@Test func identicalTracesGiveZeros() throws {
    let d = tempDir()
    let g = ModelGeometry(numLayers: 5, numExperts: 16, topK: 4, layerMap: [0, 2, 3, 4])
    let (a, _) = generatePair(g, sequences: 8, seed: 3)
    let pa = try write(d + "/a.rtrace", header(g), a)
    let pb = try write(d + "/b.rtrace", header(g), a)
    let j = try diffTraces(a: [pa], b: [pb]).json
    for key in ["flip_rate", "ordered_flip_rate", "mean_experts_changed", "token_any_layer_flip", "mean_flipped_layers_per_row", "weight_mae"] {
        #expect(num(j[key]) == 0, "\(key)")
    }
    #expect(num(j["jaccard"]) == 1)
    #expect(abs(num(j["router_kl"])!) < 1e-12)
    let p = j["policy"] as! [String: Any]
    #expect(num(p["k1"]) == 0 && num(p["k3"]) == 0)
    #expect((j["top"] as! [Any]).isEmpty)
    // thresholds: nothing exceeded
    #expect(try checkThresholds(j, parseThresholds(["flip_rate=0", "policy.k3=0"])).isEmpty)
}

@Test func disjointUidsAreAnError() throws {
    let d = tempDir()
    let (a, b) = tinyPair()
    var b2 = b
    b2.uid = "other"
    let pa = try write(d + "/a.rtrace", header(tinyGeometry), [a])
    let pb = try write(d + "/b.rtrace", header(tinyGeometry), [b2])
    #expect(throws: TraceError.self) { try diffTraces(a: [pa], b: [pb]) }
    // Partial overlap is reported, not an error.
    let pb2 = try write(d + "/b2.rtrace", header(tinyGeometry), [b, b2])
    let m = try diffTraces(a: [pa], b: [pb2]).json["matched"] as! [String: Any]
    #expect(m["sequences"] as? Int == 1 && m["sequences_only_b"] as? Int == 1 && m["sequences_only_a"] as? Int == 0)
    #expect(m["rows_only_b"] as? Int == 3 && m["rows_only_a"] as? Int == 0)
}

@Test func geometryMismatchIsRefused() throws {
    let d = tempDir()
    let (a, _) = tinyPair()
    let other = ModelGeometry(numLayers: 4, numExperts: 8, topK: 2, layerMap: [1, 2])
    let pa = try write(d + "/a.rtrace", header(tinyGeometry), [a])
    let pb = try write(d + "/b.rtrace", header(other), [a])
    do {
        _ = try diffTraces(a: [pa], b: [pb])
        Issue.record("expected a geometry error")
    } catch let e as TraceError {
        #expect(e.kind == .geometryMismatch && e.message.contains("layer_map"))
    }
}

/// Straightforward reference of the diff metrics with Sets and naive softmax.
struct RefDiff {
    var n = [Int](), flips = [Int](), oflips = [Int](), jacc = [Double](), changed = [Int]()
    var kl = [Double](), wsum = [Double](), wn = [Int]()
    var rows = 0, anyFlip = 0, flippedLayers = 0, respRows = 0, respAny = 0
    var matchedRows = 0, missA = 0, missB = 0
    var lpN = 0, k1 = 0.0, k3 = 0.0, ext = [0, 0, 0]

    init(_ A: [TraceRecord], _ B: [TraceRecord], _ g: ModelGeometry) {
        let L = g.moeLayers, k = g.topK, E = g.numExperts
        n = Array(repeating: 0, count: L); flips = n; oflips = n; changed = n; wn = n
        jacc = Array(repeating: 0, count: L); kl = jacc; wsum = jacc
        let byUid = Dictionary(uniqueKeysWithValues: B.map { ($0.uid, $0) })
        for a in A {
            guard let b = byUid[a.uid] else { continue }
            let (wa, wb, la, lb) = (a.weights!.floats, b.weights!.floats, a.logits!.floats, b.logits!.floats)
            for pos in max(a.start, b.start)..<min(a.start + a.rowCount, b.start + b.rowCount) {
                matchedRows += 1
                let ra = pos - a.start, rb = pos - b.start
                var any = false, fl = 0, compared = false
                for l in 0..<L {
                    let xa = Array(a.experts(row: ra, layer: l)), xb = Array(b.experts(row: rb, layer: l))
                    if xa[0] == TraceRecord.missing || xb[0] == TraceRecord.missing {
                        if xa[0] == TraceRecord.missing { missA += 1 }
                        if xb[0] == TraceRecord.missing { missB += 1 }
                        continue
                    }
                    compared = true
                    let sa = Set(xa), sb = Set(xb)
                    n[l] += 1
                    if sa != sb { flips[l] += 1; any = true; fl += 1 }
                    if xa != xb { oflips[l] += 1 }
                    jacc[l] += Double(sa.intersection(sb).count) / Double(sa.union(sb).count)
                    changed[l] += k - sa.intersection(sb).count
                    for j in 0..<k {
                        if let j2 = xb.firstIndex(of: xa[j]) {
                            wsum[l] += abs(Double(wa[(ra * L + l) * k + j]) - Double(wb[(rb * L + l) * k + j2])); wn[l] += 1
                        }
                    }
                    let pa = (0..<E).map { exp(Double(la[(ra * L + l) * E + $0])) }, pb = (0..<E).map { exp(Double(lb[(rb * L + l) * E + $0])) }
                    let za = pa.reduce(0, +), zb = pb.reduce(0, +)
                    kl[l] += (0..<E).reduce(0.0) { $0 + pa[$1] / za * log((pa[$1] / za) / (pb[$1] / zb)) }
                }
                if compared {
                    rows += 1
                    if any { anyFlip += 1 }
                    flippedLayers += fl
                    if !a.isPromptRow(ra) { respRows += 1; if any { respAny += 1 } }
                }
            }
            let nt = a.tokens.count
            for t in a.promptLength..<nt {
                let ia = t - (nt - a.logprobs.count), ib = t - (nt - b.logprobs.count)
                guard ia >= 0, ib >= 0 else { continue }
                let r = exp(Double(b.logprobs[ib]) - Double(a.logprobs[ia]))
                lpN += 1
                k1 += Double(a.logprobs[ia]) - Double(b.logprobs[ib])
                k3 += r - 1 - log(r)
                for (i, tau) in [1.5, 2, 5].enumerated() where max(r, 1 / r) > tau { ext[i] += 1 }
            }
        }
    }
}

@Test func diffMatchesReferenceOnGeneratedShards() throws {
    let d = tempDir()
    let g = ModelGeometry(numLayers: 7, numExperts: 16, topK: 4, layerMap: [1, 2, 4, 6])
    let (A, B) = generatePair(g, sequences: 40, seed: 11, dtype: .bf16)
    let hA = header(g, weights: .bf16, logits: .bf16), hB = header(g, weights: .bf16, logits: .bf16, role: .train)
    let pa = try write(d + "/a.rtrace", hA, A)
    let pb = try write(d + "/b.rtrace", hB, B)
    // B extra sequence only in B; shards: A in two files, B in a directory of three files in another order.
    try FileManager.default.createDirectory(atPath: d + "/bdir", withIntermediateDirectories: true)
    try write(d + "/a0.rtrace", hA, Array(A[0..<25]))
    try write(d + "/a1.rtrace", hA, Array(A[25...]))
    try write(d + "/bdir/0.rtrace", hB, Array(B[30...]).reversed())
    try write(d + "/bdir/1.rtrace", hB, Array(B[0..<12]))
    try write(d + "/bdir/2.rtrace", hB, Array(B[12..<30]))
    let ref = RefDiff(A, B, g)
    let rep = try diffTraces(a: [pa], b: [pb], options: DiffOptions(buckets: 3, top: 5))
    let j = rep.json
    let tot = ref.n.reduce(0, +)
    #expect(close(num(j["flip_rate"]), Double(ref.flips.reduce(0, +)) / Double(tot)))
    #expect(close(num(j["ordered_flip_rate"]), Double(ref.oflips.reduce(0, +)) / Double(tot)))
    #expect(close(num(j["jaccard"]), ref.jacc.reduce(0, +) / Double(tot)))
    #expect(close(num(j["mean_experts_changed"]), Double(ref.changed.reduce(0, +)) / Double(tot)))
    #expect(close(num(j["token_any_layer_flip"]), Double(ref.anyFlip) / Double(ref.rows)))
    #expect(close(num(j["mean_flipped_layers_per_row"]), Double(ref.flippedLayers) / Double(ref.rows)))
    #expect(close(num((j["response"] as! [String: Any])["token_any_layer_flip"]), Double(ref.respAny) / Double(ref.respRows)))
    let m = j["matched"] as! [String: Any]
    #expect(m["rows"] as? Int == ref.matchedRows && m["layer_rows_missing_a"] as? Int == ref.missA && m["layer_rows_missing_b"] as? Int == ref.missB)
    #expect(ref.missA > 0 && ref.missB > 0 && ref.flips.reduce(0, +) > 0)
    for (l, p) in (j["per_layer"] as! [[String: Any]]).enumerated() {
        #expect(p["layer"] as? Int == g.layerMap[l])
        #expect(close(num(p["flip_rate"]), Double(ref.flips[l]) / Double(ref.n[l])))
        #expect(close(num(p["ordered_flip_rate"]), Double(ref.oflips[l]) / Double(ref.n[l])))
        #expect(close(num(p["jaccard"]), ref.jacc[l] / Double(ref.n[l])))
        #expect(close(num(p["router_kl"]), ref.kl[l] / Double(ref.n[l]), 1e-9))
        #expect(close(num(p["weight_mae"]), ref.wsum[l] / Double(ref.wn[l])))
    }
    let p = j["policy"] as! [String: Any]
    #expect(p["tokens"] as? Int == ref.lpN)
    #expect(close(num(p["k1"]), ref.k1 / Double(ref.lpN)) && close(num(p["k3"]), ref.k3 / Double(ref.lpN)))
    let e = p["extreme_frac"] as! [String: Any]
    #expect(close(num(e["1.5"]), Double(ref.ext[0]) / Double(ref.lpN)) && close(num(e["2"]), Double(ref.ext[1]) / Double(ref.lpN)))
    // Buckets partition the rows.
    let bs = j["buckets"] as! [[String: Any]]
    #expect(bs.count == 3 && bs.map { $0["rows"] as! Int }.reduce(0, +) == ref.rows)
    #expect((j["top"] as! [Any]).count == 5)
    // Shards and directories give the same report.
    let js = try diffTraces(a: [d + "/a0.rtrace", d + "/a1.rtrace"], b: [d + "/bdir"], options: DiffOptions(buckets: 3, top: 5)).json
    for key in ["flip_rate", "ordered_flip_rate", "jaccard", "router_kl", "weight_mae", "token_any_layer_flip"] {
        #expect(close(num(js[key]), num(j[key])!, 1e-12), "\(key)")
    }
    #expect(NSDictionary(dictionary: js["matched"] as! [String: Any]) == NSDictionary(dictionary: m))
}

@Test func failAboveThresholds() throws {
    let d = tempDir()
    let (a, b) = tinyPair()
    let pa = try write(d + "/a.rtrace", header(tinyGeometry), [a])
    let pb = try write(d + "/b.rtrace", header(tinyGeometry), [b])
    let j = try diffTraces(a: [pa], b: [pb]).json
    #expect(try checkThresholds(j, parseThresholds(["flip_rate=0.05"])).count == 1)
    #expect(try checkThresholds(j, parseThresholds(["flip_rate=0.5", "jaccard=0.9"])).isEmpty)
    #expect(try checkThresholds(j, parseThresholds(["policy.k3=0.01"])).count == 1)
    #expect(throws: TraceError.self) { try checkThresholds(j, parseThresholds(["no_such_key=1"])) }
    #expect(throws: TraceError.self) { try parseThresholds(["flip_rate"]) }
    // The exit status of the command, when the rtrace executable is built next to the tests.
    let exe = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("rtrace").path
    guard FileManager.default.isExecutableFile(atPath: exe) else { return }
    func status(_ args: [String]) throws -> Int32 {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: exe)
        p.arguments = args
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        try p.run()
        p.waitUntilExit()
        return p.terminationStatus
    }
    #expect(try status(["diff", pa, pb, "--fail-above", "flip_rate=0.05"]) == 1)
    #expect(try status(["diff", pa, pb, "--json", "--fail-above", "flip_rate=0.5"]) == 0)
    #expect(try status(["stats", pa, "--fail-above", "dead_experts=100"]) == 0)
}

@Test func manyExpertsUseTheGeneralSetPath() throws {
    // 300 experts (u16 ids): set comparison beyond the 256-bit mask.
    let d = tempDir()
    let g = ModelGeometry(numLayers: 2, numExperts: 300, topK: 3, layerMap: [0, 1])
    let (A, B) = generatePair(g, sequences: 10, seed: 21, maxRows: 20, flip: 0.3)
    let pa = try write(d + "/a.rtrace", header(g), A)
    let pb = try write(d + "/b.rtrace", header(g), B)
    let ref = RefDiff(A, B, g)
    let j = try diffTraces(a: [pa], b: [pb]).json
    for (l, p) in (j["per_layer"] as! [[String: Any]]).enumerated() {
        #expect(close(num(p["flip_rate"]), Double(ref.flips[l]) / Double(ref.n[l])))
        #expect(close(num(p["ordered_flip_rate"]), Double(ref.oflips[l]) / Double(ref.n[l])))
        #expect(close(num(p["jaccard"]), ref.jacc[l] / Double(ref.n[l])))
        #expect(close(num(p["router_kl"]), ref.kl[l] / Double(ref.n[l]), 1e-9))
    }
}

@Test func earlyErrorStopsTheReaders() throws {
    // A repeats a uid before B has it: an error, raised while the reader threads still have records to give.
    let d = tempDir()
    let (a, b) = tinyPair()
    var recs = [a, a]
    for i in 0..<300 { var r = a; r.uid = "u\(i)"; recs.append(r) }
    var bt = b
    bt.uid = "u0"
    let pa = try write(d + "/a.rtrace", header(tinyGeometry), recs)
    let pb = try write(d + "/b.rtrace", header(tinyGeometry), [bt])
    #expect(throws: TraceError.self) { try diffTraces(a: [pa], b: [pb]) }
}
