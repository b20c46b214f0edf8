import Foundation
import RTrace

/// The floating-point types the model runs in: Float for training and rollout, Double for gradient checks.
public protocol Scalar: BinaryFloatingPoint, Sendable {
    static func sexp(_ x: Self) -> Self
    static func slog(_ x: Self) -> Self
    static func scos(_ x: Self) -> Self
    static func ssin(_ x: Self) -> Self
}
extension Float: Scalar {
    @inline(__always) public static func sexp(_ x: Float) -> Float { Foundation.exp(x) }
    @inline(__always) public static func slog(_ x: Float) -> Float { Foundation.log(x) }
    @inline(__always) public static func scos(_ x: Float) -> Float { Foundation.cos(x) }
    @inline(__always) public static func ssin(_ x: Float) -> Float { Foundation.sin(x) }
}
extension Double: Scalar {
    @inline(__always) public static func sexp(_ x: Double) -> Double { Foundation.exp(x) }
    @inline(__always) public static func slog(_ x: Double) -> Double { Foundation.log(x) }
    @inline(__always) public static func scos(_ x: Double) -> Double { Foundation.cos(x) }
    @inline(__always) public static func ssin(_ x: Double) -> Double { Foundation.sin(x) }
}

/// Rounds to the nearest bfloat16 (ties to even), kept in `T`.
@inline(__always) func bf16<T: Scalar>(_ v: T) -> T {
    T(Float(bitPattern: UInt32(floatToBF16(Float(v))) << 16))
}

/// Model geometry.
public struct ModelConfig: Sendable, Equatable {
    public var vocab: Int
    public var width: Int
    public var heads: Int
    public var layers: Int
    public var experts: Int
    public var topK: Int
    /// Hidden size of each SwiGLU expert.
    public var hidden: Int
    public init(vocab: Int = 12, width: Int = 32, heads: Int = 2, layers: Int = 2, experts: Int = 8, topK: Int = 2, hidden: Int? = nil) {
        self.vocab = vocab; self.width = width; self.heads = heads; self.layers = layers
        self.experts = experts; self.topK = topK; self.hidden = hidden ?? width
        precondition(width % heads == 0 && (width / heads) % 2 == 0, "width/heads must be even")
        precondition(topK >= 1 && topK <= experts)
    }
}

/// One named tensor inside the flat parameter vector.
public struct TensorInfo: Sendable {
    public var name: String
    public var offset: Int
    public var shape: [Int]
    public var count: Int { shape.reduce(1, *) }
}

/// Offsets of one block's tensors. Matrices are [out, in] row-major; experts are stacked.
public struct LayerOffsets: Sendable {
    public var n1 = 0, wq = 0, wk = 0, wv = 0, wo = 0, n2 = 0, wr = 0, w1 = 0, w3 = 0, w2 = 0
}

/// Where every tensor lives in the flat parameter vector.
public struct ParamLayout: Sendable {
    public private(set) var tensors: [TensorInfo] = []
    public private(set) var emb = 0, nf = 0, head = 0
    public private(set) var layers: [LayerOffsets] = []
    public private(set) var total = 0

    public init(_ c: ModelConfig) {
        func add(_ name: String, _ shape: [Int]) -> Int {
            let t = TensorInfo(name: name, offset: total, shape: shape)
            tensors.append(t); total += t.count
            return t.offset
        }
        let D = c.width, E = c.experts, F = c.hidden
        emb = add("embed", [c.vocab, D])
        for l in 0..<c.layers {
            var o = LayerOffsets()
            let p = "layers.\(l)."
            o.n1 = add(p + "attn_norm", [D])
            o.wq = add(p + "wq", [D, D]); o.wk = add(p + "wk", [D, D]); o.wv = add(p + "wv", [D, D]); o.wo = add(p + "wo", [D, D])
            o.n2 = add(p + "ffn_norm", [D])
            o.wr = add(p + "router", [E, D])
            o.w1 = add(p + "experts.w1", [E, F, D]); o.w3 = add(p + "experts.w3", [E, F, D]); o.w2 = add(p + "experts.w2", [E, D, F])
            layers.append(o)
        }
        nf = add("final_norm", [D])
        head = add("lm_head", [c.vocab, D])
    }
}

