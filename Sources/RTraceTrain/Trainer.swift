import Foundation
import RTrace

/// Which routing the policy update uses.
public enum ReplayMode: String, Sendable, CaseIterable {
    /// The training router decides.
    case none
    /// The routing the training engine recorded in its old-policy pass.
    case r2
    /// The routing the rollout engine recorded, read back from the rollout trace on disk.
    case r3
}

/// Everything a run needs.
public struct TrainConfig: Sendable {
    public var model = ModelConfig(vocab: Task.vocab, width: 32, heads: 2, layers: 2, experts: 8, topK: 2)
    public var mode: ReplayMode = .none
    public var steps = 10
    public var seed: UInt64 = 0
    public var lr = 3e-3
    public var groupSize = 8
    public var prompts = 8
    public var minibatches = 4
    public var temperature = 1.0
    public var clip = 0.2
    /// Truncated importance sampling cap, or nil for plain PPO against the rollout logprobs.
    public var tis: Double? = nil
    public var lbCoef = 0.01
    public var maxGradNorm = 1.0
    public var digits = 3
    public var out: String = "replay-out"
    /// Whether to write the per-step train trace (the rollout trace is always written).
    public var writeTrainTrace = true
    public init() {}
}

/// The toy task: reverse a string of digits. Tokens 0–9 are digits, 10 separates, 11 begins.
public enum Task {
    public static let vocab = 12
    public static let sep = 10, bos = 11
    public static func prompt(_ digits: [Int]) -> [Int] { [bos] + digits + [sep] }
    /// Fraction of response positions equal to the reversed digits.
    public static func reward(digits: [Int], response: [Int]) -> Double {
        let want = Array(digits.reversed())
        var ok = 0
        for i in 0..<want.count where i < response.count && response[i] == want[i] { ok += 1 }
        return Double(ok) / Double(want.count)
    }
}

/// One step's metrics.
public struct StepMetrics: Sendable, Equatable {
    public var step = 0
    public var reward = 0.0
    public var k1 = 0.0
    public var k3 = 0.0
    public var extremeFrac2 = 0.0
    public var flipRateNatural = 0.0
    public var flipRateApplied = 0.0
    public var gradNorm = 0.0
    public var entropy = 0.0
    public var timeRollout = 0.0
    public var timeTrain = 0.0
    public var timeReplay = 0.0
    /// Writing the rollout trace (part of `timeRollout`).
    public var timeTraceWrite = 0.0

    static func num(_ x: Double) -> String { x.isFinite ? "\(x)" : "null" }

    /// One JSON line; without timing keys when `timing` is false (for determinism checks).
    public func json(timing: Bool = true) -> String {
        var kv: [(String, String)] = [
            ("step", "\(step)"), ("reward", Self.num(reward)), ("k1", Self.num(k1)), ("k3", Self.num(k3)),
            ("extreme_frac_2", Self.num(extremeFrac2)), ("flip_rate_natural", Self.num(flipRateNatural)),
            ("flip_rate_applied", Self.num(flipRateApplied)), ("grad_norm", Self.num(gradNorm)), ("entropy", Self.num(entropy)),
        ]
        if timing {
            kv += [("time_rollout_s", Self.num(timeRollout)), ("time_train_s", Self.num(timeTrain)), ("time_replay_s", Self.num(timeReplay)),
                   ("time_trace_write_s", Self.num(timeTraceWrite))]
        }
        return "{" + kv.map { "\"\($0.0)\":\($0.1)" }.joined(separator: ",") + "}"
    }
}

/// One sampled sequence of a rollout batch.
public struct Sample: Sendable {
    public var uid: String
    public var group: String
    public var tokens: [Int]
    public var promptLength: Int
    public var digits: [Int]
    /// Rollout logprobs of the response tokens.
    public var logprobs: [Float]
    /// Rollout routing, rows × layers × K.
    public var ids: [UInt16]
    public var gates: [Float]
    public var routerLogits: [Float]
    public var reward: Double
}

/// The rollout engine: token-by-token sampling with a KV cache on bf16-rounded weights, bf16
/// activations at matmul boundaries and reversed summation.
public struct RolloutEngine {
    public let model: Model<Float>
    let w: Buf<Float>
    public init(model: Model<Float>) {
        self.model = model
        w = model.params.copy()
        for i in 0..<w.count { w[i] = bf16(w[i]) }
    }

