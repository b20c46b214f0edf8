import Foundation
import RTrace

/// verl's rejection-sampling rules (`algorithm.rollout_correction.rollout_rs`, verl 0.9.1,
/// verl/trainer/ppo/rollout_corr_helper.py): a per-token statistic of log ρ and how it is aggregated.
public enum RSOption: String, CaseIterable, Sendable, Codable {
    case tokenK1 = "token_k1", tokenK2 = "token_k2", tokenK3 = "token_k3"
    case seqSumK1 = "seq_sum_k1", seqSumK2 = "seq_sum_k2", seqSumK3 = "seq_sum_k3"
    case seqMeanK1 = "seq_mean_k1", seqMeanK2 = "seq_mean_k2", seqMeanK3 = "seq_mean_k3"
    case seqMaxK2 = "seq_max_k2", seqMaxK3 = "seq_max_k3"

    /// How a rule turns per-token statistics into what it thresholds.
    public enum Aggregate: Sendable { case token, sum, mean, max }

    /// The per-token statistic: 0 = k1 (−log ρ), 1 = k2 (½ log² ρ), 2 = k3 (ρ − 1 − log ρ).
    public var statistic: Int {
        switch self {
        case .tokenK1, .seqSumK1, .seqMeanK1: 0
        case .tokenK2, .seqSumK2, .seqMeanK2, .seqMaxK2: 1
        case .tokenK3, .seqSumK3, .seqMeanK3, .seqMaxK3: 2
        }
    }

    /// Token-level (each token kept or masked) or one of the sequence-level aggregates.
    public var aggregate: Aggregate {
        switch self {
        case .tokenK1, .tokenK2, .tokenK3: .token
        case .seqSumK1, .seqSumK2, .seqSumK3: .sum
        case .seqMeanK1, .seqMeanK2, .seqMeanK3: .mean
        case .seqMaxK2, .seqMaxK3: .max
        }
    }

    /// k1 rules take a ratio band [1/C, C] (compared in log space); the others an upper bound C.
    public var isK1: Bool { statistic == 0 }
}

/// Bounds of the rules at one threshold C, as verl derives them from `rollout_is_threshold = C` and
/// `rollout_rs_threshold = C`.
struct PolicyBounds: Sendable {
    let c: Double, invC: Double, logC: Double, logInvC: Double
    /// verl refuses a band whose lower end exceeds its upper end: k1 rules and IcePop need C ≥ 1.
    let bandValid: Bool
    init(_ c: Double) {
        self.c = c
        invC = 1.0 / c
        logC = log(c)
        logInvC = log(invC)
        bandValid = invC <= c
    }
    /// Whether a rule's statistic is above its upper bound / below its lower bound (k1 only).
    @inline(__always) func high(_ o: RSOption, _ x: Double) -> Bool { x > (o.isK1 ? logC : c) }
    @inline(__always) func low(_ o: RSOption, _ x: Double) -> Bool { o.isK1 && x < logInvC }
    /// verl's clamp before a rule's standard deviation: `clamp(min = lower bound (k1) or 0, max = upper bound)`.
    @inline(__always) func clampForStd(_ o: RSOption, _ x: Double) -> Double {
        o.isK1 ? min(max(x, logInvC), logC) : min(max(x, 0.0), c)
    }
}

/// Token-level sums of one routing group: every figure that splits by flipped layers.
struct PolicyTokenSums: Codable, Equatable, Sendable {
    /// Tokens; Σ (log π_A − log π_B); Σ |log ρ|; Σ (ρ − log ρ − 1) unclamped; Σ ρ² with log ρ clamped to ±20.
    var tokens = 0
    var k1 = WideSum(), absLogRatio = WideSum(), k3 = WideSum(), rhoSquared = WideSum()
    /// Σ of the number of flipped layers (for the group's mean).
    var flippedLayers = 0
    /// Tokens with max(ρ, 1/ρ) > τ for τ in ``PolicyAcc/taus``.
    var extreme = [0, 0, 0]
    /// Per threshold.
    var thresholds: [TokenThresholdCounts]

    init(thresholds: Int) { self.thresholds = Array(repeating: TokenThresholdCounts(), count: thresholds) }

