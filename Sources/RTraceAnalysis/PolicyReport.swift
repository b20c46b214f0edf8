import Foundation

/// A number in a JSON report: written as `null` when undefined (nil) or not finite, never omitted.
@propertyWrapper
public struct ReportNumber: Codable, Equatable, Sendable {
    /// The value; nil when undefined.
    public var wrappedValue: Double?
    /// Wraps a value.
    public init(wrappedValue: Double?) { self.wrappedValue = wrappedValue }
    /// Reads a number or null.
    public init(from decoder: any Decoder) throws {
        let c = try decoder.singleValueContainer()
        wrappedValue = c.decodeNil() ? nil : try c.decode(Double.self)
    }
    /// Writes the number, or null when nil or not finite.
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        if let v = wrappedValue, v.isFinite { try c.encode(v) } else { try c.encodeNil() }
    }
}

/// F(τ): the share of tokens with max(ρ, 1/ρ) > τ.
public struct ExtremeFractions: Codable, Equatable, Sendable {
    @ReportNumber public var tau1_5: Double? = nil
    @ReportNumber public var tau2: Double? = nil
    @ReportNumber public var tau5: Double? = nil
    enum CodingKeys: String, CodingKey { case tau1_5 = "1.5", tau2 = "2", tau5 = "5" }
    /// Values in ``PolicyAcc/taus`` order.
    public var values: [Double?] { [tau1_5, tau2, tau5] }
}

/// verl's importance-sampling metrics (`compute_rollout_correction_weights` with `rollout_is = token` or
/// `sequence`, truncated IS at C) under verl's names.
public struct ISMetrics: Codable, Equatable, Sendable {
    @ReportNumber public var rolloutIsMean: Double? = nil
    @ReportNumber public var rolloutIsMax: Double? = nil
    @ReportNumber public var rolloutIsMin: Double? = nil
    @ReportNumber public var rolloutIsRatioFractionHigh: Double? = nil
    @ReportNumber public var rolloutIsRatioFractionLow: Double? = nil
    /// verl's std of the weights over tokens: (D·Σw² − (Σw)²) / D², D = n + 10⁻⁸ (exact numerator).
    @ReportNumber public var rolloutIsStd: Double? = nil
    @ReportNumber public var rolloutIsEffSampleSize: Double? = nil
    @ReportNumber public var rolloutIsSeqMean: Double? = nil
    /// torch's unbiased std over sequences of the sequence's mean weight.
    @ReportNumber public var rolloutIsSeqStd: Double? = nil
    @ReportNumber public var rolloutIsSeqMax: Double? = nil
    @ReportNumber public var rolloutIsSeqMin: Double? = nil
    @ReportNumber public var rolloutIsSeqMaxDeviation: Double? = nil
    @ReportNumber public var rolloutIsSeqFractionHigh: Double? = nil
    @ReportNumber public var rolloutIsSeqFractionLow: Double? = nil
    /// IcePop (`rollout_is_threshold = "1/C_C"`): the share of tokens whose weight lies outside [1/C, C];
    /// null for C < 1, which verl refuses.
    @ReportNumber public var rolloutIsOobRatio: Double? = nil
    enum CodingKeys: String, CodingKey {
        case rolloutIsMean = "rollout_is_mean", rolloutIsMax = "rollout_is_max", rolloutIsMin = "rollout_is_min"
        case rolloutIsRatioFractionHigh = "rollout_is_ratio_fraction_high", rolloutIsRatioFractionLow = "rollout_is_ratio_fraction_low"
        case rolloutIsStd = "rollout_is_std", rolloutIsEffSampleSize = "rollout_is_eff_sample_size"
        case rolloutIsSeqMean = "rollout_is_seq_mean", rolloutIsSeqStd = "rollout_is_seq_std", rolloutIsSeqMax = "rollout_is_seq_max", rolloutIsSeqMin = "rollout_is_seq_min"
        case rolloutIsSeqMaxDeviation = "rollout_is_seq_max_deviation"
        case rolloutIsSeqFractionHigh = "rollout_is_seq_fraction_high", rolloutIsSeqFractionLow = "rollout_is_seq_fraction_low"
        case rolloutIsOobRatio = "rollout_is_oob_ratio"
    }
}