    /// Samples `respLen` tokens after `prompt`, recording routing, gates, router logits and logprobs.
    public func generate(prompt: [Int], respLen: Int, temperature: Double, rng: inout RNG) -> (tokens: [Int], logprobs: [Float], ids: [UInt16], gates: [Float], logits: [Float]) {
        let st = SeqState<Float>(layers: model.cfg.layers, keep: false)
        var toks = prompt
        var lps: [Float] = [], ids: [UInt16] = [], gates: [Float] = [], logits: [Float] = []
        let total = prompt.count + respLen
        for t in 0..<(total - 1) {
            let o = model.step(toks[t], t, nil, st, .rollout, w.p)
            ids += o.ids.map { UInt16($0) }; gates += o.gates; logits += o.routerLogits
            if t + 1 >= prompt.count {
                // Sample from softmax(logits / T) in Double.
                let z = o.logits.map { Double($0) / temperature }
                let m = z.max()!
                let ex = z.map { Foundation.exp($0 - m) }
                let s = ex.reduce(0, +)
                let u = rng.double() * s
                var acc = 0.0, tok = ex.count - 1
                for (i, e) in ex.enumerated() { acc += e; if u < acc { tok = i; break } }
                lps.append(Float(Foundation.log(ex[tok] / s)))
                toks.append(tok)
            }
        }
        return (toks, lps, ids, gates, logits)
    }
}

/// Fraction of (row, layer) whose top-k sets differ.
public func flipRate(_ a: [UInt16], _ b: [UInt16], topK: Int) -> (flips: Int, total: Int) {
    precondition(a.count == b.count)
    var flips = 0
    let n = a.count / topK
    for s in 0..<n {
        let x = a[(s * topK)..<((s + 1) * topK)].sorted(), y = b[(s * topK)..<((s + 1) * topK)].sorted()
        if x != y { flips += 1 }
    }
    return (flips, n)
}

/// GRPO with PPO clipping, Adam, and optional routing replay (R2/R3).
public final class Trainer {
    public let cfg: TrainConfig
    public let model: Model<Float>
    let m: Buf<Float>, v: Buf<Float>, grad: Buf<Float>
    var rng: RNG
    public private(set) var step = 0
    var adamT = 0

    /// Called with the rollout trace path after it is written and before R3 reads it back (tests).
    public var beforeReplayRead: ((String) throws -> Void)?
    /// The routing of the last step: rollout, old-policy pass (applied), and the last update forward (applied), per sample.
    public private(set) var lastRollout: [[UInt16]] = []
    public private(set) var lastOldApplied: [[UInt16]] = []
    public private(set) var lastUpdateApplied: [[UInt16]] = []
    /// The replay ids used in the last step's updates (r2/r3), per sample.
    public private(set) var lastReplay: [[UInt16]] = []

    public convenience init(_ cfg: TrainConfig) {
        var c = cfg.model
        c.vocab = Task.vocab
        self.init(cfg, model: Model(cfg: c, seed: cfg.seed &+ 17))
    }

    /// A trainer starting from given weights (a loaded checkpoint); `cfg.model` is replaced by the model's geometry.
    /// Adam's moments start at zero.
    public init(_ cfg: TrainConfig, model: Model<Float>) {
        var c = cfg
        c.model = model.cfg
        self.cfg = c
        self.model = model
        m = Buf(count: model.layout.total); v = Buf(count: model.layout.total); grad = Buf(count: model.layout.total)
        rng = RNG(cfg.seed)
    }

    /// The header's policy version. RTrace's reader on Linux rejects 0 and 1 (NSNumber reads as Bool),
    /// so those are left out; the step is always in the attributes.
    static func policyVersion(_ s: Int) -> Int? { s >= 2 ? s : nil }

    var geometry: ModelGeometry {
        ModelGeometry(name: "rtrace-toy-moe", numLayers: model.cfg.layers, numExperts: model.cfg.experts, topK: model.cfg.topK)
    }

    func path(_ kind: String, _ s: Int) -> String {
        String(format: "%@/traces/step-%04d.%@.rtrace", cfg.out, s, kind)
    }

