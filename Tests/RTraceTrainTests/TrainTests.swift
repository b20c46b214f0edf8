import Foundation
import RTrace
import Testing
@testable import RTraceTrain

let tiny = ModelConfig(vocab: 12, width: 8, heads: 2, layers: 2, experts: 4, topK: 2, hidden: 8)

func tmpDir(_ name: String) -> String {
    let p = NSTemporaryDirectory() + "rtrace-train-\(name)-\(UInt32.random(in: 0...UInt32.max))"
    try? FileManager.default.createDirectory(atPath: p, withIntermediateDirectories: true)
    return p
}

func tinyTrain(_ mode: ReplayMode, _ out: String, steps: Int = 1, seed: UInt64 = 3) -> TrainConfig {
    var c = TrainConfig()
    c.model = ModelConfig(vocab: 12, width: 8, heads: 2, layers: 2, experts: 8, topK: 2, hidden: 8)
    c.mode = mode; c.steps = steps; c.seed = seed; c.prompts = 2; c.groupSize = 3; c.minibatches = 2
    c.digits = 2; c.out = out; c.lr = 1e-2
    return c
}

/// Σ c_t logp_t + λ·aux, the loss whose gradient `backward` accumulates.
func loss(_ m: Model<Double>, _ toks: [Int], _ ov: [UInt16]?, _ c: [Double], _ lam: Double, _ temp: Double) -> Double {
    let f = m.forward(tokens: toks, override: ov, temperature: temp)
    var s = lam * f.aux
    for t in 0..<c.count { s += c[t] * f.logp[t] }
    return s
}