/// A flat, manually managed buffer (parameters, gradients, optimiser moments).
public final class Buf<T: Scalar>: @unchecked Sendable {
    public let count: Int
    public let p: UnsafeMutablePointer<T>
    public init(count: Int) {
        self.count = count
        p = .allocate(capacity: max(count, 1))
        p.initialize(repeating: 0, count: max(count, 1))
    }
    deinit { p.deallocate() }
    public subscript(i: Int) -> T {
        get { p[i] }
        set { p[i] = newValue }
    }
    public func zero() { p.update(repeating: 0, count: count) }
    public var array: [T] { Array(UnsafeBufferPointer(start: p, count: count)) }
    public func copy() -> Buf<T> {
        let b = Buf<T>(count: count); b.p.update(from: p, count: count); return b
    }
}

/// Deterministic pseudo-random numbers (SplitMix64).
public struct RNG: Sendable {
    public var state: UInt64
    public init(_ seed: UInt64) { state = seed &* 0x2545_F491_4F6C_DD1D &+ 0x1234_5678 }
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    public mutating func int(_ n: Int) -> Int { Int(next() % UInt64(n)) }
    /// Uniform in [0, 1).
    public mutating func double() -> Double { Double(next() >> 11) / Double(1 << 53) }
    public mutating func normal() -> Double {
        let u = max(double(), 1e-300), v = double()
        return (-2 * Foundation.log(u)).squareRoot() * Foundation.cos(2 * Double.pi * v)
    }
}

/// How an engine does its arithmetic: the training engine is plain fp32 in forward order; the
/// rollout engine rounds activations to bf16 at matmul boundaries and sums in reverse.
public struct Numerics: Sendable, Equatable {
    public var bf16: Bool
    public var reversed: Bool
    public static let train = Numerics(bf16: false, reversed: false)
    public static let rollout = Numerics(bf16: true, reversed: true)
}

// MARK: - kernels

@inline(__always) func dot<T: Scalar>(_ a: UnsafePointer<T>, _ b: UnsafePointer<T>, _ n: Int, _ reversed: Bool) -> T {
    if reversed {
        var s: T = 0
        var j = n - 1
        while j >= 0 { s += a[j] * b[j]; j -= 1 }
        return s
    }
    var s0: T = 0, s1: T = 0, s2: T = 0, s3: T = 0
    var j = 0
    while j + 4 <= n {
        s0 += a[j] * b[j]; s1 += a[j + 1] * b[j + 1]; s2 += a[j + 2] * b[j + 2]; s3 += a[j + 3] * b[j + 3]
        j += 4
    }
    while j < n { s0 += a[j] * b[j]; j += 1 }
    return (s0 + s1) + (s2 + s3)
}

/// y = W x, W [rows, cols] row-major. The training engine's Float path uses ``matvecSIMD8`` when
/// cols is a multiple of 8; Double (gradient checks) and the rollout engine use scalar dots.
@inline(__always) func matvec<T: Scalar>(_ w: UnsafePointer<T>, _ rows: Int, _ cols: Int, _ x: [T], _ num: Numerics) -> [T] {
    if T.self == Float.self && !num.bf16 && !num.reversed && cols % 8 == 0 {
        var y = [T](repeating: 0, count: rows)
        x.withUnsafeBufferPointer { xp in
            y.withUnsafeMutableBufferPointer { yp in
                matvecSIMD8(UnsafeRawPointer(w).assumingMemoryBound(to: Float.self), rows, cols,
                            UnsafeRawPointer(xp.baseAddress!).assumingMemoryBound(to: Float.self),
                            UnsafeMutableRawPointer(yp.baseAddress!).assumingMemoryBound(to: Float.self))
            }
        }
        return y
    }
    var xin = x
    if num.bf16 { for i in 0..<xin.count { xin[i] = bf16(xin[i]) } }
    var y = [T](repeating: 0, count: rows)
    xin.withUnsafeBufferPointer { xp in
        y.withUnsafeMutableBufferPointer { yp in
            for i in 0..<rows {
                let s = dot(w + i * cols, xp.baseAddress!, cols, num.reversed)
                yp[i] = num.bf16 ? bf16(s) : s
            }
        }
    }
    return y
}

