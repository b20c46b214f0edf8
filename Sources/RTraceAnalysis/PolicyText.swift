import Foundation

extension PolicyReport {
    /// Ranges as people write them: "0", "3–4".
    public static func rangeLabel(_ from: Int, _ to: Int) -> String { from == to ? "\(from)" : "\(from)–\(to)" }

    /// Threshold as a short label: "2", "1.05".
    public static func thresholdLabel(_ c: Double) -> String { c == c.rounded() && abs(c) < 1e15 ? String(Int(c)) : "\(c)" }

    /// The section of `rtrace diff`'s table output.
    public var text: String {
        func f(_ x: Double?, _ d: Int = 6) -> String { fmt(x, d) }
        var s = "policy over \(tokens) response tokens in \(sequences) sequences (ρ = r = πB/πA"
        s += tokensNonfinite > 0 ? "; \(tokensNonfinite) tokens with a non-finite logprob left out)\n" : ")\n"
        s += "  k1 \(f(k1))  k3 \(f(k3))  mean |log ρ| \(f(absLogRatio))  "
        s += "F(1.5) \(fmt(extremeFrac.tau1_5))  F(2) \(fmt(extremeFrac.tau2))  F(5) \(fmt(extremeFrac.tau5))\n"
        s += "  verl rollout_corr/: kl \(f(kl))  k3_kl \(f(k3Kl))  chi2_token \(f(chi2Token))  chi2_seq \(f(chi2Seq))\n"
        s += "    training_ppl \(f(trainingPpl, 4))  rollout_ppl \(f(rolloutPpl, 4))  ppl_ratio \(f(pplRatio))  "
        s += "training_log_ppl \(f(trainingLogPpl, 4))  rollout_log_ppl \(f(rolloutLogPpl, 4))\n"
        s += "    log_ppl_diff \(f(logPplDiff))  log_ppl_abs_diff \(f(logPplAbsDiff))  max \(f(logPplDiffMax))  min \(f(logPplDiffMin))\n"
        if !thresholds.isEmpty {
            s += "\nshares an IS/RS rule at threshold C would clip or mask (verl's rollout_is / rollout_rs):\n"
            var rows: [[String]] = [["rule"] + thresholds.map { "C = \(Self.thresholdLabel($0.threshold))" }]
            rows.append(["is=token: tokens ρ > C | ρ < 1/C"] + thresholds.map {
                "\(fmt($0.rolloutIsToken.rolloutIsRatioFractionHigh)) | \(fmt($0.rolloutIsToken.rolloutIsRatioFractionLow))"
            })
            rows.append(["is=sequence: sequences Πρ > C | < 1/C"] + thresholds.map {
                "\(fmt($0.rolloutIsSequence.rolloutIsRatioFractionHigh)) | \(fmt($0.rolloutIsSequence.rolloutIsRatioFractionLow))"
            })
            for (i, o) in RSOption.allCases.enumerated() {
                rows.append(["rs=\(o.rawValue): tokens | sequences masked"] + thresholds.map {
                    let m = $0.rolloutRs.options[i]
                    return m.maskedFraction == nil ? "-" : "\(fmt(m.maskedFraction)) | \(fmt(m.seqMaskedFraction))"
                })
            }
            s += table(rows)
        }
        s += "\npolicy by flipped layers of the row that produced the token:\n"
        var rows: [[String]] = [["flipped layers", "tokens", "k1", "k3", "mean |log ρ|", "chi2_token", "F(2)"]
            + thresholds.map { "ρ ∉ [1/C, C], C = \(Self.thresholdLabel($0.threshold))" }]
        func row(_ name: String, _ g: PolicyGroupReport) -> [String] {
            [name, "\(g.tokens)", f(g.k1), f(g.k3), f(g.absLogRatio), f(g.chi2Token), fmt(g.extremeFrac.tau2)] + g.thresholds.map {
                guard PolicyBounds($0.threshold).bandValid, let h = $0.rolloutIsRatioFractionHigh, let l = $0.rolloutIsRatioFractionLow else { return "-" }
                return fmt(h + l)
            }
        }
        for g in routing.byFlippedLayers { rows.append(row(Self.rangeLabel(g.from, g.to), g)) }
        rows.append(row("≥ 1 (flipped)", routing.flipped))
        s += table(rows)
        if routing.tokensWithoutRouting > 0 {
            s += "(\(routing.tokensWithoutRouting) tokens have no compared row: their routing is unknown)\n"
        }
        return s
    }

    /// The token-level figures per routing group as CSV: one row for all tokens, one for unflipped and
    /// flipped tokens, one per flipped-layer bucket (columns in spec/cli-json.md).
    public var csv: String {
        var head = ["group", "from", "to", "tokens", "mean_flipped_layers", "k1", "k3", "abs_log_ratio", "chi2_token",
                    "extreme_frac_1.5", "extreme_frac_2", "extreme_frac_5"]
        for t in thresholds {
            let c = Self.thresholdLabel(t.threshold)
            head += ["rollout_is_ratio_fraction_high@\(c)", "rollout_is_ratio_fraction_low@\(c)", "rollout_rs_token_k1_masked_fraction@\(c)",
                     "rollout_rs_token_k2_masked_fraction@\(c)", "rollout_rs_token_k3_masked_fraction@\(c)"]
        }
        func v(_ x: Double?) -> String { x.map { $0.isFinite ? "\($0)" : "" } ?? "" }
        var s = head.joined(separator: ",") + "\n"
        var all = ["all", "", "", "\(tokens)", "", v(k1), v(k3), v(absLogRatio), v(chi2Token)] + extremeFrac.values.map(v)
        for t in thresholds {
            let rs = t.rolloutRs.options
            all += [v(t.rolloutIsToken.rolloutIsRatioFractionHigh), v(t.rolloutIsToken.rolloutIsRatioFractionLow),
                    v(rs[RSOption.tokenK1.index].maskedFraction), v(rs[RSOption.tokenK2.index].maskedFraction), v(rs[RSOption.tokenK3.index].maskedFraction)]
        }
        s += all.joined(separator: ",") + "\n"
        func line(_ name: String, _ g: PolicyGroupReport) {
            var r = [name, "\(g.from)", "\(g.to)", "\(g.tokens)", v(g.meanFlippedLayers), v(g.k1), v(g.k3), v(g.absLogRatio), v(g.chi2Token)]
            r += g.extremeFrac.values.map(v)
            for t in g.thresholds {
                r += [v(t.rolloutIsRatioFractionHigh), v(t.rolloutIsRatioFractionLow), v(t.rolloutRsTokenK1MaskedFraction),
                      v(t.rolloutRsTokenK2MaskedFraction), v(t.rolloutRsTokenK3MaskedFraction)]
            }
            s += r.joined(separator: ",") + "\n"
        }
        line("unflipped", routing.unflipped)
        line("flipped", routing.flipped)
        for g in routing.byFlippedLayers { line("flipped_layers", g) }
        return s
    }
}

extension DiffReport {
    /// The policy-mismatch figures; nil unless both sides carry logprobs for at least one response token.
    public var policy: PolicyReport? { hasLogprobs ? acc.policy.report : nil }

    /// The partial state behind ``policy`` (exact; merges with other shards' states).
    public var policyPartial: PolicyAcc { acc.policy }
}