    mutating func merge(_ o: PolicyTokenSums) {
        tokens += o.tokens; flippedLayers += o.flippedLayers
        k1.merge(o.k1); absLogRatio.merge(o.absLogRatio); k3.merge(o.k3); rhoSquared.merge(o.rhoSquared)
        for i in 0..<3 { extreme[i] += o.extreme[i] }
        for i in thresholds.indices { thresholds[i].merge(o.thresholds[i]) }
    }
}

/// Token counts at one threshold C: ρ > C, ρ < 1/C (rollout_is = token), the token_k1 statistic above
/// log C / below log(1/C), token_k2 and token_k3 above C.
struct TokenThresholdCounts: Codable, Equatable, Sendable {
    var isHigh = 0, isLow = 0, k1High = 0, k1Low = 0, k2High = 0, k3High = 0
    mutating func merge(_ o: TokenThresholdCounts) {
        isHigh += o.isHigh; isLow += o.isLow; k1High += o.k1High; k1Low += o.k1Low; k2High += o.k2High; k3High += o.k3High
    }
}

/// A per-sequence value's sum, exact sum of squares (for torch's `std()` over sequences) and range.
struct SequenceValues: Codable, Equatable, Sendable {
    var sum = WideSum(), squares = ExactSquares(), range = MinMax()
    @inline(__always) mutating func add(_ x: Double) { sum.add(x); squares.add(squareOf: x); range.add(x) }
    mutating func merge(_ o: SequenceValues) { sum.merge(o.sum); squares.merge(o.squares); range.merge(o.range) }
}

/// Σ (clamp(x) − x) and Σ (clamp(x)² − x²) over the tokens whose statistic x a rule's standard deviation
/// clamps (verl clamps it to [lower bound or 0, upper bound]): added to the unclamped sums, they give the
/// clamped ones exactly, and tokens inside the bounds (nearly all) cost nothing per threshold.
struct ClampCorrection: Codable, Equatable, Sendable {
    var sum = WideSum(), squares = ExactSquares()
    /// Records `n` tokens whose statistic x clamps to `c` (c ≠ x).
    mutating func add(clamped c: Double, raw x: Double, count n: Int = 1) {
        sum.add(c, count: n); sum.add(-x, count: n)
        squares.add(squareOf: c, count: n); squares.add(squareOf: x, count: n, negate: true)
    }
    mutating func merge(_ o: ClampCorrection) { sum.merge(o.sum); squares.merge(o.squares) }
}

/// Threshold-free sums of one rejection rule's statistic.
struct RSStatistic: Codable, Equatable, Sendable {
    /// Σ over tokens of the statistic each token carries (sequence rules: n_i · s_i), and of its square.
    var weighted = WideSum(), weightedSquares = ExactSquares()
    /// Token rules: range over tokens; sequence rules: over sequences.
    var range = MinMax()
    /// Per sequence: token rules the mean of the statistic, sequence rules s_i.
    var perSequence = SequenceValues()
    mutating func merge(_ o: RSStatistic) {
        weighted.merge(o.weighted); weightedSquares.merge(o.weightedSquares); range.merge(o.range); perSequence.merge(o.perSequence)
    }
}

/// Counts of one rejection rule at one threshold.
struct RSCounts: Codable, Equatable, Sendable {
    /// Tokens and sequences the rule masks (a sequence counts when any of its tokens is masked).
    var maskedTokens = 0, maskedSequences = 0
    /// Token rules: tokens above / below the bounds; sequence rules: sequences.
    var high = 0, low = 0
    /// Sequences whose per-sequence value is above / below the bounds.
    var seqHigh = 0, seqLow = 0
    /// What clamping the per-token statistic to the rule's bounds changes in ``RSStatistic/weighted`` and
    /// ``RSStatistic/weightedSquares`` (verl's `rollout_rs_RULE_std`).
    var clamped = ClampCorrection()
    mutating func merge(_ o: RSCounts) {
        maskedTokens += o.maskedTokens; maskedSequences += o.maskedSequences
        high += o.high; low += o.low; seqHigh += o.seqHigh; seqLow += o.seqLow
        clamped.merge(o.clamped)
    }
}