    /// Samples the rollout batch and writes its trace.
    func rollout(step s: Int) throws -> (samples: [Sample], writeTime: Double) {
        let eng = RolloutEngine(model: model)
        var samples: [Sample] = []
        let n = cfg.digits
        for p in 0..<cfg.prompts {
            let digits = (0..<n).map { _ in rng.int(10) }
            let prompt = Task.prompt(digits)
            for g in 0..<cfg.groupSize {
                let r = eng.generate(prompt: prompt, respLen: n, temperature: cfg.temperature, rng: &rng)
                let resp = Array(r.tokens[prompt.count...])
                samples.append(Sample(uid: "s\(s)-p\(p)-g\(g)", group: "s\(s)-p\(p)", tokens: r.tokens, promptLength: prompt.count,
                                      digits: digits, logprobs: r.logprobs, ids: r.ids, gates: r.gates, routerLogits: r.logits,
                                      reward: Task.reward(digits: digits, response: resp)))
            }
        }
        let h = TraceHeader(engine: EngineInfo(name: "rtrace-toy-rollout", version: "1", role: .rollout), model: geometry,
                            columns: ColumnTypes(topkWeights: .f32, routerLogits: .f32, logprobs: true), policyVersion: Trainer.policyVersion(s),
                            attributes: ["step": "\(s)", "numerics": "bf16 activations and weights, reversed summation, kv cache",
                                         "vocab": "\(model.cfg.vocab)", "temperature": "\(cfg.temperature)"])
        let tw = Date()
        let w = try TraceWriter(path: path("rollout", s), header: h)
        for x in samples {
            try w.append(TraceRecord(uid: x.uid, group: x.group, tokens: x.tokens.map { Int32($0) }, promptLength: x.promptLength,
                                     start: 0, rowCount: x.tokens.count - 1, layers: model.cfg.layers, topK: model.cfg.topK,
                                     expertIDs: x.ids, weights: FloatArray(dtype: .f32, values: x.gates),
                                     logits: FloatArray(dtype: .f32, values: x.routerLogits), logprobs: x.logprobs, reward: x.reward))
        }
        try w.close()
        return (samples, Date().timeIntervalSince(tw))
    }

    /// Reads the rollout routing back from the trace on disk, by uid.
    func readReplay(step s: Int) throws -> [String: [UInt16]] {
        let p = path("rollout", s)
        try beforeReplayRead?(p)
        let r = try TraceReader(path: p)
        var out: [String: [UInt16]] = [:]
        try r.forEachRecord { rec in
            guard rec.start == 0 else { throw TraceError(.invalidInput, "record \(rec.uid) does not start at row 0") }
            out[rec.uid] = rec.expertIDs
        }
        return out
    }

    /// One GRPO step: rollout, old-policy pass, mini-batch updates.
    @discardableResult
    public func runStep() throws -> StepMetrics {
        let s = step
        var met = StepMetrics()
        met.step = s
        try FileManager.default.createDirectory(atPath: cfg.out + "/traces", withIntermediateDirectories: true)
        let t0 = Date()
        let (samples, tw) = try rollout(step: s)
        met.timeRollout = Date().timeIntervalSince(t0)
        met.timeTraceWrite = tw
        let K = model.cfg.topK, L = model.cfg.layers

        // Replay source.
        var replay: [[UInt16]?] = Array(repeating: nil, count: samples.count)
        if cfg.mode == .r3 {
            let t1 = Date()
            let byUID = try readReplay(step: s)
            for (i, x) in samples.enumerated() {
                guard let ids = byUID[x.uid], ids.count == (x.tokens.count - 1) * L * K else {
                    throw TraceError(.invalidInput, "rollout trace lacks routing for \(x.uid)")
                }
                replay[i] = ids
            }
            met.timeReplay = Date().timeIntervalSince(t1)
        }
        try update(samples: samples, replay: replay, met: &met)
        step += 1
        return met
    }

    /// One GRPO step on a rollout batch recorded elsewhere: its sequences, logprobs, rewards and
    /// routing are read from the rollout trace at `path` (under r3 its routing is replayed).
    /// Refuses a trace whose geometry or vocabulary does not match the model.
    @discardableResult
    public func runStep(rolloutTrace path: String) throws -> StepMetrics {
        var met = StepMetrics()
        try FileManager.default.createDirectory(atPath: cfg.out + "/traces", withIntermediateDirectories: true)
        let t0 = Date()
        let (samples, s) = try Trainer.loadRolloutTrace(path: path, model: model.cfg, temperature: cfg.temperature)
        met.timeRollout = Date().timeIntervalSince(t0)
        step = s
        met.step = s
        let replay: [[UInt16]?] = cfg.mode == .r3 ? samples.map { Optional($0.ids) } : Array(repeating: nil, count: samples.count)
        try update(samples: samples, replay: replay, met: &met)
        step += 1
        return met
    }

