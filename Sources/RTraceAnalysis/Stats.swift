import Dispatch
import Foundation
import RTrace

/// Options of ``statsTraces(_:options:)``.
public struct StatsOptions: Sendable, Equatable {
    /// Expert capacity factor C: capacity = floor(C · tokens · k / E) per batch of ``batchTokens`` rows.
    public var capacityFactor: Double?
    /// Rows per capacity batch, in stream order (a shard's last batch may be short).
    public var batchTokens: Int = 4096
    /// Expert-parallel ranks for the placement report.
    public var ep: Int?
    public var threads: Int = max(1, ProcessInfo.processInfo.activeProcessorCount)
    public init(capacityFactor: Double? = nil, batchTokens: Int = 4096, ep: Int? = nil) {
        self.capacityFactor = capacityFactor
        self.batchTokens = max(1, batchTokens)
        self.ep = ep
    }
}

/// Integer counts and exact sums of one layer; partials add exactly. Its JSON is `partial.layers[i]`
/// of `rtrace stats --json`.
public struct LayerTally: Sendable, Equatable, Codable {
    public var tokens = 0
    public var counts: [Int]
    public var top1WeightSum = ExactSum(), top1WeightRows = 0
    public var entropySum = ExactSum(), logitRows = 0
    public var probSum: [ExactSum]
    public var dropped = 0, capacityAssignments = 0

    enum CodingKeys: String, CodingKey {
        case tokens, counts
        case top1WeightSum = "top1_weight_sum", top1WeightRows = "top1_weight_rows"
        case entropySum = "router_entropy_sum", logitRows = "logit_rows", probSum = "router_prob_sum"
        case dropped = "capacity_dropped", capacityAssignments = "capacity_assignments"
    }

    init(E: Int, logits: Bool) {
        counts = Array(repeating: 0, count: E)
        probSum = logits ? Array(repeating: ExactSum(), count: E) : []
    }

    mutating func merge(_ o: LayerTally) {
        tokens += o.tokens
        for e in counts.indices { counts[e] += o.counts[e] }
        top1WeightSum = top1WeightSum + o.top1WeightSum; top1WeightRows += o.top1WeightRows
        entropySum = entropySum + o.entropySum; logitRows += o.logitRows
        if probSum.isEmpty { probSum = o.probSum } else if !o.probSum.isEmpty {
            for e in probSum.indices { probSum[e] = probSum[e] + o.probSum[e] }
        }
        dropped += o.dropped; capacityAssignments += o.capacityAssignments
    }

    mutating func dropLogits() {
        entropySum = ExactSum(); logitRows = 0; probSum = []
    }
}

/// The mergeable part of `rtrace stats`: geometry, options and per-layer tallies.
public struct StatsPartial: Sendable, Equatable {
    public var model: ModelGeometry
    public var options: StatsOptions
    /// The whole files counted, and the parts of files (``ChunkRange``) counted.
    public var files: [String] = []
    public var chunkRanges: [ChunkRange] = []
    public var records = 0, rows = 0
    public var hasWeights = false, hasLogits = false
    public var layers: [LayerTally]

    init(model: ModelGeometry, options: StatsOptions, logits: Bool) {
        self.model = model
        self.options = options
        layers = (0..<model.moeLayers).map { _ in LayerTally(E: model.numExperts, logits: logits) }
    }

    /// Equal tallies of the same geometry (the model's name, the files and the options aside).
    public static func == (a: StatsPartial, b: StatsPartial) -> Bool {
        a.model.numLayers == b.model.numLayers && a.model.numExperts == b.model.numExperts && a.model.topK == b.model.topK
            && a.model.layerMap == b.model.layerMap && a.records == b.records && a.rows == b.rows && a.layers == b.layers
            && a.hasWeights == b.hasWeights && a.hasLogits == b.hasLogits
    }