/// Importance-sampling sums at one threshold C, for `rollout_is = token` or `sequence`.
struct ISThresholdSums: Codable, Equatable, Sendable {
    /// Σ over tokens of the truncated weight min(w, C) and of its exact square.
    var truncated = WideSum(), truncatedSquares = ExactSquares()
    /// Per sequence, the mean truncated weight over its tokens.
    var perSequence = SequenceValues()
    /// Sequences whose mean raw weight is > C / < 1/C.
    var seqHigh = 0, seqLow = 0
    /// Sequence level only: sequences with Σ log ρ > log C / < log(1/C), and the tokens of sequences whose
    /// weight lies outside [1/C, C] (IcePop's out-of-bounds tokens).
    var high = 0, low = 0, outOfBoundsTokens = 0
    mutating func merge(_ o: ISThresholdSums) {
        truncated.merge(o.truncated); truncatedSquares.merge(o.truncatedSquares); perSequence.merge(o.perSequence)
        seqHigh += o.seqHigh; seqLow += o.seqLow; high += o.high; low += o.low; outOfBoundsTokens += o.outOfBoundsTokens
    }
}

/// The partial state of the policy-mismatch metrics: what `rtrace diff` accumulates over response tokens
/// that carry a logprob on both sides.
///
/// Every field is an integer count, an exact ``WideSum`` or a ``MinMax``, so partial states of disjoint
/// sets of sequences merge exactly, in any order, to the state of their union (``merge(_:)``); the report
/// (``PolicyReport``) is a function of the state alone. Per-sequence figures (perplexities, sequence
/// weights, sequence-level rules) need a sequence's tokens in one partial: a sequence is one joined pair
/// of records, so that always holds.
///
/// Notation: A is the rollout (behaviour) side, B the training side; log ρ = log π_B − log π_A is verl's
/// `log_ratio = old_log_prob − rollout_log_prob`. Token t's routing context is the row that produced it,
/// row t − 1 (spec/format.md): the token is in group f when f of that row's compared layers flipped, and in
/// the "no routing" group when the row was not compared in any layer.
public struct PolicyAcc: Codable, Equatable, Sendable {
    /// The thresholds C of `--is-threshold`, in the order given.
    public let thresholds: [Double]
    /// MoE layers (groups 0…layers by flipped layers).
    public let layers: Int
    /// τ of the extreme fractions F(τ).
    public static let taus: [Double] = [1.5, 2, 5]
    /// verl's default `rollout_is_threshold`.
    public static let defaultThresholds: [Double] = [2]
    /// verl's SAFETY_BOUND: log ρ is clamped to ±20 before it is exponentiated (except in k3_kl).
    static let safetyBound = 20.0

    /// Token sums by flipped layers at the token's row: `[0…layers]`, and `[layers + 1]` for tokens whose
    /// row was not compared.
    var groups: [PolicyTokenSums]
    /// Tokens left out because a logprob is not finite.
    var nonFinite = 0
    /// RS statistics, in ``RSOption/allCases`` order.
    var rs: [RSStatistic]
    /// ρ (clamped log ρ) over tokens.
    var rho = MinMax()
    /// `[threshold]`, for rollout_is = token and = sequence.
    var isToken: [ISThresholdSums], isSequence: [ISThresholdSums]
    /// `[threshold][option]`.
    var rsCounts: [[RSCounts]]
    /// Sequences with at least one counted token.
    var sequences = 0
    /// Per sequence i (mean log-probabilities m_i with verl's masked mean): Σ exp(−m_B), Σ −m_B, Σ exp(−m_A),
    /// Σ −m_A, log_ppl_diff_i = m_A − m_B (sum, sum of |·|, range, Σ exp), Σ exp(2 · clamp(Σ log ρ)).
    var trainingPPL = WideSum(), trainingLogPPL = WideSum(), rolloutPPL = WideSum(), rolloutLogPPL = WideSum()
    var logPPLDiff = SequenceValues(), logPPLAbsDiff = WideSum(), pplRatio = WideSum(), chi2Seq = WideSum()
    /// Range of Σ log ρ (unclamped) over sequences.
    var logRatioSum = MinMax()