    /// Reads a rollout batch from a trace, checking it against the model geometry `c`.
    /// Returns the samples (in file order) and the trace's step (attribute `step`, else policy version, else 0).
    /// A `temperature` attribute in the trace must equal `temperature` when that is given.
    public static func loadRolloutTrace(path: String, model c: ModelConfig, temperature: Double? = nil) throws -> ([Sample], Int) {
        func bad(_ m: String) -> TraceError { TraceError(.geometryMismatch, m, file: path) }
        let r = try TraceReader(path: path)
        let g = r.header.model
        if g.numLayers != c.layers { throw bad("model.num_layers is \(g.numLayers), the checkpoint has \(c.layers) layers") }
        if g.layerMap != Array(0..<c.layers) { throw bad("model.layer_map is \(g.layerMap), the checkpoint's \(c.layers) layers are all MoE") }
        if g.numExperts != c.experts { throw bad("model.num_experts is \(g.numExperts), the checkpoint has \(c.experts) experts") }
        if g.topK != c.topK { throw bad("model.top_k is \(g.topK), the checkpoint has top_k \(c.topK)") }
        if let v = r.header.attributes["vocab"], Int(v) != c.vocab {
            throw bad("attributes.vocab is \(v), the checkpoint has vocab \(c.vocab)")
        }
        if let temperature, let v = r.header.attributes["temperature"], let tv = Double(v), tv != temperature {
            throw TraceError(.invalidInput, "attributes.temperature is \(v), the step samples at --temperature \(temperature): "
                             + "its logprob ratios against the trace would be wrong", file: path)
        }
        var samples: [Sample] = []
        let L = c.layers, K = c.topK
        try r.forEachRecord { rec in
            func inv(_ m: String) -> TraceError { TraceError(.invalidInput, "record \(rec.uid): \(m)", file: path) }
            let n = rec.tokens.count
            guard n >= 2, rec.promptLength >= 1, rec.promptLength < n else {
                throw inv("needs a prompt and a response (\(n) tokens, prompt length \(rec.promptLength))")
            }
            if let t = rec.tokens.first(where: { $0 < 0 || Int($0) >= c.vocab }) {
                throw TraceError(.geometryMismatch, "record \(rec.uid): token id \(t) is outside the checkpoint's vocab of \(c.vocab)", file: path)
            }
            guard rec.start == 0, rec.rowCount == n - 1 else {
                throw inv("routing covers rows \(rec.start)..<\(rec.start + rec.rowCount), replay needs every row 0..<\(n - 1)")
            }
            guard rec.expertIDs.count == (n - 1) * L * K, rec.expertIDs.allSatisfy({ Int($0) < c.experts }) else {
                throw inv("routing has missing or out-of-range expert ids")
            }
            guard rec.logprobs.count == n - rec.promptLength else {
                throw inv("has \(rec.logprobs.count) logprobs, expected one per response token (\(n - rec.promptLength))")
            }
            guard let rw = rec.reward, rw.isFinite else { throw inv("has no reward") }
            samples.append(Sample(uid: rec.uid, group: rec.group ?? rec.uid, tokens: rec.tokens.map { Int($0) }, promptLength: rec.promptLength,
                                  digits: [], logprobs: rec.logprobs, ids: rec.expertIDs, gates: rec.weights?.floats ?? [],
                                  routerLogits: rec.logits?.floats ?? [], reward: rw))
        }
        if samples.isEmpty { throw TraceError(.invalidInput, "the rollout trace holds no sequences", file: path) }
        let s = r.header.attributes["step"].flatMap { Int($0) } ?? r.header.policyVersion ?? 0
        return (samples, s)
    }

    /// Group-normalised advantages: (r − mean) / (std + 1e-6) within each group, groups in order of first appearance.
    static func advantages(_ samples: [Sample]) -> [Double] {
        var order: [String] = []
        var members: [String: [Int]] = [:]
        for (i, x) in samples.enumerated() {
            if members[x.group] == nil { order.append(x.group) }
            members[x.group, default: []].append(i)
        }
        var adv = [Double](repeating: 0, count: samples.count)
        for g in order {
            let ix = members[g]!
            let rs = ix.map { samples[$0].reward }
            let mean = rs.reduce(0, +) / Double(rs.count)
            let sd = (rs.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(rs.count)).squareRoot()
            for (j, i) in ix.enumerated() { adv[i] = (rs[j] - mean) / (sd + 1e-6) }
        }
        return adv
    }