/// dx += Wᵀ dy and dW += dy ⊗ x, W [rows, cols].
@inline(__always) func matvecBack<T: Scalar>(_ w: UnsafePointer<T>, _ gw: UnsafeMutablePointer<T>, _ rows: Int, _ cols: Int,
                                             _ x: [T], _ dy: [T], _ dx: inout [T]) {
    x.withUnsafeBufferPointer { xp in
        dx.withUnsafeMutableBufferPointer { dxp in
            for i in 0..<rows {
                let g = dy[i]
                if g == 0 { continue }
                let wr = w + i * cols, gr = gw + i * cols
                for j in 0..<cols {
                    dxp[j] += wr[j] * g
                    gr[j] += g * xp[j]
                }
            }
        }
    }
}

@inline(__always) func rmsnorm<T: Scalar>(_ x: [T], _ g: UnsafePointer<T>) -> (h: [T], r: T) {
    var ms: T = 0
    for v in x { ms += v * v }
    let r = 1 / (ms / T(x.count) + T(1e-5)).squareRoot()
    var h = x
    for i in 0..<x.count { h[i] = x[i] * r * g[i] }
    return (h, r)
}

@inline(__always) func rmsnormBack<T: Scalar>(_ x: [T], _ r: T, _ g: UnsafePointer<T>, _ gg: UnsafeMutablePointer<T>, _ dh: [T], _ dx: inout [T]) {
    let n = x.count
    var m: T = 0
    var dxh = [T](repeating: 0, count: n)
    for i in 0..<n {
        gg[i] += dh[i] * x[i] * r
        dxh[i] = dh[i] * g[i]
        m += dxh[i] * x[i] * r
    }
    m /= T(n)
    for i in 0..<n { dx[i] += r * (dxh[i] - x[i] * r * m) }
}

@inline(__always) func sigmoid<T: Scalar>(_ x: T) -> T { 1 / (1 + T.sexp(-x)) }

/// Softmax of `v` (max-subtracted), in `T`.
@inline(__always) func softmax<T: Scalar>(_ v: [T]) -> [T] {
    var m = v[0]
    for x in v where x > m { m = x }
    var out = v.map { T.sexp($0 - m) }
    var s: T = 0
    for x in out { s += x }
    for i in 0..<out.count { out[i] /= s }
    return out
}

/// The top-k indices of `z` in descending order (ties: lower index first).
public func topK<T: Comparable>(_ z: [T], _ k: Int) -> [Int] {
    var idx: [Int] = []
    idx.reserveCapacity(k)
    var used = [Bool](repeating: false, count: z.count)
    for _ in 0..<k {
        var best = -1
        for e in 0..<z.count where !used[e] {
            if best < 0 || z[e] > z[best] { best = e }
        }
        used[best] = true
        idx.append(best)
    }
    return idx
}

// MARK: - caches

struct PosCache<T: Scalar> {
    var x: [T] = [], h1: [T] = [], q: [T] = [], k: [T] = [], v: [T] = [], o: [T] = [], x2: [T] = [], h2: [T] = []
    var r1: T = 0, r2: T = 0
    var p: [T] = []          // attention probs, heads × (t+1)
    var prob: [T] = []       // full router softmax
    var ids: [Int] = []      // applied experts, slot order
    var g: [T] = []          // gate weights
    var u: [[T]] = [], v3: [[T]] = [], act: [[T]] = [], y: [[T]] = []
}

