import Foundation
import RTrace

/// What `rtrace stats --json` prints (spec/cli-json.md): the derived figures, and the exact tallies
/// (``partial``) that `rtrace merge` / `rtrace stats --merge` add to the statistics of a union.
public struct StatsReport: Codable, Equatable, Sendable {
    /// The name every stats result carries in `format`.
    public static let formatName = "rtrace-stats"

    public var format = StatsReport.formatName
    public var version = 1
    /// The traces counted (files of the union).
    public var files: [String]
    /// Parts of files counted (`rtrace stats --chunks`); absent when there are none.
    public var chunkRanges: [ChunkRange]?
    public var records: Int, rows: Int
    public var model: Model
    public var options: Options
    public var top1WeightDefinition = "max over the k slots"
    public var auxLossDefinition = "num_experts * sum_i f_i * P_i, f_i = assignments to i / (tokens * k), P_i = mean router softmax prob of i"
    /// The mergeable state: integer counts and exact sums.
    public var partial: Tallies
    /// Per MoE layer, in trace order.
    public var layers: [Layer]
    /// Means over the layers that have the figure (null when none has).
    @ReportNumber public var maxOverMean: Double?
    @ReportNumber public var cv: Double?
    @ReportNumber public var normalizedEntropy: Double?
    @ReportNumber public var effectiveExperts: Double?
    @ReportNumber public var meanTop1Weight: Double?
    @ReportNumber public var routerEntropy: Double?
    @ReportNumber public var auxLoss: Double?
    /// Sums over the layers.
    public var deadExperts: Int, tokens: Int
    /// Assignments dropped over assignments offered, with a capacity factor.
    @ReportNumber public var dropRate: Double?
    /// Expert-parallel placement, with `--ep`.
    public var ep: ExpertParallel?

    enum CodingKeys: String, CodingKey {
        case chunkRanges = "chunk_ranges"
        case format, version, files, records, rows, model, options, partial, layers, tokens, ep, cv
        case top1WeightDefinition = "top1_weight_definition", auxLossDefinition = "aux_loss_definition"
        case maxOverMean = "max_over_mean", normalizedEntropy = "normalized_entropy", effectiveExperts = "effective_experts"
        case meanTop1Weight = "mean_top1_weight", routerEntropy = "router_entropy", auxLoss = "aux_loss"
        case deadExperts = "dead_experts", dropRate = "drop_rate"
    }

    /// The geometry of the traces.
    public struct Model: Codable, Equatable, Sendable {
        public var numLayers: Int, numExperts: Int, topK: Int, layerMap: [Int]
        enum CodingKeys: String, CodingKey { case numLayers = "num_layers", numExperts = "num_experts", topK = "top_k", layerMap = "layer_map" }
    }

