import Foundation
import RTrace
import RTraceTestSupport
import Testing
@testable import RTraceAnalysis

@Suite("WideSum and MinMax: exact, order-free partial sums")
struct WideSumTests {
    @Test("sums are exact: 0.1 ten times is 1, 1e20 + 1 − 1e20 is 1, tiny terms keep their digits")
    func exactness() {
        var s = WideSum()
        for _ in 0..<10 { s.add(0.1) }
        #expect(s.value == 1.0)
        var naive = 0.0
        for _ in 0..<10 { naive += 0.1 }
        #expect(naive != 1.0)  // the test can tell
        var b = WideSum()
        for x in [1e20, 1, -1e20] { b.add(x) }
        #expect(b.value == 1)
        var huge = WideSum()  // integer parts beyond Int64
        for x in [0x1p70, 0.5, -0x1p70, 0x1p63 + 0x1p12, -0x1p63] { huge.add(x) }
        #expect(huge.value == 0.5 + 0x1p12)
        var t = WideSum()
        for _ in 0..<1_000_000 { t.add(1e-8) }
        #expect(t.value == 1e6 * 1e-8)  // exact product, rounded once
        var sq = WideSum()
        for _ in 0..<960 { sq.add(1e-4 * 1e-4) }
        #expect(sq.value == 960 * (1e-4 * 1e-4))
    }

    @Test("any order and any split into shards give the same state; x and −x cancel to 0 exactly")
    func orderFree() throws {
        var rng = TestRNG(5)
        var xs: [Double] = []
        for _ in 0..<4000 {
            let e = Double(rng.int(70)) - 40
            xs.append((rng.unit() - 0.5) * pow(2, e))
        }
        var whole = WideSum()
        for x in xs { whole.add(x) }
        var shuffled = xs
        for i in stride(from: shuffled.count - 1, to: 0, by: -1) { shuffled.swapAt(i, rng.int(i + 1)) }
        var shards = [WideSum(), WideSum(), WideSum()]
        for (i, x) in shuffled.enumerated() { shards[i % 3].add(x) }
        var merged = WideSum()
        for s in shards.reversed() { merged.merge(s) }
        #expect(merged == whole && merged.value == whole.value)
        var zero = merged
        for x in xs { zero.add(-x) }
        #expect(zero.value == 0)
        #expect(WideSum(text: whole.text) == whole)
        let json = try JSONEncoder().encode(whole)
        #expect(try JSONDecoder().decode(WideSum.self, from: json) == whole)
        #expect(WideSum(text: "1 2 3") == nil && WideSum(text: "1 2 3 0 -1 0") == nil && WideSum(text: "1 2 x 0 0 0") == nil)
    }

    @Test("infinities are counted, NaN and +∞ with −∞ give NaN, terms beyond 2^80 count as infinite")
    func nonFinite() {
        var s = WideSum()
        s.add(1); s.add(.infinity)
        #expect(s.value == .infinity)
        s.add(-1e30)
        #expect(s.value.isNaN)
        var n = WideSum()
        n.add(.nan)
        #expect(n.value.isNaN)
        var big = WideSum()
        big.add(0x1p79); big.add(0x1p79)
        #expect(big.value == 0x1p80)
    }

    @Test("MinMax merges an empty range as nothing")
    func minMax() throws {
        var a = MinMax()
        #expect(a.isEmpty && a.maxAbs == nil)
        a.add(-3); a.add(2)
        var b = a
        b.merge(MinMax())
        #expect(b == a && a.maxAbs == 3)
        var c = MinMax()
        c.add(.infinity)
        a.merge(c)
        #expect(a.max == .infinity && a.min == -3)
        #expect(try JSONDecoder().decode(MinMax.self, from: JSONEncoder().encode(a)) == a)
    }
}