struct FinalCache<T: Scalar> {
    var x: [T] = [], h: [T] = [], r: T = 0, p: [T] = []
}

/// KV cache plus (for training) everything backward needs.
final class SeqState<T: Scalar> {
    var kc: [[T]], vc: [[T]]
    var layers: [[PosCache<T>]]
    var finals: [FinalCache<T>] = []
    let keep: Bool
    init(layers: Int, keep: Bool) {
        kc = Array(repeating: [], count: layers); vc = Array(repeating: [], count: layers)
        self.layers = Array(repeating: [], count: layers)
        self.keep = keep
    }
}

/// What one forward step (one token through every layer) produced.
struct StepOut<T: Scalar> {
    var logits: [T]
    var ids: [Int]        // applied, layers × K
    var natural: [Int]    // own router's top-k, layers × K
    var gates: [T]        // layers × K
    var routerLogits: [T] // layers × E
}

/// A whole-sequence training forward: rows = tokens.count - 1.
public struct SeqForward<T: Scalar> {
    /// Log-probability of token t+1 at row t (temperature applied).
    public var logp: [T]
    /// Entropy of the next-token distribution at each row.
    public var entropy: [T]
    /// Applied routing, rows × layers × K, slot order.
    public var ids: [UInt16]
    /// The training router's own top-k, rows × layers × K.
    public var natural: [UInt16]
    public var gates: [Float]
    public var routerLogits: [Float]
    /// Switch load-balancing loss summed over layers.
    public var aux: T
    var state: SeqState<T>
    var tokens: [Int]
    var invTemp: T
}

// MARK: - model

/// The decoder-only MoE transformer, generic over its scalar.
public final class Model<T: Scalar>: @unchecked Sendable {
    public let cfg: ModelConfig
    public let layout: ParamLayout
    public let params: Buf<T>

    public init(cfg: ModelConfig, seed: UInt64) {
        self.cfg = cfg
        layout = ParamLayout(cfg)
        params = Buf(count: layout.total)
        var rng = RNG(seed)
        for t in layout.tensors {
            let isNorm = t.shape.count == 1
            let fanIn = t.shape.last!
            var std = 1 / Double(fanIn).squareRoot()
            if t.name.hasSuffix("router") { std *= 0.5 }
            if t.name.hasSuffix("wo") || t.name.hasSuffix("w2") { std *= 0.5 }
            for i in 0..<t.count {
                params[t.offset + i] = isNorm ? 1 : T(rng.normal() * std)
            }
        }
    }

    public init(cfg: ModelConfig, params: Buf<T>) {
        self.cfg = cfg
        layout = ParamLayout(cfg)
        precondition(params.count == layout.total)
        self.params = params
    }