    /// The options the tallies were made with (the capacity ones are fixed then).
    public struct Options: Codable, Equatable, Sendable {
        public var capacityFactor: Double?, batchTokens: Int, ep: Int?
        enum CodingKeys: String, CodingKey { case capacityFactor = "capacity_factor", batchTokens = "batch_tokens", ep }
        public init(capacityFactor: Double?, batchTokens: Int, ep: Int?) {
            self.capacityFactor = capacityFactor; self.batchTokens = batchTokens; self.ep = ep
        }
        public func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encodeOrNull(capacityFactor, forKey: .capacityFactor)
            try c.encode(batchTokens, forKey: .batchTokens)
            try c.encodeOrNull(ep, forKey: .ep)
        }
    }

    /// The exact tallies of every layer.
    public struct Tallies: Codable, Equatable, Sendable {
        /// Resolution of the exact sums' integers.
        public var sumScale = "2^-60"
        public var hasWeights: Bool, hasLogits: Bool
        public var layers: [LayerTally]
        enum CodingKeys: String, CodingKey { case sumScale = "sum_scale", hasWeights = "has_weights", hasLogits = "has_logits", layers }
    }

    /// The derived figures of one MoE layer.
    public struct Layer: Codable, Equatable, Sendable {
        /// Decoder index, and position on the trace's layer axis.
        public var layer: Int, moeIndex: Int
        public var tokens: Int, assignments: Int
        public var counts: [Int], load: [Double]
        @ReportNumber public var maxOverMean: Double?
        @ReportNumber public var cv: Double?
        public var deadExperts: Int
        @ReportNumber public var normalizedEntropy: Double?
        @ReportNumber public var effectiveExperts: Double?
        public var halfLoadExperts: Int
        @ReportNumber public var meanTop1Weight: Double?
        @ReportNumber public var routerEntropy: Double?
        @ReportNumber public var auxLoss: Double?
        @ReportNumber public var dropRate: Double?
        enum CodingKeys: String, CodingKey {
            case layer, tokens, assignments, counts, load, cv
            case moeIndex = "moe_index", maxOverMean = "max_over_mean", deadExperts = "dead_experts"
            case normalizedEntropy = "normalized_entropy", effectiveExperts = "effective_experts", halfLoadExperts = "half_load_experts"
            case meanTop1Weight = "mean_top1_weight", routerEntropy = "router_entropy", auxLoss = "aux_loss", dropRate = "drop_rate"
        }
    }

    /// Token load per expert-parallel rank, contiguous and balanced (greedy LPT) placement.
    public struct ExpertParallel: Codable, Equatable, Sendable {
        public var ranks: Int
        public var layers: [Layer]
        /// Per decoder-layer index (as text), the rank of each expert in the balanced placement.
        public var expertToRank: [String: [Int]]
        @ReportNumber public var contiguousMaxOverMean: Double?
        @ReportNumber public var balancedMaxOverMean: Double?
        enum CodingKeys: String, CodingKey {
            case ranks, layers, expertToRank = "expert_to_rank"
            case contiguousMaxOverMean = "contiguous_max_over_mean", balancedMaxOverMean = "balanced_max_over_mean"
        }

        /// One layer's token load per rank.
        public struct Layer: Codable, Equatable, Sendable {
            public var layer: Int
            public var contiguousLoad: [Int], balancedLoad: [Int]
            @ReportNumber public var contiguousMaxOverMean: Double?
            @ReportNumber public var balancedMaxOverMean: Double?
            enum CodingKeys: String, CodingKey {
                case layer, contiguousLoad = "contiguous_load", balancedLoad = "balanced_load"
                case contiguousMaxOverMean = "contiguous_max_over_mean", balancedMaxOverMean = "balanced_max_over_mean"
            }
        }
    }
}


/// The mean of the non-nil values, nil when there are none.
private func meanOfPresent(_ xs: [Double?]) -> Double? {
    let v = xs.compactMap { $0 }
    return v.isEmpty ? nil : v.reduce(0, +) / Double(v.count)
}

extension StatsPartial {
    /// The report `rtrace stats --json` prints: derived figures plus these tallies.
    public var report: StatsReport {
        let per = (0..<model.moeLayers).map { l -> StatsReport.Layer in
            let s = derived(l)
            return StatsReport.Layer(
                layer: s.layer, moeIndex: l, tokens: s.tokens, assignments: s.assignments, counts: layers[l].counts, load: s.load,
                maxOverMean: s.maxOverMean, cv: s.cv, deadExperts: s.dead, normalizedEntropy: s.normEntropy,
                effectiveExperts: s.effectiveExperts, halfLoadExperts: s.halfLoadExperts, meanTop1Weight: s.meanTop1Weight,
                routerEntropy: s.routerEntropy, auxLoss: s.auxLoss, dropRate: s.dropRate)
        }
        let dropped = layers.reduce(0) { $0 + $1.dropped }, offered = layers.reduce(0) { $0 + $1.capacityAssignments }
        return StatsReport(
            files: files, chunkRanges: chunkRanges.isEmpty ? nil : chunkRanges, records: records, rows: rows,
            model: .init(numLayers: model.numLayers, numExperts: model.numExperts, topK: model.topK, layerMap: model.layerMap),
            options: .init(capacityFactor: options.capacityFactor, batchTokens: options.batchTokens, ep: options.ep),
            partial: .init(hasWeights: hasWeights, hasLogits: hasLogits, layers: layers),
            layers: per,
            maxOverMean: meanOfPresent(per.map(\.maxOverMean)), cv: meanOfPresent(per.map(\.cv)),
            normalizedEntropy: meanOfPresent(per.map(\.normalizedEntropy)), effectiveExperts: meanOfPresent(per.map(\.effectiveExperts)),
            meanTop1Weight: meanOfPresent(per.map(\.meanTop1Weight)), routerEntropy: meanOfPresent(per.map(\.routerEntropy)),
            auxLoss: meanOfPresent(per.map(\.auxLoss)),
            deadExperts: per.reduce(0) { $0 + $1.deadExperts }, tokens: per.reduce(0) { $0 + $1.tokens },
            dropRate: offered > 0 ? Double(dropped) / Double(offered) : nil,
            ep: options.ep.flatMap { $0 > 0 ? expertParallel(ranks: $0) : nil })
    }