/// Checks every parameter tensor's gradient against central differences in Double.
func gradCheck(override mode: ReplayMode) {
    let m = Model<Double>(cfg: tiny, seed: 5)
    let toks = [11, 3, 1, 4, 10, 1, 5]
    let rows = toks.count - 1
    var rng = RNG(9)
    let c = (0..<rows).map { _ in rng.normal() }
    let lam = 0.3, temp = 0.8
    var ov: [UInt16]? = nil
    let nat = m.forward(tokens: toks, temperature: temp).natural
    switch mode {
    case .none: break
    case .r2: ov = nat  // replaying the model's own routing
    case .r3:
        // A replayed routing that differs from the router's own choice: the other experts.
        var o = [UInt16]()
        for s in 0..<(rows * tiny.layers) {
            let mine = Set(nat[(s * 2)..<(s * 2 + 2)])
            o += (0..<UInt16(tiny.experts)).filter { !mine.contains($0) }.reversed()
        }
        ov = o
        #expect(flipRate(o, nat, topK: 2).flips == rows * tiny.layers)
    }
    let f = m.forward(tokens: toks, override: ov, temperature: temp)
    if let ov { #expect(f.ids == ov) }
    let g = Buf<Double>(count: m.layout.total)
    m.backward(f, dlogp: c, lbScale: lam, grad: g)
    let eps = 1e-6
    var worst = 0.0
    for t in m.layout.tensors {
        var any = false
        let picks = Set((0..<6).map { _ in rng.int(t.count) } + [0, t.count - 1])
        for k in picks {
            let i = t.offset + k
            let p0 = m.params[i]
            m.params[i] = p0 + eps
            let lp = loss(m, toks, ov, c, lam, temp)
            m.params[i] = p0 - eps
            let lm = loss(m, toks, ov, c, lam, temp)
            m.params[i] = p0
            let num = (lp - lm) / (2 * eps)
            let err = abs(num - g[i]) / max(1e-4, abs(num) + abs(g[i]))
            worst = max(worst, err)
            #expect(err < 1e-4, "\(mode) \(t.name)[\(k)]: numeric \(num) analytic \(g[i])")
            if g[i] != 0 { any = true }
        }
        if t.name.hasSuffix("router") { #expect(any, "router gets gradient under \(mode)") }
    }
}

@Test func gradientsNoReplay() { gradCheck(override: .none) }
@Test func gradientsR2() { gradCheck(override: .r2) }
@Test func gradientsR3() { gradCheck(override: .r3) }

@Test func replayGatesAreRestrictedSoftmax() {
    let m = Model<Double>(cfg: tiny, seed: 1)
    let toks = [11, 2, 7, 10, 7]
    let rows = toks.count - 1
    let ov = [UInt16]((0..<(rows * tiny.layers)).flatMap { _ in [UInt16(3), UInt16(0)] })
    let f = m.forward(tokens: toks, override: ov)
    for s in 0..<(rows * tiny.layers) {
        let z = f.routerLogits[(s * 4)..<(s * 4 + 4)].map { Double($0) }
        let e3 = exp(z[3]), e0 = exp(z[0])
        #expect(abs(Double(f.gates[s * 2]) - e3 / (e3 + e0)) < 1e-6)
    }
}

@Test func enginesDiverge() {
    let cfg = ModelConfig(vocab: 12, width: 16, heads: 2, layers: 2, experts: 8, topK: 2, hidden: 16)
    let m = Model<Float>(cfg: cfg, seed: 2)
    let eng = RolloutEngine(model: m)
    var rng = RNG(4)
    var flips = 0, total = 0
    var maxLpDiff: Float = 0
    for _ in 0..<12 {
        let prompt = Task.prompt((0..<3).map { _ in rng.int(10) })
        let r = eng.generate(prompt: prompt, respLen: 3, temperature: 1, rng: &rng)
        #expect(r.tokens.count == 8 && r.ids.count == 7 * 2 * 2 && r.logprobs.count == 3)
        let f = m.forward(tokens: r.tokens, keep: false)
        let fr = flipRate(r.ids, f.natural, topK: 2)
        flips += fr.flips; total += fr.total
        for j in 0..<3 { maxLpDiff = max(maxLpDiff, abs(f.logp[4 + j] - r.logprobs[j])) }
    }
    #expect(flips > 0, "natural flip rate \(flips)/\(total)")
    #expect(maxLpDiff > 0)
    #expect(flips < total)
}

@Test func r3ReplaysRolloutRoutingFromDisk() throws {
    let out = tmpDir("r3")
    defer { try? FileManager.default.removeItem(atPath: out) }
    let tr = Trainer(tinyTrain(.r3, out))
    let met = try tr.runStep()
    #expect(met.flipRateApplied == 0)
    #expect(tr.lastUpdateApplied == tr.lastRollout)
    #expect(tr.lastOldApplied == tr.lastRollout)
    // The rollout trace holds the routing, logprobs and rewards.
    let recs = try TraceReader(path: out + "/traces/step-0000.rollout.rtrace").readAll()
    #expect(recs.count == 6)
    #expect(recs.map(\.expertIDs) == tr.lastRollout)
    #expect(recs.allSatisfy { $0.logprobs.count == 2 && $0.reward != nil && $0.rowCount == 5 })
    let train = try TraceReader(path: out + "/traces/step-0000.train.rtrace")
    #expect(train.header.engine.role == .train)
}

@Test func r3ReadsTheFileNotMemory() throws {
    let out = tmpDir("r3tamper")
    defer { try? FileManager.default.removeItem(atPath: out) }
    let tr = Trainer(tinyTrain(.r3, out))
    var tampered: [[UInt16]] = []
    tr.beforeReplayRead = { path in
        let r = try TraceReader(path: path)
        let h = r.header
        var recs = try r.readAll()
        for i in 0..<recs.count { recs[i].expertIDs = recs[i].expertIDs.map { ($0 + 1) % 8 } }
        tampered = recs.map(\.expertIDs)
        let w = try TraceWriter(path: path, header: h)
        for x in recs { try w.append(x) }
        try w.close()
    }
    let met = try tr.runStep()
    #expect(tr.lastUpdateApplied == tampered)
    #expect(tr.lastOldApplied == tampered)
    #expect(met.flipRateApplied == 1)
}

@Test func r2ReplaysOldPolicyRouting() throws {
    let out = tmpDir("r2")
    defer { try? FileManager.default.removeItem(atPath: out) }
    var c = tinyTrain(.r2, out)
    c.lr = 0.05
    let tr = Trainer(c)
    let met = try tr.runStep()
    #expect(tr.lastUpdateApplied == tr.lastOldApplied)
    #expect(tr.lastReplay == tr.lastOldApplied)
    #expect(met.flipRateApplied == met.flipRateNatural)
    // The train trace records the old-pass routing that was replayed.
    let recs = try TraceReader(path: out + "/traces/step-0000.train.rtrace").readAll()
    #expect(recs.map(\.expertIDs) == tr.lastOldApplied)
}

@Test func deterministicRuns() throws {
    func go(_ name: String) throws -> ([String], Data) {
        let out = tmpDir(name)
        defer { try? FileManager.default.removeItem(atPath: out) }
        var c = tinyTrain(.r3, out, steps: 2, seed: 11)
        c.tis = 2
        let ms = try Trainer(c).run()
        let lines = try String(contentsOfFile: out + "/metrics.jsonl", encoding: .utf8).split(separator: "\n")
        #expect(lines.count == 2)
        #expect(lines[0].hasPrefix("{\"step\":0,\"reward\":"))
        #expect(lines[0].contains("\"time_replay_s\":"))
        return (ms.map { $0.json(timing: false) }, try Data(contentsOf: URL(fileURLWithPath: out + "/checkpoint.safetensors")))
    }
    let a = try go("detA"), b = try go("detB")
    #expect(a.0 == b.0)
    #expect(a.1 == b.1)
    // safetensors layout
    let d = [UInt8](a.1)
    var n = 0
    for i in 0..<8 { n |= Int(d[i]) << (8 * i) }
    let obj = try JSONSerialization.jsonObject(with: Data(d[8..<(8 + n)])) as! [String: Any]
    let layout = ParamLayout(ModelConfig(vocab: 12, width: 8, heads: 2, layers: 2, experts: 8, topK: 2, hidden: 8))
    #expect(obj.count == layout.tensors.count)
    #expect(d.count == 8 + n + layout.total * 4)
    let r = obj["layers.1.router"] as! [String: Any]
    #expect(r["dtype"] as? String == "F32")
    #expect((r["shape"] as? [Int]) == [8, 8])
}

@Test func flipRateCountsSets() {
    #expect(flipRate([1, 2, 3, 4], [2, 1, 3, 5], topK: 2) == (1, 2))
}

@Test func metricsMatchTheTraces() throws {
    let out = tmpDir("none")
    defer { try? FileManager.default.removeItem(atPath: out) }
    let tr = Trainer(tinyTrain(.none, out))
    let met = try tr.runStep()
    let ro = try TraceReader(path: out + "/traces/step-0000.rollout.rtrace")
    let tn = try TraceReader(path: out + "/traces/step-0000.train.rtrace")
    #expect(ro.header.engine.role == .rollout && tn.header.engine.role == .train)
    let a = try ro.readAll(), b = try tn.readAll()
    #expect(a.map(\.uid) == b.map(\.uid))
    var flips = 0, total = 0, k3 = 0.0, n = 0
    for (x, y) in zip(a, b) {
        #expect(x.tokens == y.tokens && x.reward == y.reward)
        let f = flipRate(x.expertIDs, y.expertIDs, topK: 2)
        flips += f.flips; total += f.total
        for j in 0..<x.logprobs.count {
            let lr = Double(y.logprobs[j]) - Double(x.logprobs[j])
            k3 += exp(lr) - 1 - lr; n += 1
        }
    }
    #expect(met.flipRateApplied == Double(flips) / Double(total))
    #expect(met.flipRateApplied == met.flipRateNatural)
    #expect(abs(met.k3 - k3 / Double(n)) < 1e-12)
    #expect(met.k3 >= 0 && met.reward >= 0 && met.reward <= 1 && met.gradNorm > 0 && met.entropy > 0)
}