    /// Adds another partial of the same geometry and options.
    public mutating func merge(_ o: StatsPartial) throws(TraceError) {
        try checkSameGeometry(model, o.model, files.first ?? "first partial", o.files.first ?? "second partial")
        if options.capacityFactor != o.options.capacityFactor || (options.capacityFactor != nil && options.batchTokens != o.options.batchTokens) {
            throw TraceError(.invalidInput, "partials were computed with different --capacity-factor/--batch-tokens and cannot be merged")
        }
        files += o.files
        chunkRanges = try ChunkRange.combine(files: &files, ranges: chunkRanges + o.chunkRanges)
        records += o.records; rows += o.rows
        hasWeights = hasWeights && o.hasWeights
        hasLogits = hasLogits && o.hasLogits
        for l in layers.indices { layers[l].merge(o.layers[l]) }
        // One `rtrace stats` over the union counts logits only when every input has them; a merge
        // of partials must say the same, so logit tallies go when one side has none.
        if !hasLogits { for l in layers.indices { layers[l].dropLogits() } }
    }

    /// Whether the per-layer tallies hold logit sums (set when the partial was made: every input has logits).
    var talliesLogits: Bool { layers.first.map { !$0.probSum.isEmpty } ?? false }

    /// Adds one record (counts, weights, logits; capacity is done in stream order elsewhere).
    mutating func add(_ r: TraceRecord) {
        let L = model.moeLayers, k = model.topK, E = model.numExperts
        records += 1; rows += r.rowCount
        let w = r.weights?.floats
        // Logits count only where every file of the union has them (the tallies were sized for it): a
        // file with logits among files without adds its ids and weights, like the others.
        let lg = talliesLogits ? r.logits?.floats : nil
        var probs = lg != nil ? [Double](repeating: 0, count: E) : []
        r.expertIDs.withUnsafeBufferPointer { ids in
            for l in 0..<L {
                var t = 0, w1 = 0.0, w1n = 0, ent = 0.0, ln = 0
                if lg != nil { for e in 0..<E { probs[e] = 0 } }
                layers[l].counts.withUnsafeMutableBufferPointer { cnt in
                    for row in 0..<r.rowCount {
                        let o = (row * L + l) * k
                        if ids[o] == TraceRecord.missing { continue }
                        t += 1
                        for j in 0..<k { let e = Int(ids[o + j]); if e < E { cnt[e] += 1 } }
                        if let w {
                            var m = -Float.infinity
                            for j in 0..<k { m = max(m, w[o + j]) }
                            w1 += Double(m); w1n += 1
                        }
                        if let lg {
                            let b = (row * L + l) * E
                            var mx = -Double.infinity
                            for e in 0..<E { mx = max(mx, Double(lg[b + e])) }
                            var s = 0.0
                            for e in 0..<E { s += exp(Double(lg[b + e]) - mx) }
                            let lse = mx + log(s)
                            var h = 0.0
                            for e in 0..<E {
                                let x = Double(lg[b + e]) - lse
                                let p = exp(x)
                                if p > 0 { h -= p * x }
                                probs[e] += p
                            }
                            ent += h; ln += 1
                        }
                    }
                }
                layers[l].tokens += t
                if w1n > 0 { layers[l].top1WeightSum.add(w1); layers[l].top1WeightRows += w1n }
                if ln > 0 {
                    layers[l].entropySum.add(ent); layers[l].logitRows += ln
                    for e in 0..<E { layers[l].probSum[e].add(probs[e]) }
                }
            }
        }
    }
}

