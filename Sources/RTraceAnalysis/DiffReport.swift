import Foundation

/// The result of comparing two sides: the figures of a ``DiffPartial``, as JSON (``result``), CSV
/// and a table. The same partial, whether from one run or merged from parts, gives the same report.
public struct DiffReport {
    /// The tallies the figures come from.
    public var partial: DiffPartial
    /// How the join ran (nil for a report of merged partials).
    public var join: JoinStats? = nil

    /// The report of `partial`.
    public init(partial: DiffPartial) {
        self.partial = partial
    }

    var acc: DiffAcc { partial.acc }
    /// The files of each side.
    public var filesA: [String] { partial.filesA }
    public var filesB: [String] { partial.filesB }
    /// Whether every file of both sides carries router logits, gate weights, logprobs.
    public var hasLogits: Bool { partial.hasLogits }
    public var hasWeights: Bool { partial.hasWeights }
    public var hasLogprobs: Bool { partial.hasLogprobs }
    /// The decoder index of each MoE layer.
    public var layerMap: [Int] { partial.model.layerMap }
    /// Position buckets (``DiffOptions/buckets``).
    public var buckets: Int { acc.nb }
    /// How many sequences ``topSequences`` lists at most.
    public var topN: Int { partial.top }
    /// Per MoE layer and position bucket, `[layer * buckets + bucket]`: compared (row, layer)s, and
    /// those whose top-k set differs (summed over layers, a bucket's counts give its flip rate).
    public var gridCompared: [Int] { acc.grid(flipped: false) }
    public var gridFlipped: [Int] { acc.grid(flipped: true) }

    /// Sums over a group of histogram cells.
    struct Summary { var n = 0, flips = 0, oflips = 0, jacc = 0.0, changed = 0 }

    func summarize(_ h: ArraySlice<Int>, oflips: Int) -> Summary {
        let k = acc.k
        var s = Summary(oflips: oflips)
        for (i, c) in h.enumerated() {
            s.n += c
            if i < k { s.flips += c }
            s.jacc += Double(c) * Double(i) / Double(2 * k - i)
            s.changed += c * (k - i)
        }
        return s
    }

    func cell(layer l: Int, cls: [Int]) -> Summary {
        var t = Summary()
        for c in cls {
            let (h, o) = acc.layerCell(c, l)
            let s = summarize(h[...], oflips: o)
            t.n += s.n; t.flips += s.flips; t.oflips += s.oflips; t.jacc += s.jacc; t.changed += s.changed
        }
        return t
    }

    func total(cls: [Int]) -> Summary {
        var t = Summary()
        for l in 0..<acc.L {
            let s = cell(layer: l, cls: cls)
            t.n += s.n; t.flips += s.flips; t.oflips += s.oflips; t.jacc += s.jacc; t.changed += s.changed
        }
        return t
    }

    /// a / n, or nil when there is nothing to average (or the value is not finite).
    func ratio(_ a: Double, _ n: Int) -> Double? {
        guard n > 0 else { return nil }
        let r = a / Double(n)
        return r.isFinite ? r : nil
    }

    func sets(_ s: Summary) -> SetFigures {
        SetFigures(layerRows: s.n, flipRate: ratio(Double(s.flips), s.n), orderedFlipRate: ratio(Double(s.oflips), s.n),
                   jaccard: ratio(s.jacc, s.n), meanExpertsChanged: ratio(Double(s.changed), s.n))
    }

    func rows(_ s: Summary, rows: Int, any: Int, flippedLayers: Int) -> RowFigures {
        RowFigures(sets: sets(s), rows: rows, tokenAnyLayerFlip: ratio(Double(any), rows),
                   meanFlippedLayersPerRow: ratio(Double(flippedLayers), rows))
    }

    /// Sequences with the most flipped rows (ties by uid).
    public var topSequences: [TopSequence] { Array(acc.top.sorted(by: TopSequence.ranked).prefix(topN)) }