    /// Old-policy pass, train trace, advantages and mini-batch updates on a rollout batch.
    func update(samples: [Sample], replay replayIn: [[UInt16]?], met: inout StepMetrics) throws {
        let s = step
        let K = model.cfg.topK, L = model.cfg.layers
        var replay = replayIn
        let t2 = Date()
        // Old-policy pass with the training engine.
        var oldLogp: [[Float]] = []
        var oldApplied: [[UInt16]] = []
        var k1 = 0.0, k3 = 0.0, ext = 0, ntok = 0, ent = 0.0
        var natF = 0, appF = 0, nRL = 0
        var trainRecords: [TraceRecord] = []
        for (i, x) in samples.enumerated() {
            let nResp = x.logprobs.count
            let f = model.forward(tokens: x.tokens, override: replay[i], temperature: cfg.temperature, keep: false)
            let resp = Array(f.logp.suffix(nResp))
            oldLogp.append(resp)
            oldApplied.append(f.ids)
            for j in 0..<nResp {
                let lr = Double(resp[j]) - Double(x.logprobs[j])  // log r, r = π_train / π_rollout
                let r = Foundation.exp(lr)
                k1 += -lr
                k3 += r - 1 - lr
                if r > 2 || r < 0.5 { ext += 1 }
                ntok += 1
                ent += Double(f.entropy[f.entropy.count - nResp + j])
            }
            let a = flipRate(x.ids, f.natural, topK: K), b = flipRate(x.ids, f.ids, topK: K)
            natF += a.flips; appF += b.flips; nRL += a.total
            if cfg.writeTrainTrace {
                trainRecords.append(TraceRecord(uid: x.uid, group: x.group, tokens: x.tokens.map { Int32($0) }, promptLength: x.promptLength,
                                                start: 0, rowCount: x.tokens.count - 1, layers: L, topK: K, expertIDs: f.ids,
                                                weights: FloatArray(dtype: .f32, values: f.gates),
                                                logits: FloatArray(dtype: .f32, values: f.routerLogits), logprobs: resp, reward: x.reward))
            }
        }
        if cfg.writeTrainTrace {
            let h = TraceHeader(engine: EngineInfo(name: "rtrace-toy-train", version: "1", role: .train), model: geometry,
                                columns: ColumnTypes(topkWeights: .f32, routerLogits: .f32, logprobs: true), policyVersion: Trainer.policyVersion(s),
                                attributes: ["step": "\(s)", "mode": cfg.mode.rawValue, "pass": "old-policy", "vocab": "\(model.cfg.vocab)"])
            let w = try TraceWriter(path: path("train", s), header: h)
            for r in trainRecords { try w.append(r) }
            try w.close()
        }
        met.k1 = k1 / Double(ntok); met.k3 = k3 / Double(ntok); met.extremeFrac2 = Double(ext) / Double(ntok)
        met.entropy = ent / Double(ntok)
        met.flipRateNatural = Double(natF) / Double(nRL); met.flipRateApplied = Double(appF) / Double(nRL)
        met.reward = samples.map(\.reward).reduce(0, +) / Double(samples.count)
        if cfg.mode == .r2 { replay = oldApplied.map { Optional($0) } }
        lastRollout = samples.map(\.ids); lastOldApplied = oldApplied; lastReplay = replay.map { $0 ?? [] }
        lastUpdateApplied = Array(repeating: [], count: samples.count)

        let adv = Trainer.advantages(samples)

        // Mini-batch updates over a shuffled order.
        var order = Array(0..<samples.count)
        for i in stride(from: order.count - 1, to: 0, by: -1) { order.swapAt(i, rng.int(i + 1)) }
        let mb = max(1, cfg.minibatches)
        var gnSum = 0.0
        for b in 0..<mb {
            let idx = order.enumerated().filter { $0.offset % mb == b }.map(\.element)
            if idx.isEmpty { continue }
            grad.zero()
            let nTok = Float(idx.reduce(0) { $0 + samples[$1].logprobs.count })
            for i in idx {
                let x = samples[i]
                let nResp = x.logprobs.count
                let f = model.forward(tokens: x.tokens, override: replay[i], temperature: cfg.temperature, keep: true)
                lastUpdateApplied[i] = f.ids
                var dlogp = [Float](repeating: 0, count: f.logp.count)
                let base = f.logp.count - nResp
                for j in 0..<nResp {
                    let lp = Double(f.logp[base + j])
                    let A = adv[i]
                    var ratio: Double, w = 1.0
                    if let c = cfg.tis {
                        ratio = Foundation.exp(lp - Double(oldLogp[i][j]))
                        w = min(Foundation.exp(Double(oldLogp[i][j]) - Double(x.logprobs[j])), c)
                    } else {
                        ratio = Foundation.exp(lp - Double(x.logprobs[j]))
                    }
                    let clipped = min(max(ratio, 1 - cfg.clip), 1 + cfg.clip)
                    // Loss −w·min(ratio·A, clip(ratio)·A); gradient flows only through the unclipped branch.
                    if ratio * A <= clipped * A { dlogp[base + j] = Float(-w * ratio * A) / nTok }
                }
                model.backward(f, dlogp: dlogp, lbScale: Float(cfg.lbCoef) / Float(idx.count), grad: grad)
            }
            var gn = 0.0
            for i in 0..<grad.count { gn += Double(grad[i]) * Double(grad[i]) }
            gn = gn.squareRoot()
            gnSum += gn
            let sc = gn > cfg.maxGradNorm ? Float(cfg.maxGradNorm / gn) : 1
            adam(scale: sc)
        }
        met.gradNorm = gnSum / Double(mb)
        met.timeTrain = Date().timeIntervalSince(t2)
    }