/// Runs the diff accumulator over pairs (the routing and the policy), as diffTraces' workers do.
func diffAcc(_ pairs: [(TraceRecord, TraceRecord)], _ g: ModelGeometry, thresholds: [Double]) -> DiffAcc {
    var acc = DiffAcc(L: g.moeLayers, k: g.topK, E: g.numExperts, buckets: 2, isThresholds: thresholds)
    var mark = [UInt32](repeating: 0, count: 65_536), stamp: UInt32 = 0
    for (a, b) in pairs { acc.add(a, b, mark: &mark, stamp: &stamp) }
    return acc
}

@Suite("policy metrics: verl's formulas, routing groups, exact merges")
struct PolicyTests {
    /// tinyPair (DiffTests.swift): tokens 2 and 3 carry logprobs on both sides. Token 2 (ρ = 1.8) comes from
    /// row 1, where both layers flipped; token 3 (ρ = 1/3) from row 2, where layer 1 is missing in B and
    /// layer 3 agrees (0 flipped).
    @Test("by hand: one sequence of two tokens")
    func byHand() throws {
        let (a, b) = tinyPair()
        let acc = diffAcc([(a, b)], tinyGeometry, thresholds: [1.5, 2, 0.5])
        let p = try #require(acc.policy.report)
        let la = a.logprobs.map(Double.init), lb = b.logprobs[1...].map(Double.init)
        let d = [la[0] - lb[0], la[1] - lb[1]], lr = [lb[0] - la[0], lb[1] - la[1]]
        let den = 2 + 1e-8
        #expect(p.tokens == 2 && p.sequences == 1 && p.tokensNonfinite == 0)
        #expect(p.k1 == (d[0] + d[1]) / 2 && p.kl == (d[0] + d[1]) / den)
        let k3 = lr.map { exp($0) - $0 - 1 }
        #expect(relClose(p.k3, (k3[0] + k3[1]) / 2, 1e-15) && relClose(p.k3Kl, (k3[0] + k3[1]) / den, 1e-15))
        #expect(relClose(p.chi2Token, (exp(2 * lr[0]) + exp(2 * lr[1])) / den - 1, 1e-14))
        #expect(relClose(p.chi2Seq, exp(2 * (lr[0] + lr[1])) - 1, 1e-14))
        let mA = (la[0] + la[1]) / den, mB = (lb[0] + lb[1]) / den
        #expect(relClose(p.trainingPpl, exp(-mB), 1e-15) && relClose(p.rolloutPpl, exp(-mA), 1e-15))
        #expect(relClose(p.logPplDiff, mA - mB, 1e-14) && p.logPplDiffMax == p.logPplDiffMin && relClose(p.pplRatio, exp(mA - mB), 1e-15))
        // C = 1.5: ρ = 1.8 above, 1/3 below the band.
        let t = p.thresholds[0].rolloutIsToken
        #expect(t.rolloutIsRatioFractionHigh == 1 / den && t.rolloutIsRatioFractionLow == 1 / den && t.rolloutIsOobRatio == 2 / den)
        #expect(relClose(t.rolloutIsMean, (1.5 + exp(lr[1])) / den, 1e-15) && t.rolloutIsMax == 1.5 && relClose(t.rolloutIsMin, 1.0 / 3, 1e-6))
        // Standard deviations: verl's (D·Σx² − (Σx)²) / D² over tokens (D = n + 1e-8); one sequence: 0 over sequences.
        func maskedStd(_ x: [Double]) -> Double { ((den * (x[0] * x[0] + x[1] * x[1]) - (x[0] + x[1]) * (x[0] + x[1])) / (den * den)).squareRoot() }
        #expect(relClose(t.rolloutIsStd, maskedStd([1.5, exp(lr[1])]), 1e-14) && t.rolloutIsSeqStd == 0)
        let k2 = p.thresholds[0].rolloutRs.options[RSOption.tokenK2.index]  // ½ log² ρ ≈ 0.17, 0.60: not clamped at 1.5
        #expect(relClose(k2.std, maskedStd(lr.map { 0.5 * ($0 * $0) }), 1e-14) && k2.seqStd == 0)
        let k1 = p.thresholds[0].rolloutRs.options[RSOption.tokenK1.index]  // −log ρ clamped to [log(1/1.5), log 1.5]
        #expect(relClose(k1.std, maskedStd(lr.map { min(max(-$0, log(1 / 1.5)), log(1.5)) }), 1e-14))
        // seq_sum_k1 at C = 1.5: both tokens carry s = −Σ log ρ ≈ 0.51, clamped to log 1.5: only verl's ε is left,
        // (D·n·x² − n²x²) / D² = n·x²·(D − n) / D².
        let sk1 = p.thresholds[0].rolloutRs.options[RSOption.seqSumK1.index]
        #expect(relClose(sk1.std, log(1.5) * (2 * (den - 2)).squareRoot() / den, 1e-12))
        // rollout_is = sequence: Π ρ = 0.6 is inside [1/1.5, 1.5] but below 1/2... at C = 2.
        let s15 = p.thresholds[0].rolloutIsSequence, s2 = p.thresholds[1].rolloutIsSequence
        #expect(s15.rolloutIsRatioFractionLow == 1 && s2.rolloutIsRatioFractionLow == 0 && s2.rolloutIsOobRatio == 0)
        // seq_sum_k1: −Σ log ρ = log(1/0.6) ≈ 0.51 > log 1.5, < log 2.
        let rs15 = p.thresholds[0].rolloutRs.options[RSOption.seqSumK1.index], rs2 = p.thresholds[1].rolloutRs.options[RSOption.seqSumK1.index]
        #expect(rs15.maskedFraction == 2 / den && rs15.seqMaskedFraction == 1 && rs15.fractionHigh == 1)
        #expect(rs2.maskedFraction == 0 && rs2.seqMaskedFraction == 0)
        // C = 0.5 < 1: verl refuses k1 bands and IcePop.
        let half = p.thresholds[2]
        #expect(half.rolloutIsToken.rolloutIsOobRatio == nil && half.rolloutRs.options[RSOption.tokenK1.index].mean == nil)
        #expect(half.rolloutRs.options[RSOption.tokenK3.index].mean != nil)
        // Routing: token 2 in group 2, token 3 in group 0.
        let r = p.routing
        #expect(r.tokensWithoutRouting == 0 && r.byFlippedLayers.map(\.tokens) == [1, 0, 1])
        #expect(r.unflipped.tokens == 1 && r.unflipped.k1 == d[1] && r.flipped.tokens == 1 && r.flipped.k1 == d[0])
        #expect(r.flipped.meanFlippedLayers == 2 && r.unflipped.meanFlippedLayers == 0)
        #expect(r.flipped.thresholds[0].rolloutIsRatioFractionHigh == 1 / (1 + 1e-8) && r.unflipped.thresholds[0].rolloutIsRatioFractionLow == 1 / (1 + 1e-8))
        // JSON: verl's names, nulls written (not left out), flat rollout_rs keys.
        let j = try #require(p.jsonObject as? [String: Any])
        for key in ["kl", "k3_kl", "training_ppl", "training_log_ppl", "rollout_ppl", "rollout_log_ppl", "log_ppl_diff", "log_ppl_abs_diff",
                    "log_ppl_diff_max", "log_ppl_diff_min", "ppl_ratio", "chi2_token", "chi2_seq", "k1", "k3", "extreme_frac", "routing"] {
            #expect(j[key] != nil, "\(key)")
        }
        let th = try #require((j["thresholds"] as? [[String: Any]])?[2])
        let rs = try #require(th["rollout_rs"] as? [String: Any])
        #expect(rs["rollout_rs_token_k1_mean"] is NSNull && rs["rollout_rs_token_k2_seq_fraction_low"] == nil)
        #expect(rs.count == 3 * 15 + 8 * 14)
        #expect(try JSONDecoder().decode(PolicyReport.self, from: JSONEncoder().encode(p)) == p)
    }