    /// The report (spec/cli-json.md), what `rtrace diff --json` prints.
    public var result: DiffResult {
        let all = total(cls: [0, 1])
        var kls = WideSum(), kln = 0, ws = WideSum(), wn = 0
        var per: [LayerDiff] = []
        for l in 0..<acc.L {
            per.append(LayerDiff(layer: layerMap[l], moeIndex: l, sets: sets(cell(layer: l, cls: [0, 1])),
                                 routerKL: partial.hasLogits ? ratio(acc.klSum[l].value, acc.klN[l]) : nil,
                                 weightMAE: partial.hasWeights ? ratio(acc.wSum[l].value, acc.wN[l]) : nil))
            kls.merge(acc.klSum[l]); kln += acc.klN[l]; ws.merge(acc.wSum[l]); wn += acc.wN[l]
        }
        var bs: [BucketDiff] = []
        let k1 = acc.k + 1
        let bhist = acc.bhist, boflips = acc.boflips
        for b in 0..<acc.nb {
            let s = summarize(bhist[b * k1..<(b + 1) * k1], oflips: boflips[b])
            // A bucket's flipped layers per row: its flipped (row, layer)s over its rows.
            bs.append(BucketDiff(bucket: b, from: Double(b) / Double(acc.nb), to: Double(b + 1) / Double(acc.nb),
                                 figures: rows(s, rows: acc.brows[b], any: acc.bany[b], flippedLayers: s.flips)))
        }
        return DiffResult(
            a: partial.filesA, b: partial.filesB, topK: acc.k, numExperts: acc.E, matched: partial.matched(compared: all.n),
            all: rows(all, rows: acc.rows[0] + acc.rows[1], any: acc.anyFlip[0] + acc.anyFlip[1],
                      flippedLayers: acc.flippedLayers[0] + acc.flippedLayers[1]),
            perLayer: per,
            routerKL: partial.hasLogits ? ratio(kls.value, kln) : nil,
            weightMAE: partial.hasWeights ? ratio(ws.value, wn) : nil,
            prompt: rows(total(cls: [0]), rows: acc.rows[0], any: acc.anyFlip[0], flippedLayers: acc.flippedLayers[0]),
            response: rows(total(cls: [1]), rows: acc.rows[1], any: acc.anyFlip[1], flippedLayers: acc.flippedLayers[1]),
            buckets: bs,
            policy: policy,
            top: topSequences)
    }

    /// The report as a JSON object tree (keys of spec/cli-json.md), for looking keys up by name.
    public var json: [String: Any] { jsonTree(result) }

    /// Per-layer rows as CSV.
    public var csv: String {
        let r = result
        func v(_ x: Double?) -> String { x.map { "\($0)" } ?? "" }
        var s = "layer,moe_index,layer_rows,flip_rate,ordered_flip_rate,jaccard,mean_experts_changed,router_kl,weight_mae\n"
        for p in r.perLayer {
            s += "\(p.layer),\(p.moeIndex),\(p.sets.layerRows),\(v(p.sets.flipRate)),\(v(p.sets.orderedFlipRate)),"
            s += "\(v(p.sets.jaccard)),\(v(p.sets.meanExpertsChanged)),\(v(p.routerKL)),\(v(p.weightMAE))\n"
        }
        return s
    }

    /// An aligned table for people.
    public var text: String {
        let j = result, m = j.matched
        var s = "sequences: \(m.sequences) matched, \(m.sequencesOnlyA) only in A, \(m.sequencesOnlyB) only in B\n"
        s += "rows: \(m.rows) matched, \(m.rowsOnlyA) only in A, \(m.rowsOnlyB) only in B; "
        s += "(row, layer)s compared \(m.layerRowsCompared ?? 0), skipped as missing \(m.layerRowsSkipped)\n\n"
        var rows: [[String]] = [["layer", "rows", "flip", "ordered", "jaccard", "changed", "router_kl", "weight_mae"]]
        func setCells(_ f: SetFigures) -> [String] {
            [fmt(f.flipRate), fmt(f.orderedFlipRate), fmt(f.jaccard), fmt(f.meanExpertsChanged, 3)]
        }
        for p in j.perLayer {
            rows.append(["\(p.layer)", "\(p.sets.layerRows)"] + setCells(p.sets) + [fmt(p.routerKL, 6), fmt(p.weightMAE, 6)])
        }
        rows.append(["all", "\(m.layerRowsCompared ?? 0)"] + setCells(j.all.sets) + [fmt(j.routerKL, 6), fmt(j.weightMAE, 6)])
        s += table(rows) + "\n"
        var r2: [[String]] = [["rows", "count", "flip", "any_layer_flip", "flipped_layers/row"]]
        func rowCells(_ name: String, _ f: RowFigures) -> [String] {
            [name, "\(f.rows)", fmt(f.sets.flipRate), fmt(f.tokenAnyLayerFlip), fmt(f.meanFlippedLayersPerRow, 3)]
        }
        r2.append(rowCells("prompt", j.prompt))
        r2.append(rowCells("response", j.response))
        for d in j.buckets { r2.append(rowCells("pos \(fmt(d.from, 2))–\(fmt(d.to, 2))", d.figures)) }
        r2.append(rowCells("all", j.all))
        s += table(r2)
        if let p = j.policy { s += "\n" + p.text }
        if !j.top.isEmpty {
            s += "\nmost flipped sequences:\n"
            s += table([["uid", "flipped_rows", "rows"]] + j.top.map { [$0.uid, "\($0.flippedRows)", "\($0.rows)"] })
        }
        return s
    }
}