/// verl's metrics of one rejection rule (`compute_rollout_rejection_mask` with `rollout_rs = option` and
/// `rollout_rs_threshold = C`). All nil for a k1 rule at C < 1 (verl
/// refuses a band [1/C, C] with 1/C > C).
public struct RSOptionMetrics: Equatable, Sendable {
    /// The rule.
    public var option: RSOption
    public var mean: Double?, max: Double?, min: Double?, fractionHigh: Double?, fractionLow: Double?
    /// verl's std over tokens of the statistic clamped to the rule's bounds (as ``ISMetrics/rolloutIsStd``),
    /// and torch's unbiased std of the per-sequence values.
    public var std: Double?, seqStd: Double?
    public var seqMean: Double?, seqMax: Double?, seqMin: Double?, seqMaxDeviation: Double?
    public var seqFractionHigh: Double?
    /// k1 rules only (verl logs it only for them).
    public var seqFractionLow: Double?
    /// Shares of tokens and of sequences the rule masks.
    public var maskedFraction: Double?, seqMaskedFraction: Double?

    /// `(suffix, value)` in verl's order; verl's key is `rollout_rs_<option>_<suffix>`.
    public var fields: [(String, Double?)] {
        var f: [(String, Double?)] = [("mean", mean), ("max", max), ("min", min), ("fraction_high", fractionHigh), ("fraction_low", fractionLow),
                                      ("std", std), ("seq_mean", seqMean), ("seq_std", seqStd), ("seq_max", seqMax), ("seq_min", seqMin), ("seq_max_deviation", seqMaxDeviation),
                                      ("seq_fraction_high", seqFractionHigh)]
        if option.isK1 { f.append(("seq_fraction_low", seqFractionLow)) }
        f += [("masked_fraction", maskedFraction), ("seq_masked_fraction", seqMaskedFraction)]
        return f
    }
}

/// Every rule's metrics, written as one flat object keyed by verl's names (`rollout_rs_token_k1_mean`, …).
public struct RSMetrics: Codable, Equatable, Sendable {
    /// One entry per rule, in ``RSOption/allCases`` order.
    public var options: [RSOptionMetrics]

    struct Key: CodingKey {
        var stringValue: String
        var intValue: Int? { nil }
        init(_ s: String) { stringValue = s }
        init?(stringValue: String) { self.stringValue = stringValue }
        init?(intValue: Int) { nil }
    }

    /// Creates the set.
    public init(options: [RSOptionMetrics]) { self.options = options }

    /// Writes `rollout_rs_<option>_<suffix>` keys (null where undefined).
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: Key.self)
        for o in options {
            for (suffix, v) in o.fields { try c.encode(ReportNumber(wrappedValue: v), forKey: Key("rollout_rs_\(o.option.rawValue)_\(suffix)")) }
        }
    }

    /// Reads the keys ``encode(to:)`` writes (a missing key reads as nil).
    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: Key.self)
        options = try RSOption.allCases.map { o in
            var m = RSOptionMetrics(option: o)
            func get(_ s: String) throws -> Double? {
                try c.decodeIfPresent(ReportNumber.self, forKey: Key("rollout_rs_\(o.rawValue)_\(s)"))?.wrappedValue
            }
            m.mean = try get("mean"); m.max = try get("max"); m.min = try get("min")
            m.fractionHigh = try get("fraction_high"); m.fractionLow = try get("fraction_low")
            m.std = try get("std"); m.seqStd = try get("seq_std")
            m.seqMean = try get("seq_mean"); m.seqMax = try get("seq_max"); m.seqMin = try get("seq_min")
            m.seqMaxDeviation = try get("seq_max_deviation"); m.seqFractionHigh = try get("seq_fraction_high")
            m.seqFractionLow = try get("seq_fraction_low")
            m.maskedFraction = try get("masked_fraction"); m.seqMaskedFraction = try get("seq_masked_fraction")
            return m
        }
    }
}