    @Test("partials of shards merge exactly, in any order, also through JSON; settings must agree")
    func mergeExactly() throws {
        let g = ModelGeometry(numLayers: 5, numExperts: 16, topK: 4, layerMap: [0, 2, 3, 4])
        let (A, B) = generatePair(g, sequences: 60, seed: 21)
        let byUid = Dictionary(uniqueKeysWithValues: B.map { ($0.uid, $0) })
        let pairs = A.compactMap { a in byUid[a.uid].map { (a, $0) } }
        let th = [2.0, 1.1, 0.01]
        let whole = diffAcc(pairs, g, thresholds: th).policy
        #expect(whole.allTokens.tokens > 500 && whole.groups[0].tokens > 0 && whole.groups[1].tokens > 0)
        var merged = PolicyAcc(layers: g.moeLayers, thresholds: th)
        for part in [Array(pairs[40...]).reversed(), Array(pairs[..<13]), Array(pairs[13..<40])] {
            let p = diffAcc(part, g, thresholds: th).policy
            let back = try JSONDecoder().decode(PolicyAcc.self, from: JSONEncoder().encode(p))
            try merged.checkMergeable(back)
            merged.merge(back)
        }
        #expect(merged == whole)
        #expect(merged.report == whole.report)
        #expect(throws: TraceError.self) { try merged.checkMergeable(PolicyAcc(layers: g.moeLayers, thresholds: [2])) }
        #expect(throws: TraceError.self) { try merged.checkMergeable(PolicyAcc(layers: 3, thresholds: th)) }
    }