    /// One token at position `t` through every layer with weights `W`.
    func step(_ token: Int, _ t: Int, _ override: ArraySlice<UInt16>?, _ st: SeqState<T>, _ num: Numerics, _ W: UnsafeMutablePointer<T>) -> StepOut<T> {
        let D = cfg.width, H = cfg.heads, hd = D / H, E = cfg.experts, K = cfg.topK, F = cfg.hidden
        var x = Array(UnsafeBufferPointer(start: W + layout.emb + token * D, count: D))
        var out = StepOut<T>(logits: [], ids: [], natural: [], gates: [], routerLogits: [])
        let scale = 1 / T(hd).squareRoot()
        for l in 0..<cfg.layers {
            let o = layout.layers[l]
            var c = PosCache<T>()
            c.x = x
            let (h1, r1) = rmsnorm(x, W + o.n1)
            var q = matvec(W + o.wq, D, D, h1, num)
            var k = matvec(W + o.wk, D, D, h1, num)
            let v = matvec(W + o.wv, D, D, h1, num)
            rope(&q, t, forward: true); rope(&k, t, forward: true)
            st.kc[l].append(contentsOf: k); st.vc[l].append(contentsOf: v)
            var att = [T](repeating: 0, count: D)
            var pAll = [T]()
            for h in 0..<H {
                var s = [T](repeating: 0, count: t + 1)
                for j in 0...t {
                    var a: T = 0
                    if num.reversed {
                        var i = hd - 1
                        while i >= 0 { a += q[h * hd + i] * st.kc[l][j * D + h * hd + i]; i -= 1 }
                    } else {
                        for i in 0..<hd { a += q[h * hd + i] * st.kc[l][j * D + h * hd + i] }
                    }
                    s[j] = a * scale
                }
                let p = softmax(s)
                if num.reversed {
                    var j = t
                    while j >= 0 { for i in 0..<hd { att[h * hd + i] += p[j] * st.vc[l][j * D + h * hd + i] }; j -= 1 }
                } else {
                    for j in 0...t { for i in 0..<hd { att[h * hd + i] += p[j] * st.vc[l][j * D + h * hd + i] } }
                }
                if st.keep { pAll.append(contentsOf: p) }
            }
            let a = matvec(W + o.wo, D, D, att, num)
            var x2 = x
            for i in 0..<D { x2[i] += a[i] }
            let (h2, r2) = rmsnorm(x2, W + o.n2)
            let z = matvec(W + o.wr, E, D, h2, num)
            let nat = topK(z, K)
            var ids = nat
            if let ov = override {
                let b = ov.startIndex + l * K
                ids = (0..<K).map { Int(ov[b + $0]) }
            }
            let g = softmax(ids.map { z[$0] })
            var moe = [T](repeating: 0, count: D)
            if st.keep { c.u = []; c.v3 = []; c.act = []; c.y = [] }
            for s in 0..<K {
                let e = ids[s]
                let u = matvec(W + o.w1 + e * F * D, F, D, h2, num)
                let v3 = matvec(W + o.w3 + e * F * D, F, D, h2, num)
                var act = u
                for i in 0..<F { act[i] = u[i] * sigmoid(u[i]) * v3[i] }
                let y = matvec(W + o.w2 + e * D * F, D, F, act, num)
                for i in 0..<D { moe[i] += g[s] * y[i] }
                if st.keep { c.u.append(u); c.v3.append(v3); c.act.append(act); c.y.append(y) }
            }
            var x3 = x2
            for i in 0..<D { x3[i] += moe[i] }
            if st.keep {
                c.h1 = h1; c.r1 = r1; c.q = q; c.k = k; c.v = v; c.o = att; c.p = pAll
                c.x2 = x2; c.h2 = h2; c.r2 = r2; c.prob = softmax(z); c.ids = ids; c.g = g
                st.layers[l].append(c)
            }
            out.ids += ids; out.natural += nat; out.gates += g; out.routerLogits += z
            x = x3
        }
        let (hf, rf) = rmsnorm(x, W + layout.nf)
        out.logits = matvec(W + layout.head, cfg.vocab, D, hf, num)
        if st.keep { st.finals.append(FinalCache(x: x, h: hf, r: rf, p: [])) }
        return out
    }

    /// Rotary positions on every head (forward rotates by +θ, backward by −θ).
    @inline(__always) func rope(_ v: inout [T], _ t: Int, forward: Bool) {
        let hd = cfg.width / cfg.heads
        for h in 0..<cfg.heads {
            for i in 0..<(hd / 2) {
                let theta = Double(t) * Foundation.pow(10000.0, -2.0 * Double(i) / Double(hd))
                let cs = T(Foundation.cos(theta)), sn = T(forward ? Foundation.sin(theta) : -Foundation.sin(theta))
                let a = v[h * hd + 2 * i], b = v[h * hd + 2 * i + 1]
                v[h * hd + 2 * i] = a * cs - b * sn
                v[h * hd + 2 * i + 1] = a * sn + b * cs
            }
        }
    }

