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
    #expect(obj.count == layout.tensors.count + 1)
    #expect((obj["__metadata__"] as? [String: String])?["top_k"] == "2")
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

@Test func checkpointRoundTrip() throws {
    let out = tmpDir("ckpt")
    defer { try? FileManager.default.removeItem(atPath: out) }
    let m = Model<Float>(cfg: ModelConfig(vocab: 12, width: 8, heads: 2, layers: 3, experts: 6, topK: 3, hidden: 4), seed: 7)
    try saveCheckpoint(model: m, path: out + "/c.safetensors")
    let r = try loadCheckpoint(path: out + "/c.safetensors")
    #expect(r.cfg == m.cfg)
    #expect(r.params.array.map(\.bitPattern) == m.params.array.map(\.bitPattern))
}

/// Records a rollout trace with the trainer, then runs one step on it from a checkpoint.
@Test func oneStepOnARecordedRolloutTrace() throws {
    let src = tmpDir("rec"), dst = tmpDir("one")
    defer { try? FileManager.default.removeItem(atPath: src); try? FileManager.default.removeItem(atPath: dst) }
    let rec = Trainer(tinyTrain(.none, src))
    try saveCheckpoint(model: rec.model, path: src + "/before.safetensors")
    let recMet = try rec.runStep()
    let trace = src + "/traces/step-0000.rollout.rtrace"
    let rolloutIDs = try TraceReader(path: trace).readAll().map(\.expertIDs)

    for mode in ReplayMode.allCases {
        var c = tinyTrain(mode, dst + "/" + mode.rawValue)
        c.model = ModelConfig()  // replaced by the checkpoint's geometry
        let tr = Trainer(c, model: try loadCheckpoint(path: src + "/before.safetensors"))
        let met = try tr.run(rolloutTrace: trace)
        // The old-policy pass sees the same weights and sequences as the recording trainer's.
        #expect(tr.lastRollout == rolloutIDs)
        #expect(met.reward == recMet.reward)
        #expect(met.flipRateNatural == recMet.flipRateNatural)
        switch mode {
        case .none:
            #expect(met.k3 == recMet.k3)
            #expect(met.flipRateApplied == met.flipRateNatural)
        case .r2:
            #expect(tr.lastUpdateApplied == tr.lastOldApplied)
        case .r3:
            #expect(met.flipRateApplied == 0)
            #expect(tr.lastOldApplied == rolloutIDs && tr.lastUpdateApplied == rolloutIDs)
        }
        let lines = try String(contentsOfFile: c.out + "/metrics.jsonl", encoding: .utf8).split(separator: "\n")
        #expect(lines.count == 1 && lines[0].hasPrefix("{\"step\":0,"))
        let tn = try TraceReader(path: c.out + "/traces/step-0000.train.rtrace")
        #expect(tn.header.attributes["mode"] == mode.rawValue)
        // Same seed, same flags, same trace → bit-identical metrics and checkpoint.
        var c2 = c
        c2.out = c.out + "-again"
        let again = Trainer(c2, model: try loadCheckpoint(path: src + "/before.safetensors"))
        #expect(try again.run(rolloutTrace: trace).json(timing: false) == met.json(timing: false))
        #expect(try Data(contentsOf: URL(fileURLWithPath: c2.out + "/checkpoint.safetensors"))
                == Data(contentsOf: URL(fileURLWithPath: c.out + "/checkpoint.safetensors")))
        let after = try loadCheckpoint(path: c.out + "/checkpoint.safetensors")
        #expect(after.params.array != (try loadCheckpoint(path: src + "/before.safetensors")).params.array, "the step updated the weights")
        #expect(after.cfg == tr.model.cfg)
    }
}

@Test func rolloutTraceGeometryMismatchIsRefused() throws {
    let src = tmpDir("geo")
    defer { try? FileManager.default.removeItem(atPath: src) }
    let rec = Trainer(tinyTrain(.none, src))
    try rec.runStep()
    let trace = src + "/traces/step-0000.rollout.rtrace"
    let base = rec.model.cfg
    var cases: [(ModelConfig, String)] = []
    var e = base; e.experts = 4; cases.append((e, "model.num_experts"))
    var k = base; k.topK = 3; cases.append((k, "model.top_k"))
    var l = base; l.layers = 3; cases.append((l, "model.num_layers"))
    var v = base; v.vocab = 13; cases.append((v, "attributes.vocab"))
    var hot = tinyTrain(.r3, src + "/hot")
    hot.temperature = 0.5
    #expect(throws: TraceError.self) { try Trainer(hot, model: rec.model).runStep(rolloutTrace: trace) }
    for (cfg, field) in cases {
        let path = src + "/bad.safetensors"
        try saveCheckpoint(model: Model<Float>(cfg: cfg, seed: 1), path: path)
        let tr = Trainer(tinyTrain(.r3, src + "/out"), model: try loadCheckpoint(path: path))
        do {
            try tr.runStep(rolloutTrace: trace)
            Issue.record("\(field): a mismatched trace was accepted")
        } catch {
            let te = error as? TraceError
            #expect(te?.kind == .geometryMismatch)
            #expect(te?.file == trace)
            #expect(te?.message.hasPrefix(field) == true, "\(String(describing: te))")
        }
    }
}

@Test func simdMatvecMatchesScalar() {
    var rng = RNG(21)
    for (rows, cols) in [(13, 16), (4, 8), (12, 64)] {
        let w = Buf<Float>(count: rows * cols)
        for i in 0..<w.count { w[i] = Float(rng.normal()) }
        let x = (0..<cols).map { _ in Float(rng.normal()) }
        let y = matvec(UnsafePointer(w.p), rows, cols, x, .train)
        for i in 0..<rows {
            var ref = 0.0
            for j in 0..<cols { ref += Double(w[i * cols + j]) * Double(x[j]) }
            #expect(abs(Double(y[i]) - ref) < 1e-4 * max(1, abs(ref)), "row \(i) of \(rows)×\(cols)")
        }
    }
}

@Test func overheadBenchRuns() throws {
    let out = tmpDir("ovh")
    defer { try? FileManager.default.removeItem(atPath: out) }
    var c = tinyTrain(.none, out)
    c.writeTrainTrace = false
    let r = try measureReplayOverhead(c, reps: 2)
    #expect(r.none.count == 2 && r.r3.count == 2 && r.noneCPU.count == 2 && r.fwdFree.count == 2 && r.fwdReplay.count == 2)
    #expect(r.read.allSatisfy { $0 > 0 } && r.write.allSatisfy { $0 > 0 })
    #expect(r.markdown.contains("r3 vs none over 2 back-to-back pairs"))
}