    private func expertParallel(ranks n: Int) -> StatsReport.ExpertParallel {
        var out = StatsReport.ExpertParallel(ranks: n, layers: [], expertToRank: [:])
        for l in 0..<model.moeLayers {
            let e = ep(l, ranks: n)
            out.layers.append(.init(layer: model.layerMap[l], contiguousLoad: e.contiguous, balancedLoad: e.balanced,
                                    contiguousMaxOverMean: e.contiguousMaxOverMean, balancedMaxOverMean: e.balancedMaxOverMean))
            out.expertToRank["\(model.layerMap[l])"] = e.expertToRank
        }
        // Means over the layers where both placements are defined.
        let both = out.layers.filter { $0.contiguousMaxOverMean != nil && $0.balancedMaxOverMean != nil }
        if !both.isEmpty {
            out.contiguousMaxOverMean = both.reduce(0) { $0 + $1.contiguousMaxOverMean! } / Double(both.count)
            out.balancedMaxOverMean = both.reduce(0) { $0 + $1.balancedMaxOverMean! } / Double(both.count)
        }
        return out
    }

    /// The tallies of a report (`rtrace stats --json`), checked against its geometry; `name` names the
    /// source in errors.
    public init(report o: StatsReport, name: String) throws(TraceError) {
        func bad(_ m: String) -> TraceError { TraceError(.invalidInput, m, file: name) }
        guard o.format == StatsReport.formatName else { throw bad("not the JSON of rtrace stats --json (format is \"\(o.format)\")") }
        let m = o.model
        guard m.layerMap.count == o.partial.layers.count, m.numExperts > 0, m.topK > 0 else {
            throw bad("model is inconsistent: \(m.layerMap.count) MoE layers in layer_map, \(o.partial.layers.count) in partial.layers")
        }
        var options = StatsOptions(capacityFactor: o.options.capacityFactor, batchTokens: o.options.batchTokens, ep: o.options.ep)
        options.threads = 1
        self.init(model: ModelGeometry(numLayers: m.numLayers, numExperts: m.numExperts, topK: m.topK, layerMap: m.layerMap),
                  options: options, logits: false)
        files = o.files
        for r in o.chunkRanges ?? [] where !(0 <= r.first && r.first < r.end && r.end <= r.chunks) {
            throw bad("chunk_ranges: \(r.first):\(r.end) is not a range of the \(r.chunks) chunks of \(r.file)")
        }
        chunkRanges = try ChunkRange.combine(files: &files, ranges: o.chunkRanges ?? [])
        records = o.records
        rows = o.rows
        hasWeights = o.partial.hasWeights
        hasLogits = o.partial.hasLogits
        for (l, t) in o.partial.layers.enumerated() {
            guard t.counts.count == m.numExperts else {
                throw bad("partial.layers[\(l)].counts has \(t.counts.count) experts, the model \(m.numExperts)")
            }
            guard t.probSum.isEmpty || t.probSum.count == m.numExperts else {
                throw bad("partial.layers[\(l)].router_prob_sum has \(t.probSum.count) experts, the model \(m.numExperts)")
            }
            layers[l] = t
        }
    }
}

extension StatsReport {
    /// Reads a stats result from a JSON file (`-`: standard input). Errors name the file and the field.
    public static func read(path: String) throws(TraceError) -> StatsReport {
        try decodeJSONFile(StatsReport.self, path: path, what: "the JSON of rtrace stats --json")
    }
}

/// Merges `rtrace stats --json` outputs into the statistics of the union.
public func mergeStats(_ paths: [String], ep: Int? = nil) throws(TraceError) -> StatsPartial {
    guard let first = paths.first else { throw TraceError(.invalidInput, "--merge needs at least one JSON file") }
    var out = try StatsPartial(report: StatsReport.read(path: first), name: first)
    for p in paths.dropFirst() {
        do { try out.merge(try StatsPartial(report: StatsReport.read(path: p), name: p)) } catch { throw error.inFile(p) }
    }
    if let ep { out.options.ep = ep }
    return out
}