    /// An empty state for `layers` MoE layers and the thresholds C (each > 0 and finite).
    public init(layers: Int, thresholds: [Double] = PolicyAcc.defaultThresholds) {
        self.layers = layers
        self.thresholds = thresholds
        let t = thresholds.count
        groups = Array(repeating: PolicyTokenSums(thresholds: t), count: layers + 2)
        rs = Array(repeating: RSStatistic(), count: RSOption.allCases.count)
        isToken = Array(repeating: ISThresholdSums(), count: t)
        isSequence = isToken
        rsCounts = Array(repeating: Array(repeating: RSCounts(), count: RSOption.allCases.count), count: t)
    }

    /// Checks that the thresholds are usable (> 0, finite).
    public static func validate(thresholds: [Double]) throws(TraceError) {
        for c in thresholds where !(c > 0 && c.isFinite) {
            throw TraceError(.invalidInput, "importance-sampling threshold \(c): it must be a finite number > 0 (verl's rollout_is_threshold)")
        }
    }

    /// Checks that another partial state was made with the same settings, so that ``merge(_:)`` is meaningful.
    public func checkMergeable(_ o: PolicyAcc) throws(TraceError) {
        if o.layers != layers { throw TraceError(.invalidInput, "policy partials of \(layers) and \(o.layers) MoE layers cannot be merged") }
        if o.thresholds != thresholds {
            throw TraceError(.invalidInput, "policy partials made with --is-threshold \(thresholds) and \(o.thresholds) cannot be merged")
        }
        if o.groups.count != groups.count || o.rs.count != rs.count || o.isToken.count != thresholds.count
            || o.isSequence.count != thresholds.count || o.rsCounts.count != thresholds.count
            || o.groups.contains(where: { $0.thresholds.count != thresholds.count }) || o.rsCounts.contains(where: { $0.count != rs.count }) {
            throw TraceError(.invalidInput, "a policy partial has arrays of the wrong length for \(layers) layers and \(thresholds.count) thresholds")
        }
    }

    /// Adds another partial state made with the same settings (``checkMergeable(_:)``): exact and order-free.
    public mutating func merge(_ o: PolicyAcc) {
        precondition(o.layers == layers && o.thresholds == thresholds, "policy partials of different settings")
        for i in groups.indices { groups[i].merge(o.groups[i]) }
        nonFinite += o.nonFinite
        for i in rs.indices { rs[i].merge(o.rs[i]) }
        rho.merge(o.rho)
        for c in thresholds.indices {
            isToken[c].merge(o.isToken[c]); isSequence[c].merge(o.isSequence[c])
            for i in rs.indices { rsCounts[c][i].merge(o.rsCounts[c][i]) }
        }
        sequences += o.sequences
        trainingPPL.merge(o.trainingPPL); trainingLogPPL.merge(o.trainingLogPPL)
        rolloutPPL.merge(o.rolloutPPL); rolloutLogPPL.merge(o.rolloutLogPPL)
        logPPLDiff.merge(o.logPPLDiff); logPPLAbsDiff.merge(o.logPPLAbsDiff); pplRatio.merge(o.pplRatio); chi2Seq.merge(o.chi2Seq)
        logRatioSum.merge(o.logRatioSum)
    }

    /// All tokens: the groups merged.
    var allTokens: PolicyTokenSums {
        var t = PolicyTokenSums(thresholds: thresholds.count)
        for g in groups { t.merge(g) }
        return t
    }