    @Test("diffTraces: the same partial state whatever the threads; bad thresholds are refused")
    func throughDiff() throws {
        let d = tempDir()
        let g = ModelGeometry(numLayers: 7, numExperts: 16, topK: 4, layerMap: [1, 2, 4, 6])
        let (A, B) = generatePair(g, sequences: 40, seed: 11)
        let pa = try write(d + "/a.rtrace", header(g), A), pb = try write(d + "/b.rtrace", header(g, role: .train), B)
        var one = DiffOptions(isThresholds: [2, 1.2])
        one.threads = 1
        var three = one
        three.threads = 3
        let r1 = try diffTraces(a: [pa], b: [pb], options: one), r3 = try diffTraces(a: [pa], b: [pb], options: three)
        #expect(r1.policyPartial == r3.policyPartial)
        let p = try #require(r1.policy)
        #expect(p.routing.byFlippedLayers.map { "\($0.from)-\($0.to)" } == ["0-0", "1-1", "2-2", "3-4"])
        #expect(p.routing.byFlippedLayers.map(\.tokens).reduce(0, +) + p.routing.tokensWithoutRouting == p.tokens)
        #expect(r1.text.contains("policy by flipped layers") && p.csv.split(separator: "\n").count == 1 + 3 + 4)
        for bad in [0.0, -1, .infinity, .nan] {
            #expect(throws: TraceError.self) { try diffTraces(a: [pa], b: [pb], options: DiffOptions(isThresholds: [bad])) }
        }
        // Without logprobs on a side: no policy.
        let pn = try write(d + "/n.rtrace", header(g, logprobs: false), A.map { var r = $0; r.logprobs = []; return r })
        #expect(try diffTraces(a: [pn], b: [pb]).policy == nil)
    }

    @Test("flipped-layer buckets: 0, 1, 2, 3–4, 5–8, … up to the layer count")
    func buckets() {
        #expect(flippedLayerBuckets(layers: 0).map { [$0.from, $0.to] } == [[0, 0]])
        #expect(flippedLayerBuckets(layers: 6).map { [$0.from, $0.to] } == [[0, 0], [1, 1], [2, 2], [3, 4], [5, 6]])
        #expect(flippedLayerBuckets(layers: 94).last.map { [$0.from, $0.to] } == [65, 94])
        #expect(flippedLayerBuckets(layers: 8).map { [$0.from, $0.to] } == [[0, 0], [1, 1], [2, 2], [3, 4], [5, 8]])
    }
}

/// |a − b| ≤ rel·max(|a|, |b|): relative, also for tiny values.
func relClose(_ a: Double?, _ b: Double, _ rel: Double) -> Bool {
    guard let a else { return false }
    return a == b || abs(a - b) <= rel * max(abs(a), abs(b))
}