/// Capacity simulation in stream order: batches of `batchTokens` rows.
struct CapacitySim {
    let L: Int, E: Int, k: Int, factor: Double, batch: Int
    var counts: [Int], tokens: [Int], rowsInBatch = 0
    init(L: Int, E: Int, k: Int, factor: Double, batch: Int) {
        // A batch below 1 row means no batching: the whole stream is one batch.
        self.L = L; self.E = E; self.k = k; self.factor = factor; self.batch = batch < 1 ? Int.max : batch
        counts = Array(repeating: 0, count: L * E); tokens = Array(repeating: 0, count: L)
    }
    mutating func add(_ r: TraceRecord, _ p: inout StatsPartial) {
        var row = 0
        while row < r.rowCount {
            // Rows up to the end of the record or of the current batch, counted through raw pointers.
            let n = min(r.rowCount - row, batch - rowsInBatch)
            let (L, E, k) = (self.L, self.E, self.k)
            r.expertIDs.withUnsafeBufferPointer { ids in
                counts.withUnsafeMutableBufferPointer { counts in
                    tokens.withUnsafeMutableBufferPointer { tokens in
                        for rr in row..<(row + n) {
                            for l in 0..<L {
                                let o = (rr &* L &+ l) &* k
                                if ids[o] == TraceRecord.missing { continue }
                                tokens[l] &+= 1
                                for j in 0..<k {
                                    let e = Int(ids[o &+ j])
                                    if e < E { counts[l &* E &+ e] &+= 1 }
                                }
                            }
                        }
                    }
                }
            }
            row += n
            rowsInBatch += n
            if rowsInBatch == batch { close(&p) }
        }
    }
    /// capacity = floor(C · n · k / E) for the n tokens of the batch; assignments above it are dropped.
    mutating func close(_ p: inout StatsPartial) {
        if rowsInBatch == 0 { return }
        for l in 0..<L where tokens[l] > 0 {
            let cap = Int((factor * Double(tokens[l] * k) / Double(E)).rounded(.down))
            var d = 0
            for e in 0..<E { d += max(0, counts[l * E + e] - cap); counts[l * E + e] = 0 }
            p.layers[l].dropped += d
            p.layers[l].capacityAssignments += tokens[l] * k
            tokens[l] = 0
        }
        rowsInBatch = 0
    }
}

/// Computes the statistics of the union of `paths` (directories stand for their *.rtrace files).
///
/// `chunks` (`FIRST:END`) counts only the records that start in those chunks of one complete file: a
/// part of it, whose result merges with the results of the other parts into the file's (``ChunkRange``).
public func statsTraces(_ paths: [String], options: StatsOptions = StatsOptions(), chunks: String? = nil) throws -> StatsPartial {
    let files = try expandTracePaths(paths)
    let rs = try openAll(files)
    let g = rs[0].header.model
    let hasLogits = rs.allSatisfy { $0.header.columns.routerLogits != nil }
    var p = StatsPartial(model: g, options: options, logits: hasLogits)
    var range: (ChunkRange, TraceIndex)? = nil
    if let chunks {
        guard files.count == 1 else {
            throw TraceError(.invalidInput, "--chunks counts a part of one file; \(files.count) were given")
        }
        guard options.capacityFactor == nil else {
            throw TraceError(.invalidInput, "--chunks cannot go with --capacity-factor: capacity batches run on in stream order across the parts")
        }
        guard let index = rs[0].index else {
            throw TraceError(.invalidInput, "--chunks needs a complete file with an index (this one is unfinished or a stream)", file: files[0])
        }
        range = (try ChunkRange(parsing: chunks, file: files[0], chunks: index.chunks.count), index)
        p.chunkRanges = [range!.0]
    } else {
        p.files = files
    }
    p.hasLogits = hasLogits
    p.hasWeights = rs.allSatisfy { $0.header.columns.topkWeights != nil }
    var cap = options.capacityFactor.map { CapacitySim(L: g.moeLayers, E: g.numExperts, k: g.topK, factor: $0, batch: options.batchTokens) }
    let threads = max(1, options.threads)
    var batch: [TraceRecord] = []
    var batchRows = 0
    func flush() {
        if batch.isEmpty { return }
        let nt = min(threads, batch.count)
        let parts = SharedSlots<StatsPartial>(count: nt)
        let work = UncheckedBox(value: batch)
        let empty = StatsPartial(model: g, options: options, logits: hasLogits)
        DispatchQueue.concurrentPerform(iterations: nt) { t in
            var local = empty
            var i = t
            while i < work.value.count { local.add(work.value[i]); i += nt }
            parts.set(t, local)
        }
        for t in 0..<nt {
            let o = parts.get(t)
            p.records += o.records; p.rows += o.rows
            for l in p.layers.indices { p.layers[l].merge(o.layers[l]) }
        }
        batch.removeAll(keepingCapacity: true)
        batchRows = 0
    }
    func consume(_ r: TraceRecord) {
        if cap != nil { cap!.add(r, &p) }
        batch.append(r)
        batchRows += r.rowCount + 1
        if batchRows >= 8192 || batch.count >= 512 { flush() }
    }
    if let (cr, index) = range {
        let run = cr.run(in: index)
        if !run.records.isEmpty {
            try RecordRunReader(readers: rs, window: threads).forEachRecord([(reader: 0, run: run)]) { _, _, r in consume(r) }
        }
    } else {
        let ch = streamRecords(rs)
        defer { ch.cancel() }
        while let r = try ch.take() { consume(r) }
    }
    flush()
    if cap != nil { cap!.close(&p) }
    return p
}