    /// Adds one sequence: the response tokens that carry a logprob in both records (positions ≥ A's prompt
    /// length). `rowFlips[p − firstRow]` is the number of flipped layers of row p, or −1 when the row was not
    /// compared in any layer.
    public mutating func add(_ a: TraceRecord, _ b: TraceRecord, rowFlips: [Int32], firstRow: Int) {
        if a.logprobs.isEmpty || b.logprobs.isEmpty { return }
        let nA = a.tokens.isEmpty ? a.start + a.rowCount + 1 : a.tokens.count
        let nB = b.tokens.isEmpty ? b.start + b.rowCount + 1 : b.tokens.count
        let offA = nA - a.logprobs.count, offB = nB - b.logprobs.count
        let t0 = max(offA, offB, a.promptLength), t1 = min(nA, nB)
        guard t0 < t1 else { return }
        let T = thresholds.count, bounds = thresholds.map(PolicyBounds.init)
        let logTau = PolicyAcc.taus.map { log($0) }, sb = PolicyAcc.safetyBound
        // This sequence's sums (exact, so a sequence's mean does not depend on the order of its tokens).
        var n = 0
        var sumA = WideSum(), sumB = WideSum(), sumLR = WideSum(), sumRho = WideSum()
        var stat = [WideSum(), WideSum(), WideSum()], statMax = SIMD3<Double>(repeating: -.infinity)
        var truncated = Array(repeating: WideSum(), count: T)
        var masked = Array(repeating: [0, 0, 0], count: T)  // token rules k1, k2, k3
        var k1High = Array(repeating: 0, count: T), k1Low = k1High
        for t in t0..<t1 {
            let la = Double(a.logprobs[t - offA]), lb = Double(b.logprobs[t - offB])
            let d = la - lb  // verl's rollout_log_prob − old_log_prob
            guard d.isFinite else { nonFinite += 1; continue }
            let lr = lb - la  // log ρ, verl's log_ratio
            let p = t - 1 - firstRow
            let f = p >= 0 && p < rowFlips.count && rowFlips[p] >= 0 ? Int(rowFlips[p]) : layers + 1
            let s = min(max(lr, -sb), sb)
            let r = exp(s)
            // The RS statistics, as verl writes them: −s, 0.5 · s², (exp(s) − 1) − s.
            let x = SIMD3<Double>(-s, 0.5 * (s * s), exp(s) - 1.0 - s)
            n += 1
            sumA.add(la); sumB.add(lb); sumLR.add(lr); sumRho.add(r)
            rho.add(r)
            for i in 0..<3 {  // rs[0…2] are token_k1, token_k2, token_k3
                stat[i].add(x[i]); statMax[i] = max(statMax[i], x[i])
                rs[i].weighted.add(x[i]); rs[i].weightedSquares.add(squareOf: x[i]); rs[i].range.add(x[i])
            }
            groups[f].tokens += 1
            if f <= layers { groups[f].flippedLayers += f }
            groups[f].k1.add(d)
            groups[f].absLogRatio.add(abs(lr))
            groups[f].k3.add(exp(lr) - lr - 1)  // verl's k3_kl: exp(log_ratio) − log_ratio − 1, unclamped
            groups[f].rhoSquared.add(r * r)
            for i in 0..<3 where abs(d) > logTau[i] { groups[f].extreme[i] += 1 }
            for c in 0..<T {
                let bd = bounds[c]
                let w = min(r, bd.c)
                truncated[c].add(w)
                isToken[c].truncatedSquares.add(squareOf: w)
                var cnt = groups[f].thresholds[c]
                if r > bd.c { cnt.isHigh += 1 }
                if r < bd.invC { cnt.isLow += 1 }
                if bd.bandValid {
                    if x[0] > bd.logC { cnt.k1High += 1; k1High[c] += 1 }
                    if x[0] < bd.logInvC { cnt.k1Low += 1; k1Low[c] += 1 }
                    if !(x[0] >= bd.logInvC && x[0] <= bd.logC) { masked[c][0] += 1 }
                }
                if !(x[1] <= bd.c) { cnt.k2High += 1; masked[c][1] += 1 }
                if !(x[2] <= bd.c) { cnt.k3High += 1; masked[c][2] += 1 }
                groups[f].thresholds[c] = cnt
                for i in 0..<3 where i > 0 || bd.bandValid {
                    let o = RSOption.allCases[i], v = bd.clampForStd(o, x[i])
                    if v != x[i] { rsCounts[c][i].clamped.add(clamped: v, raw: x[i]) }
                }
            }
        }
        guard n > 0 else { return }
        addSequence(n: n, sumA: sumA.value, sumB: sumB.value, sumLR: sumLR.value, sumRho: sumRho.value,
                    stat: stat.map(\.value), statMax: [statMax[0], statMax[1], statMax[2]], truncated: truncated, bounds: bounds,
                    masked: masked, k1High: k1High, k1Low: k1Low)
    }