/// What verl would log at one threshold C (`rollout_is_threshold = C`, `rollout_rs_threshold = C`).
public struct PolicyThresholdReport: Codable, Equatable, Sendable {
    /// C.
    public var threshold: Double
    /// `rollout_is = token` (TIS: weights min(ρ, C)), plus IcePop's out-of-bounds share.
    public var rolloutIsToken: ISMetrics
    /// `rollout_is = sequence` (one weight exp(Σ log ρ) per sequence).
    public var rolloutIsSequence: ISMetrics
    /// Every `rollout_rs` rule.
    public var rolloutRs: RSMetrics
    enum CodingKeys: String, CodingKey {
        case threshold, rolloutIsToken = "rollout_is_token", rolloutIsSequence = "rollout_is_sequence", rolloutRs = "rollout_rs"
    }
}

/// Token-level figures of one routing group at one threshold C.
public struct PolicyGroupThreshold: Codable, Equatable, Sendable {
    /// C.
    public var threshold: Double
    @ReportNumber public var rolloutIsRatioFractionHigh: Double? = nil
    @ReportNumber public var rolloutIsRatioFractionLow: Double? = nil
    /// Shares of the group's tokens the token rules mask (token_k1 null at C < 1).
    @ReportNumber public var rolloutRsTokenK1MaskedFraction: Double? = nil
    @ReportNumber public var rolloutRsTokenK2MaskedFraction: Double? = nil
    @ReportNumber public var rolloutRsTokenK3MaskedFraction: Double? = nil
    enum CodingKeys: String, CodingKey {
        case threshold
        case rolloutIsRatioFractionHigh = "rollout_is_ratio_fraction_high", rolloutIsRatioFractionLow = "rollout_is_ratio_fraction_low"
        case rolloutRsTokenK1MaskedFraction = "rollout_rs_token_k1_masked_fraction"
        case rolloutRsTokenK2MaskedFraction = "rollout_rs_token_k2_masked_fraction"
        case rolloutRsTokenK3MaskedFraction = "rollout_rs_token_k3_masked_fraction"
    }
}

/// The token-level policy figures over the tokens of one routing group.
public struct PolicyGroupReport: Codable, Equatable, Sendable {
    /// The group: tokens whose row had `from`…`to` flipped layers.
    public var from: Int, to: Int
    public var tokens: Int
    /// Mean number of flipped layers of the group's tokens.
    @ReportNumber public var meanFlippedLayers: Double? = nil
    @ReportNumber public var k1: Double? = nil
    @ReportNumber public var k3: Double? = nil
    /// Mean |log ρ|.
    @ReportNumber public var absLogRatio: Double? = nil
    @ReportNumber public var chi2Token: Double? = nil
    public var extremeFrac: ExtremeFractions
    public var thresholds: [PolicyGroupThreshold]
    enum CodingKeys: String, CodingKey {
        case from, to, tokens, meanFlippedLayers = "mean_flipped_layers", k1, k3, absLogRatio = "abs_log_ratio"
        case chi2Token = "chi2_token", extremeFrac = "extreme_frac", thresholds
    }
}

/// The policy figures split by the routing of the row that produced each token.
public struct PolicyRoutingReport: Codable, Equatable, Sendable {
    /// Tokens whose row was not compared in any layer (missing on a side, or outside the routed rows).
    public var tokensWithoutRouting: Int
    /// Tokens with no flipped layer, and with at least one.
    public var unflipped: PolicyGroupReport, flipped: PolicyGroupReport
    /// Tokens by the number of flipped layers: 0, 1, 2, 3–4, 5–8, … (powers of two), up to the layer count.
    public var byFlippedLayers: [PolicyGroupReport]
    enum CodingKeys: String, CodingKey {
        case tokensWithoutRouting = "tokens_without_routing", unflipped, flipped, byFlippedLayers = "by_flipped_layers"
    }
}