    /// Whole-sequence fp32 training forward over `tokens[0..<n-1]`, predicting `tokens[1..<n]`.
    /// `override` (rows × layers × K) replaces the router's choice; gates stay the softmax of the
    /// training router logits over the replayed set.
    public func forward(tokens: [Int], override: [UInt16]? = nil, temperature: Double = 1, keep: Bool = true) -> SeqForward<T> {
        let rows = tokens.count - 1
        let L = cfg.layers, K = cfg.topK
        let st = SeqState<T>(layers: L, keep: keep)
        let invT = T(1 / temperature)
        var f = SeqForward<T>(logp: [], entropy: [], ids: [], natural: [], gates: [], routerLogits: [], aux: 0,
                              state: st, tokens: tokens, invTemp: invT)
        if let ov = override { precondition(ov.count == rows * L * K, "override has \(ov.count) ids, expected \(rows * L * K)") }
        for t in 0..<rows {
            let ov = override.map { $0[(t * L * K)..<((t + 1) * L * K)] }
            let o = step(tokens[t], t, ov, st, .train, params.p)
            let p = softmax(o.logits.map { $0 * invT })
            if keep { st.finals[t].p = p }
            f.logp.append(T.slog(max(p[tokens[t + 1]], T.leastNormalMagnitude)))
            var ent: T = 0
            for v in p where v > 0 { ent -= v * T.slog(v) }
            f.entropy.append(ent)
            f.ids += o.ids.map { UInt16($0) }
            f.natural += o.natural.map { UInt16($0) }
            f.gates += o.gates.map { Float($0) }
            f.routerLogits += o.routerLogits.map { Float($0) }
        }
        if keep && rows > 0 {
            for l in 0..<L {
                let (fr, P) = lbStats(st.layers[l])
                var a: T = 0
                for e in 0..<cfg.experts { a += fr[e] * P[e] }
                f.aux += T(cfg.experts) * a
            }
        }
        return f
    }

    /// Switch-loss statistics: fraction of routed slots per expert and mean router probability.
    func lbStats(_ cs: [PosCache<T>]) -> ([T], [T]) {
        let E = cfg.experts
        var fr = [T](repeating: 0, count: E), P = [T](repeating: 0, count: E)
        for c in cs {
            for e in c.ids { fr[e] += 1 }
            for e in 0..<E { P[e] += c.prob[e] }
        }
        let n = T(cs.count)
        for e in 0..<E { fr[e] /= n * T(cfg.topK); P[e] /= n }
        return (fr, P)
    }