// MARK: Derived figures and output

/// Derived per-layer figures.
public struct LayerStats {
    public var layer: Int, tokens: Int, assignments: Int
    public var load: [Double]
    public var dead: Int, halfLoadExperts: Int
    public var maxOverMean: Double? = nil, cv: Double? = nil
    public var normEntropy: Double? = nil, effectiveExperts: Double? = nil
    public var meanTop1Weight: Double? = nil, routerEntropy: Double? = nil, auxLoss: Double? = nil, dropRate: Double? = nil
}

/// Expert-parallel placement figures of one layer.
public struct EPLayer {
    public var contiguous: [Int], balanced: [Int]
    public var contiguousMaxOverMean: Double?, balancedMaxOverMean: Double?
    /// Rank of each expert in the balanced placement.
    public var expertToRank: [Int]
}

extension StatsPartial {
    public func derived(_ l: Int) -> LayerStats {
        let t = layers[l], E = model.numExperts
        let A = t.counts.reduce(0, +)
        var s = LayerStats(layer: model.layerMap[l], tokens: t.tokens, assignments: A, load: [], dead: 0, halfLoadExperts: 0)
        s.dead = t.counts.filter { $0 == 0 }.count
        s.meanTop1Weight = t.top1WeightRows > 0 ? t.top1WeightSum.value / Double(t.top1WeightRows) : nil
        if t.logitRows > 0 { s.routerEntropy = t.entropySum.value / Double(t.logitRows) }
        if t.capacityAssignments > 0 { s.dropRate = Double(t.dropped) / Double(t.capacityAssignments) }
        guard A > 0 else { return s }
        s.load = t.counts.map { Double($0) / Double(A) }
        let mean = Double(A) / Double(E)
        s.maxOverMean = Double(t.counts.max()!) / mean
        let v = t.counts.reduce(0.0) { $0 + (Double($1) - mean) * (Double($1) - mean) } / Double(E)
        s.cv = v.squareRoot() / mean
        let h = s.load.reduce(0.0) { $0 - ($1 > 0 ? $1 * log($1) : 0) }
        s.normEntropy = E > 1 ? h / log(Double(E)) : 1
        s.effectiveExperts = exp(h)
        var cum = 0, n = 0
        for c in t.counts.sorted(by: >) {
            if 2 * cum >= A { break }
            cum += c; n += 1
        }
        s.halfLoadExperts = n
        if t.logitRows > 0 && !t.probSum.isEmpty {
            var aux = 0.0
            for e in 0..<E { aux += s.load[e] * (t.probSum[e].value / Double(t.logitRows)) }
            s.auxLoss = Double(E) * aux
        }
        return s
    }