/// The policy-mismatch section of `rtrace diff` (spec/cli-json.md, key `policy`): rtrace's k1, k3 and F(τ),
/// verl's `compute_offpolicy_metrics`, the IS/RS metrics at each threshold, and the split by routing.
public struct PolicyReport: Codable, Equatable, Sendable {
    /// Response tokens with a finite logprob on both sides, the sequences they belong to, and the tokens left
    /// out for a non-finite logprob.
    public var tokens: Int, sequences: Int, tokensNonfinite: Int
    /// rtrace's plain means: k1 = mean(log π_A − log π_B), k3 = mean(ρ − 1 − log ρ), mean |log ρ|.
    @ReportNumber public var k1: Double? = nil
    @ReportNumber public var k3: Double? = nil
    @ReportNumber public var absLogRatio: Double? = nil
    public var extremeFrac: ExtremeFractions
    // verl's compute_offpolicy_metrics.
    @ReportNumber public var kl: Double? = nil
    @ReportNumber public var k3Kl: Double? = nil
    @ReportNumber public var trainingPpl: Double? = nil
    @ReportNumber public var trainingLogPpl: Double? = nil
    @ReportNumber public var rolloutPpl: Double? = nil
    @ReportNumber public var rolloutLogPpl: Double? = nil
    @ReportNumber public var logPplDiff: Double? = nil
    @ReportNumber public var logPplAbsDiff: Double? = nil
    @ReportNumber public var logPplDiffMax: Double? = nil
    @ReportNumber public var logPplDiffMin: Double? = nil
    @ReportNumber public var pplRatio: Double? = nil
    @ReportNumber public var chi2Token: Double? = nil
    @ReportNumber public var chi2Seq: Double? = nil
    /// One entry per `--is-threshold`.
    public var thresholds: [PolicyThresholdReport]
    public var routing: PolicyRoutingReport
    enum CodingKeys: String, CodingKey {
        case tokens, sequences, tokensNonfinite = "tokens_nonfinite", k1, k3, absLogRatio = "abs_log_ratio", extremeFrac = "extreme_frac"
        case kl, k3Kl = "k3_kl", trainingPpl = "training_ppl", trainingLogPpl = "training_log_ppl", rolloutPpl = "rollout_ppl"
        case rolloutLogPpl = "rollout_log_ppl", logPplDiff = "log_ppl_diff", logPplAbsDiff = "log_ppl_abs_diff"
        case logPplDiffMax = "log_ppl_diff_max", logPplDiffMin = "log_ppl_diff_min", pplRatio = "ppl_ratio"
        case chi2Token = "chi2_token", chi2Seq = "chi2_seq", thresholds, routing
    }

    /// The object as `JSONSerialization` values (for embedding in a `[String: Any]` report).
    public var jsonObject: Any {
        let enc = JSONEncoder()
        let data = try! enc.encode(self)  // every number is finite or null, every key a string: cannot fail
        return try! JSONSerialization.jsonObject(with: data)
    }
}

/// χ² = Σ x / (n + ε) − 1, the difference taken before rounding: (Σ x − n − ε) / (n + ε) with Σ x − n exact.
///
/// verl's `masked_mean(ρ²) − 1` (ε = 10⁻⁸) and `mean(exp(2 Σ log ρ)) − 1` (ε = 0) round the mean, near 1, before
/// subtracting 1: an error of ~10⁻¹⁶ on a χ² of 10⁻⁴ is 10⁻¹² of it. Here only the small difference is rounded.
func chi2(_ sum: WideSum, count n: Int, epsilon: Double = 1e-8) -> Double {
    var d = sum
    d.add(-Double(n))
    return (d.value - epsilon) / (Double(n) + epsilon)
}

/// Ranges of flipped-layer counts: 0, 1, 2, 3–4, 5–8, … up to `layers`.
public func flippedLayerBuckets(layers: Int) -> [(from: Int, to: Int)] {
    var out: [(Int, Int)] = [(0, 0)]
    var lo = 1, hi = 1
    while lo <= layers {
        out.append((lo, min(hi, layers)))
        lo = hi + 1
        hi = lo == 2 ? 2 : hi * 2
    }
    return out
}