    func adam(scale: Float) {
        adamT += 1
        let b1: Float = 0.9, b2: Float = 0.999, eps: Float = 1e-8, lr = Float(cfg.lr)
        let c1 = 1 - Foundation.pow(b1, Float(adamT)), c2 = 1 - Foundation.pow(b2, Float(adamT))
        let P = model.params.p
        for i in 0..<grad.count {
            let g = grad[i] * scale
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            P[i] -= lr * (m[i] / c1) / ((v[i] / c2).squareRoot() + eps)
        }
    }

    /// Runs every step, writing metrics.jsonl and the checkpoint.
    @discardableResult
    public func run(progress: ((StepMetrics) -> Void)? = nil) throws -> [StepMetrics] {
        try FileManager.default.createDirectory(atPath: cfg.out + "/traces", withIntermediateDirectories: true)
        let mpath = cfg.out + "/metrics.jsonl"
        FileManager.default.createFile(atPath: mpath, contents: nil)
        guard let fh = FileHandle(forWritingAtPath: mpath) else { throw TraceError(.invalidInput, "cannot write \(mpath)") }
        defer { try? fh.close() }
        var all: [StepMetrics] = []
        for _ in 0..<cfg.steps {
            let met = try runStep()
            fh.write(Data((met.json() + "\n").utf8))
            all.append(met)
            progress?(met)
        }
        try saveCheckpoint(model: model, path: cfg.out + "/checkpoint.safetensors")
        return all
    }

    /// One step on the rollout trace at `path` (see ``runStep(rolloutTrace:)``), writing metrics.jsonl,
    /// traces/step-NNNN.train.rtrace and checkpoint.safetensors under `cfg.out`.
    @discardableResult
    public func run(rolloutTrace path: String) throws -> StepMetrics {
        try FileManager.default.createDirectory(atPath: cfg.out + "/traces", withIntermediateDirectories: true)
        let met = try runStep(rolloutTrace: path)
        try Data((met.json() + "\n").utf8).write(to: URL(fileURLWithPath: cfg.out + "/metrics.jsonl"))
        try saveCheckpoint(model: model, path: cfg.out + "/checkpoint.safetensors")
        return met
    }
}