    public func ep(_ l: Int, ranks n: Int) -> EPLayer {
        let c = layers[l].counts, E = model.numExperts
        func mm(_ x: [Int]) -> Double? {
            let tot = x.reduce(0, +)
            return tot > 0 ? Double(x.max()!) / (Double(tot) / Double(x.count)) : nil
        }
        var contiguous = [Int](repeating: 0, count: n)
        for e in 0..<E { contiguous[e * n / E] += c[e] }
        // Greedy LPT: heaviest expert first onto the least-loaded rank with a free slot (ceil(E/n) slots each).
        let slots = (E + n - 1) / n
        var load = [Int](repeating: 0, count: n), used = [Int](repeating: 0, count: n)
        var map = [Int](repeating: 0, count: E)
        for e in (0..<E).sorted(by: { c[$0] != c[$1] ? c[$0] > c[$1] : $0 < $1 }) {
            var best = -1
            for r in 0..<n where used[r] < slots && (best < 0 || load[r] < load[best]) { best = r }
            map[e] = best; load[best] += c[e]; used[best] += 1
        }
        return EPLayer(contiguous: contiguous, balanced: load, contiguousMaxOverMean: mm(contiguous), balancedMaxOverMean: mm(load), expertToRank: map)
    }

    /// A table for people.
    public var text: String {
        let j = report
        var s = "\(records) records, \(rows) rows, \(model.moeLayers) MoE layers × \(model.numExperts) experts, top-\(model.topK)\n"
        s += "top-1 weight = max over the k slots; aux loss = E·Σ f_i·P_i; entropy in nats\n\n"
        var rows: [[String]] = [["layer", "tokens", "max/mean", "cv", "dead", "norm_H", "eff_E", "half_load", "top1_w", "router_H", "aux", "drop"]]
        for p in j.layers {
            rows.append(["\(p.layer)", "\(p.tokens)", fmt(p.maxOverMean, 3), fmt(p.cv, 3), "\(p.deadExperts)", fmt(p.normalizedEntropy, 3),
                         fmt(p.effectiveExperts, 1), "\(p.halfLoadExperts)", fmt(p.meanTop1Weight, 3), fmt(p.routerEntropy, 3),
                         fmt(p.auxLoss, 3), fmt(p.dropRate, 4)])
        }
        rows.append(["mean", "\(j.tokens)", fmt(j.maxOverMean, 3), fmt(j.cv, 3), "\(j.deadExperts)", fmt(j.normalizedEntropy, 3),
                     fmt(j.effectiveExperts, 1), "", fmt(j.meanTop1Weight, 3), fmt(j.routerEntropy, 3), fmt(j.auxLoss, 3), fmt(j.dropRate, 4)])
        s += table(rows)
        s += "\nheaviest experts per layer (expert: load fraction):\n"
        for l in 0..<model.moeLayers {
            let c = layers[l].counts, tot = max(1, c.reduce(0, +))
            let top = c.indices.sorted { c[$0] != c[$1] ? c[$0] > c[$1] : $0 < $1 }.prefix(6)
            s += "  \(model.layerMap[l]): " + top.map { "e\($0) \(fmt(Double(c[$0]) / Double(tot), 3))" }.joined(separator: "  ") + "\n"
        }
        s += "(per-expert counts and loads of every layer: --json)\n"
        if let ep = j.ep {
            s += "\nexpert parallelism over \(ep.ranks) ranks: max/mean token load per rank\n"
            var r: [[String]] = [["layer", "contiguous", "balanced (LPT)"]]
            for d in ep.layers { r.append(["\(d.layer)", fmt(d.contiguousMaxOverMean, 3), fmt(d.balancedMaxOverMean, 3)]) }
            r.append(["mean", fmt(ep.contiguousMaxOverMean, 3), fmt(ep.balancedMaxOverMean, 3)])
            s += table(r)
            s += "\nbalanced expert→rank map (JSON, layer → rank of expert 0…E-1):\n"
            s += "{" + model.layerMap.map { "\"\($0)\": [" + (ep.expertToRank["\($0)"] ?? []).map(String.init).joined(separator: ",") + "]" }.joined(separator: ", ") + "}\n"
        }
        return s
    }
}