    /// Accumulates into `grad` the gradient of Σ_t dlogp[t]·logp[t] + lbScale·aux.
    public func backward(_ f: SeqForward<T>, dlogp: [T], lbScale: T, grad: Buf<T>) {
        let st = f.state
        precondition(st.keep)
        let W = params.p, G = grad.p
        let rows = f.logp.count
        let D = cfg.width, H = cfg.heads, hd = D / H, E = cfg.experts, K = cfg.topK, F = cfg.hidden, V = cfg.vocab
        let scale = 1 / T(hd).squareRoot()
        // Head and final norm.
        var dx = [[T]](repeating: [T](repeating: 0, count: D), count: rows)
        for t in 0..<rows {
            let fc = st.finals[t]
            var dl = [T](repeating: 0, count: V)
            let tgt = f.tokens[t + 1]
            for j in 0..<V { dl[j] = -dlogp[t] * fc.p[j] * f.invTemp }
            dl[tgt] += dlogp[t] * f.invTemp
            var dh = [T](repeating: 0, count: D)
            matvecBack(W + layout.head, G + layout.head, V, D, fc.h, dl, &dh)
            rmsnormBack(fc.x, fc.r, W + layout.nf, G + layout.nf, dh, &dx[t])
        }
        for l in stride(from: cfg.layers - 1, through: 0, by: -1) {
            let o = layout.layers[l]
            let cs = st.layers[l]
            let (fr, _) = lbStats(cs)
            var dx2 = dx
            // MoE and router.
            for t in 0..<rows {
                let c = cs[t]
                var dh2 = [T](repeating: 0, count: D)
                var dg = [T](repeating: 0, count: K)
                for s in 0..<K {
                    let e = c.ids[s]
                    var dy = dx[t]
                    var a: T = 0
                    for i in 0..<D { a += dx[t][i] * c.y[s][i]; dy[i] *= c.g[s] }
                    dg[s] = a
                    var dact = [T](repeating: 0, count: F)
                    matvecBack(W + o.w2 + e * D * F, G + o.w2 + e * D * F, D, F, c.act[s], dy, &dact)
                    var du = dact, dv = dact
                    for i in 0..<F {
                        let u = c.u[s][i], sg = sigmoid(u)
                        dv[i] = dact[i] * u * sg
                        du[i] = dact[i] * c.v3[s][i] * sg * (1 + u * (1 - sg))
                    }
                    matvecBack(W + o.w1 + e * F * D, G + o.w1 + e * F * D, F, D, c.h2, du, &dh2)
                    matvecBack(W + o.w3 + e * F * D, G + o.w3 + e * F * D, F, D, c.h2, dv, &dh2)
                }
                var dz = [T](repeating: 0, count: E)
                var gd: T = 0
                for s in 0..<K { gd += c.g[s] * dg[s] }
                for s in 0..<K { dz[c.ids[s]] += c.g[s] * (dg[s] - gd) }
                if lbScale != 0 {
                    var dp = [T](repeating: 0, count: E)
                    var pd: T = 0
                    for e in 0..<E { dp[e] = lbScale * T(E) * fr[e] / T(rows); pd += c.prob[e] * dp[e] }
                    for e in 0..<E { dz[e] += c.prob[e] * (dp[e] - pd) }
                }
                matvecBack(W + o.wr, G + o.wr, E, D, c.h2, dz, &dh2)
                rmsnormBack(c.x2, c.r2, W + o.n2, G + o.n2, dh2, &dx2[t])
            }
            // Attention.
            var dq = [[T]](repeating: [T](repeating: 0, count: D), count: rows)
            var dk = dq, dv = dq
            var dout = dq
            for t in 0..<rows { matvecBack(W + o.wo, G + o.wo, D, D, cs[t].o, dx2[t], &dout[t]) }
            for t in 0..<rows {
                let c = cs[t]
                for h in 0..<H {
                    let pb = h * (t + 1)
                    var dp = [T](repeating: 0, count: t + 1)
                    var pd: T = 0
                    for j in 0...t {
                        var a: T = 0
                        for i in 0..<hd { a += dout[t][h * hd + i] * cs[j].v[h * hd + i] }
                        dp[j] = a
                        pd += c.p[pb + j] * a
                    }
                    for j in 0...t {
                        let pj = c.p[pb + j]
                        for i in 0..<hd { dv[j][h * hd + i] += pj * dout[t][h * hd + i] }
                        let ds = pj * (dp[j] - pd) * scale
                        for i in 0..<hd {
                            dq[t][h * hd + i] += ds * cs[j].k[h * hd + i]
                            dk[j][h * hd + i] += ds * c.q[h * hd + i]
                        }
                    }
                }
            }
            for t in 0..<rows {
                let c = cs[t]
                rope(&dq[t], t, forward: false); rope(&dk[t], t, forward: false)
                var dh1 = [T](repeating: 0, count: D)
                matvecBack(W + o.wq, G + o.wq, D, D, c.h1, dq[t], &dh1)
                matvecBack(W + o.wk, G + o.wk, D, D, c.h1, dk[t], &dh1)
                matvecBack(W + o.wv, G + o.wv, D, D, c.h1, dv[t], &dh1)
                var d = dx2[t]
                rmsnormBack(c.x, c.r1, W + o.n1, G + o.n1, dh1, &d)
                dx[t] = d
            }
        }
        for t in 0..<rows {
            let tok = f.tokens[t]
            for i in 0..<D { G[layout.emb + tok * D + i] += dx[t][i] }
        }
    }
}