extension PolicyAcc {
    /// The report: verl's formulas applied to the exact partial state; nil when no token was counted.
    ///
    /// verl's `masked_mean` divides by the mask's sum plus 10⁻⁸: every mean over tokens whose key is verl's
    /// does the same, so the figures equal verl's; rtrace's own k1, k3, |log ρ| and F(τ) are plain means.
    public var report: PolicyReport? {
        let all = allTokens
        guard all.tokens > 0, sequences > 0 else { return nil }
        let n = Double(all.tokens), den = n + 1e-8, s = Double(sequences)
        // verl takes shares of sequences as `(condition).float().mean()`: a float32 division, whatever the
        // logprobs' dtype. Those keys report that float32 value, so that they equal verl's.
        func seqShare(_ k: Int) -> Double { Double(Float(k) / Float(sequences)) }
        func group(_ g: PolicyTokenSums, from: Int, to: Int) -> PolicyGroupReport {
            let n = Double(g.tokens), den = n + 1e-8
            func plain(_ x: Double) -> Double? { g.tokens > 0 ? x / n : nil }
            func verl(_ x: Double) -> Double? { g.tokens > 0 ? x / den : nil }
            let th = zip(thresholds, g.thresholds).map { c, t in
                PolicyGroupThreshold(threshold: c, rolloutIsRatioFractionHigh: verl(Double(t.isHigh)), rolloutIsRatioFractionLow: verl(Double(t.isLow)),
                                     rolloutRsTokenK1MaskedFraction: PolicyBounds(c).bandValid ? verl(Double(t.k1High + t.k1Low)) : nil,
                                     rolloutRsTokenK2MaskedFraction: verl(Double(t.k2High)), rolloutRsTokenK3MaskedFraction: verl(Double(t.k3High)))
            }
            return PolicyGroupReport(from: from, to: to, tokens: g.tokens, meanFlippedLayers: from <= layers ? plain(Double(g.flippedLayers)) : nil,
                                     k1: plain(g.k1.value), k3: plain(g.k3.value), absLogRatio: plain(g.absLogRatio.value),
                                     chi2Token: g.tokens > 0 ? chi2(g.rhoSquared, count: g.tokens) : nil,
                                     extremeFrac: ExtremeFractions(tau1_5: plain(Double(g.extreme[0])), tau2: plain(Double(g.extreme[1])),
                                                                   tau5: plain(Double(g.extreme[2]))),
                                     thresholds: th)
        }
        func merged(_ r: ClosedRange<Int>) -> PolicyTokenSums {
            var t = PolicyTokenSums(thresholds: thresholds.count)
            for f in r { t.merge(groups[f]) }
            return t
        }
        let routing = PolicyRoutingReport(
            tokensWithoutRouting: groups[layers + 1].tokens,
            unflipped: group(groups[0], from: 0, to: 0),
            flipped: group(layers >= 1 ? merged(1...layers) : PolicyTokenSums(thresholds: thresholds.count), from: 1, to: layers),
            byFlippedLayers: flippedLayerBuckets(layers: layers).map { group(merged($0.from...$0.to), from: $0.from, to: $0.to) })

        var ths: [PolicyThresholdReport] = []
        for (c, th) in thresholds.enumerated() {
            let bd = PolicyBounds(th)
            var cnt = TokenThresholdCounts()
            for g in groups { cnt.merge(g.thresholds[c]) }
            func ess(_ sums: ISThresholdSums, mean m: Double) -> Double {
                // verl: 1 / masked_mean((w / (mean + 1e-8))², mask)
                1.0 / (sums.truncatedSquares.value / ((m + 1e-8) * (m + 1e-8)) / den)
            }
            func seqFigures(_ x: inout ISMetrics, _ sums: ISThresholdSums) {
                let r = sums.perSequence.range
                x.rolloutIsSeqMean = sums.perSequence.sum.value / s
                x.rolloutIsSeqStd = ExactVariance.sampleStd(count: sequences, sum: sums.perSequence.sum, squares: sums.perSequence.squares)
                x.rolloutIsStd = ExactVariance.maskedStd(count: all.tokens, sum: sums.truncated, squares: sums.truncatedSquares)
                x.rolloutIsSeqMax = r.max; x.rolloutIsSeqMin = r.min
                x.rolloutIsSeqMaxDeviation = Swift.max(abs(r.max - 1.0), abs(r.min - 1.0))
                x.rolloutIsSeqFractionHigh = seqShare(sums.seqHigh)
                x.rolloutIsSeqFractionLow = seqShare(sums.seqLow)
            }
            var tok = ISMetrics()
            let it = isToken[c]
            tok.rolloutIsMean = it.truncated.value / den
            tok.rolloutIsMax = Swift.min(rho.max, th); tok.rolloutIsMin = Swift.min(rho.min, th)
            tok.rolloutIsRatioFractionHigh = Double(cnt.isHigh) / den
            tok.rolloutIsRatioFractionLow = Double(cnt.isLow) / den
            tok.rolloutIsEffSampleSize = ess(it, mean: it.truncated.value / den)
            seqFigures(&tok, it)
            tok.rolloutIsOobRatio = bd.bandValid ? Double(cnt.isHigh + cnt.isLow) / den : nil

            var seq = ISMetrics()
            let iq = isSequence[c]
            seq.rolloutIsMax = exp(Swift.min(logRatioSum.max, PolicyAcc.safetyBound))
            seq.rolloutIsMin = exp(logRatioSum.min)
            seq.rolloutIsMean = iq.truncated.value / den
            seq.rolloutIsRatioFractionHigh = seqShare(iq.high)
            seq.rolloutIsRatioFractionLow = seqShare(iq.low)
            seq.rolloutIsEffSampleSize = ess(iq, mean: iq.truncated.value / den)
            seqFigures(&seq, iq)
            seq.rolloutIsOobRatio = bd.bandValid ? Double(iq.outOfBoundsTokens) / den : nil

            let rules = RSOption.allCases.map { o -> RSOptionMetrics in
                var m = RSOptionMetrics(option: o)
                if o.isK1 && !bd.bandValid { return m }
                let st = rs[o.index], k = rsCounts[c][o.index]
                let perSeq = o.aggregate != .token
                m.mean = st.weighted.value / den
                m.max = st.range.max; m.min = st.range.min
                m.fractionHigh = perSeq ? seqShare(k.high) : Double(k.high) / den
                m.fractionLow = o.isK1 ? (perSeq ? seqShare(k.low) : Double(k.low) / den) : 0.0
                m.seqMean = st.perSequence.sum.value / s
                var s1 = st.weighted, s2 = st.weightedSquares
                s1.merge(k.clamped.sum); s2.merge(k.clamped.squares)
                m.std = ExactVariance.maskedStd(count: all.tokens, sum: s1, squares: s2)
                m.seqStd = ExactVariance.sampleStd(count: sequences, sum: st.perSequence.sum, squares: st.perSequence.squares)
                m.seqMax = st.perSequence.range.max; m.seqMin = st.perSequence.range.min
                m.seqMaxDeviation = st.perSequence.range.maxAbs
                m.seqFractionHigh = seqShare(k.seqHigh)
                m.seqFractionLow = o.isK1 ? seqShare(k.seqLow) : nil
                m.maskedFraction = Double(k.maskedTokens) / den
                m.seqMaskedFraction = Double(k.maskedSequences) / s
                return m
            }
            ths.append(PolicyThresholdReport(threshold: th, rolloutIsToken: tok, rolloutIsSequence: seq, rolloutRs: RSMetrics(options: rules)))
        }
        let lpd = logPPLDiff
        return PolicyReport(
            tokens: all.tokens, sequences: sequences, tokensNonfinite: nonFinite,
            k1: all.k1.value / n, k3: all.k3.value / n, absLogRatio: all.absLogRatio.value / n,
            extremeFrac: ExtremeFractions(tau1_5: Double(all.extreme[0]) / n, tau2: Double(all.extreme[1]) / n, tau5: Double(all.extreme[2]) / n),
            kl: all.k1.value / den, k3Kl: all.k3.value / den,
            trainingPpl: trainingPPL.value / s, trainingLogPpl: trainingLogPPL.value / s,
            rolloutPpl: rolloutPPL.value / s, rolloutLogPpl: rolloutLogPPL.value / s,
            logPplDiff: lpd.sum.value / s, logPplAbsDiff: logPPLAbsDiff.value / s,
            logPplDiffMax: lpd.range.max, logPplDiffMin: lpd.range.min,
            pplRatio: pplRatio.value / s,
            chi2Token: chi2(all.rhoSquared, count: all.tokens), chi2Seq: chi2(chi2Seq, count: sequences, epsilon: 0),
            thresholds: ths, routing: routing)
    }
}