/// Writes the model's tensors as safetensors: u64 LE header length, JSON header, raw f32 LE data.
/// The geometry goes in `__metadata__` (string values: vocab, width, heads, layers, experts, top_k, hidden).
public func saveCheckpoint(model: Model<Float>, path: String) throws {
    let c = model.cfg
    let meta = [("vocab", c.vocab), ("width", c.width), ("heads", c.heads), ("layers", c.layers), ("experts", c.experts),
                ("top_k", c.topK), ("hidden", c.hidden)].map { "\"\($0.0)\":\"\($0.1)\"" }.joined(separator: ",")
    var entries: [String] = ["\"__metadata__\":{\(meta)}"]
    var off = 0
    for t in model.layout.tensors {
        let n = t.count * 4
        entries.append("\"\(t.name)\":{\"dtype\":\"F32\",\"shape\":[\(t.shape.map(String.init).joined(separator: ","))],\"data_offsets\":[\(off),\(off + n)]}")
        off += n
    }
    var header = Array(("{" + entries.joined(separator: ",") + "}").utf8)
    while header.count % 8 != 0 { header.append(0x20) }
    var bytes: [UInt8] = []
    bytes.reserveCapacity(8 + header.count + off)
    var len = UInt64(header.count).littleEndian
    withUnsafeBytes(of: &len) { bytes.append(contentsOf: $0) }
    bytes += header
    for t in model.layout.tensors {
        for i in 0..<t.count {
            var b = model.params[t.offset + i].bitPattern.littleEndian
            withUnsafeBytes(of: &b) { bytes.append(contentsOf: $0) }
        }
    }
    try Data(bytes).write(to: URL(fileURLWithPath: path))
}

/// Reads a checkpoint written by ``saveCheckpoint(model:path:)``: geometry from `__metadata__`, every
/// tensor of that geometry's layout as F32 with the expected shape.
public func loadCheckpoint(path: String) throws -> Model<Float> {
    func bad(_ m: String) -> TraceError { TraceError(.invalidInput, m, file: path) }
    let d: Data
    do { d = try Data(contentsOf: URL(fileURLWithPath: path)) } catch { throw TraceError(.io, "cannot read: \(error.localizedDescription)", file: path) }
    let bytes = [UInt8](d)
    guard bytes.count >= 8 else { throw bad("not a safetensors file (shorter than 8 bytes)") }
    var n = 0
    for i in 0..<8 { n |= Int(bytes[i]) << (8 * i) }
    guard n > 0, n <= bytes.count - 8 else { throw bad("safetensors header length \(n) exceeds the file") }
    guard let obj = (try? JSONSerialization.jsonObject(with: Data(bytes[8..<(8 + n)]))) as? [String: Any] else {
        throw bad("safetensors header is not a JSON object")
    }
    guard let meta = obj["__metadata__"] as? [String: String] else { throw bad("__metadata__ is missing (the model geometry)") }
    func field(_ k: String) throws -> Int {
        guard let s = meta[k], let v = Int(s), v >= 1 else { throw bad("__metadata__.\(k) is missing or not a positive integer") }
        return v
    }
    let width = try field("width"), heads = try field("heads"), experts = try field("experts"), topK = try field("top_k")
    guard width % heads == 0, (width / heads) % 2 == 0 else { throw bad("__metadata__: width \(width) / heads \(heads) must be even") }
    guard topK <= experts else { throw bad("__metadata__.top_k \(topK) exceeds experts \(experts)") }
    let cfg = ModelConfig(vocab: try field("vocab"), width: width, heads: heads, layers: try field("layers"), experts: experts,
                          topK: topK, hidden: try field("hidden"))
    let layout = ParamLayout(cfg)
    let params = Buf<Float>(count: layout.total)
    let base = 8 + n
    for t in layout.tensors {
        guard let e = obj[t.name] as? [String: Any] else { throw bad("tensor \(t.name) is missing") }
        guard e["dtype"] as? String == "F32" else { throw bad("tensor \(t.name): dtype \(e["dtype"] ?? "?"), expected F32") }
        guard let shape = e["shape"] as? [Int], shape == t.shape else {
            throw bad("tensor \(t.name): shape \(e["shape"] ?? "?"), expected \(t.shape)")
        }
        guard let off = e["data_offsets"] as? [Int], off.count == 2, off[1] - off[0] == t.count * 4, off[0] >= 0,
              base + off[1] <= bytes.count else { throw bad("tensor \(t.name): bad data_offsets") }
        for i in 0..<t.count {
            let o = base + off[0] + 4 * i
            let u = UInt32(bytes[o]) | UInt32(bytes[o + 1]) << 8 | UInt32(bytes[o + 2]) << 16 | UInt32(bytes[o + 3]) << 24
            params[t.offset + i] = Float(bitPattern: u)
        }
    }
    return Model(cfg: cfg, params: params)
}