    /// Folds one sequence's sums into the per-sequence figures.
    private mutating func addSequence(n: Int, sumA: Double, sumB: Double, sumLR: Double, sumRho: Double, stat: [Double], statMax: [Double],
                                      truncated: [WideSum], bounds: [PolicyBounds], masked: [[Int]], k1High: [Int], k1Low: [Int]) {
        let nd = Double(n), den = nd + 1e-8  // verl's masked_mean divides by mask.sum() + 1e-8
        let sb = PolicyAcc.safetyBound
        sequences += 1
        let mA = sumA / den, mB = sumB / den
        trainingPPL.add(exp(-mB)); trainingLogPPL.add(-mB)
        rolloutPPL.add(exp(-mA)); rolloutLogPPL.add(-mA)
        let lpd = mA - mB
        logPPLDiff.add(lpd); logPPLAbsDiff.add(abs(lpd)); pplRatio.add(exp(lpd))
        let ss = min(max(sumLR, -sb), sb)
        let seqWeight = exp(ss)
        chi2Seq.add(exp(2.0 * ss))
        logRatioSum.add(sumLR)
        // RS: per-sequence values of each rule.
        var seqValue = [Double](repeating: 0, count: RSOption.allCases.count)
        for o in RSOption.allCases {
            let i = o.index, k = o.statistic
            switch o.aggregate {
            case .token: seqValue[i] = stat[k] / den
            case .sum: seqValue[i] = stat[k]
            case .mean: seqValue[i] = stat[k] / den
            case .max: seqValue[i] = statMax[k]
            }
            rs[i].perSequence.add(seqValue[i])
            if o.aggregate != .token {  // every token of the sequence carries s_i
                rs[i].weighted.add(seqValue[i], count: n); rs[i].weightedSquares.add(squareOf: seqValue[i], count: n)
                rs[i].range.add(seqValue[i])
            }
        }
        let rawTokenMean = sumRho / den, rawSeqMean = nd * seqWeight / den
        for (c, bd) in bounds.enumerated() {
            // rollout_is = token.
            let tm = truncated[c].value / den
            isToken[c].truncated.merge(truncated[c])
            isToken[c].perSequence.add(tm)
            if rawTokenMean > bd.c { isToken[c].seqHigh += 1 }
            if rawTokenMean < bd.invC { isToken[c].seqLow += 1 }
            // rollout_is = sequence: one weight for all the sequence's tokens.
            let w = min(seqWeight, bd.c)
            isSequence[c].truncated.add(w, count: n)
            isSequence[c].truncatedSquares.add(squareOf: w, count: n)
            isSequence[c].perSequence.add(nd * w / den)
            if rawSeqMean > bd.c { isSequence[c].seqHigh += 1 }
            if rawSeqMean < bd.invC { isSequence[c].seqLow += 1 }
            if sumLR > bd.logC { isSequence[c].high += 1 }
            if sumLR < bd.logInvC { isSequence[c].low += 1 }
            if seqWeight < bd.invC || seqWeight > bd.c { isSequence[c].outOfBoundsTokens += n }
            // rollout_rs.
            for o in RSOption.allCases {
                if o.isK1 && !bd.bandValid { continue }
                let i = o.index, v = seqValue[i]
                var cnt = rsCounts[c][i]
                if bd.high(o, v) { cnt.seqHigh += 1 }
                if bd.low(o, v) { cnt.seqLow += 1 }
                if o.aggregate == .token {
                    let m = masked[c][o.statistic]
                    cnt.maskedTokens += m
                    if m > 0 { cnt.maskedSequences += 1 }
                    if o.isK1 { cnt.high += k1High[c]; cnt.low += k1Low[c] } else { cnt.high += m }
                } else {
                    let vc = bd.clampForStd(o, v)
                    if vc != v { cnt.clamped.add(clamped: vc, raw: v, count: n) }
                    let keep = o.isK1 ? (v >= bd.logInvC && v <= bd.logC) : v <= bd.c
                    if !keep { cnt.maskedTokens += n; cnt.maskedSequences += 1 }
                    if bd.high(o, v) { cnt.high += 1 }
                    if bd.low(o, v) { cnt.low += 1 }
                }
                rsCounts[c][i] = cnt
            }
        }
    }
}

extension RSOption {
    /// Position in ``allCases``.
    var index: Int {
        switch self {
        case .tokenK1: 0
        case .tokenK2: 1
        case .tokenK3: 2
        case .seqSumK1: 3
        case .seqSumK2: 4
        case .seqSumK3: 5
        case .seqMeanK1: 6
        case .seqMeanK2: 7
        case .seqMeanK3: 8
        case .seqMaxK2: 9
        case .seqMaxK3: 10
        }
    }
}
