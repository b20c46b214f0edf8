import Foundation

// The JSON of `rtrace diff --json` as value types: one schema (spec/cli-json.md), encoded with sorted
// keys and explicit nulls. Figures without rows to average over are nil (JSON null), never NaN.

extension KeyedEncodingContainer {
    /// Encodes `value`, or null when it is nil (synthesized Codable would leave the key out).
    mutating func encodeOrNull<T: Encodable>(_ value: T?, forKey key: Key) throws {
        if let value { try encode(value, forKey: key) } else { try encodeNil(forKey: key) }
    }
}

/// How the top-k sets of a group of compared (row, layer)s differ.
public struct SetFigures: Codable, Equatable, Sendable {
    /// Compared (row, layer)s.
    public var layerRows = 0
    /// Fraction whose top-k set differs.
    public var flipRate: Double? = nil
    /// Fraction whose slot order differs (set flips included).
    public var orderedFlipRate: Double? = nil
    /// Mean |A∩B| / |A∪B|.
    public var jaccard: Double? = nil
    /// Mean k − |A∩B|.
    public var meanExpertsChanged: Double? = nil

    public init(layerRows: Int = 0, flipRate: Double? = nil, orderedFlipRate: Double? = nil, jaccard: Double? = nil, meanExpertsChanged: Double? = nil) {
        self.layerRows = layerRows; self.flipRate = flipRate; self.orderedFlipRate = orderedFlipRate; self.jaccard = jaccard
        self.meanExpertsChanged = meanExpertsChanged
    }

    enum CodingKeys: String, CodingKey {
        case layerRows = "layer_rows", flipRate = "flip_rate", orderedFlipRate = "ordered_flip_rate", jaccard
        case meanExpertsChanged = "mean_experts_changed"
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(layerRows, forKey: .layerRows)
        try c.encodeOrNull(flipRate, forKey: .flipRate)
        try c.encodeOrNull(orderedFlipRate, forKey: .orderedFlipRate)
        try c.encodeOrNull(jaccard, forKey: .jaccard)
        try c.encodeOrNull(meanExpertsChanged, forKey: .meanExpertsChanged)
    }
}

/// ``SetFigures`` plus per-row figures, for a group of rows (all, prompt, response, a bucket).
public struct RowFigures: Codable, Equatable, Sendable {
    public var sets = SetFigures()
    /// Rows with at least one compared layer.
    public var rows = 0
    /// Fraction of those rows with at least one layer flipped.
    public var tokenAnyLayerFlip: Double? = nil
    /// Mean number of flipped layers per row.
    public var meanFlippedLayersPerRow: Double? = nil

    enum CodingKeys: String, CodingKey {
        case rows, tokenAnyLayerFlip = "token_any_layer_flip", meanFlippedLayersPerRow = "mean_flipped_layers_per_row"
    }

    public init(sets: SetFigures = SetFigures(), rows: Int = 0, tokenAnyLayerFlip: Double? = nil, meanFlippedLayersPerRow: Double? = nil) {
        self.sets = sets; self.rows = rows; self.tokenAnyLayerFlip = tokenAnyLayerFlip; self.meanFlippedLayersPerRow = meanFlippedLayersPerRow
    }

    public init(from decoder: any Decoder) throws {
        sets = try SetFigures(from: decoder)
        let c = try decoder.container(keyedBy: CodingKeys.self)
        rows = try c.decode(Int.self, forKey: .rows)
        tokenAnyLayerFlip = try c.decodeIfPresent(Double.self, forKey: .tokenAnyLayerFlip)
        meanFlippedLayersPerRow = try c.decodeIfPresent(Double.self, forKey: .meanFlippedLayersPerRow)
    }

    public func encode(to encoder: any Encoder) throws {
        try sets.encode(to: encoder)
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(rows, forKey: .rows)
        try c.encodeOrNull(tokenAnyLayerFlip, forKey: .tokenAnyLayerFlip)
        try c.encodeOrNull(meanFlippedLayersPerRow, forKey: .meanFlippedLayersPerRow)
    }
}

/// One MoE layer of the comparison (`per_layer`).
public struct LayerDiff: Codable, Equatable, Sendable {
    /// The decoder index of the layer, and its position on the trace's layer axis.
    public var layer: Int, moeIndex: Int
    public var sets: SetFigures
    /// Mean KL(softmax A ‖ softmax B) of the router logits (nil unless both sides carry them).
    public var routerKL: Double?
    /// Mean |w_A − w_B| over the experts both chose (nil unless both sides carry weights).
    public var weightMAE: Double?

    enum CodingKeys: String, CodingKey { case layer, moeIndex = "moe_index", routerKL = "router_kl", weightMAE = "weight_mae" }

    public init(layer: Int, moeIndex: Int, sets: SetFigures, routerKL: Double?, weightMAE: Double?) {
        self.layer = layer; self.moeIndex = moeIndex; self.sets = sets; self.routerKL = routerKL; self.weightMAE = weightMAE
    }

    public init(from decoder: any Decoder) throws {
        sets = try SetFigures(from: decoder)
        let c = try decoder.container(keyedBy: CodingKeys.self)
        layer = try c.decode(Int.self, forKey: .layer)
        moeIndex = try c.decode(Int.self, forKey: .moeIndex)
        routerKL = try c.decodeIfPresent(Double.self, forKey: .routerKL)
        weightMAE = try c.decodeIfPresent(Double.self, forKey: .weightMAE)
    }

    public func encode(to encoder: any Encoder) throws {
        try sets.encode(to: encoder)
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(layer, forKey: .layer)
        try c.encode(moeIndex, forKey: .moeIndex)
        try c.encodeOrNull(routerKL, forKey: .routerKL)
        try c.encodeOrNull(weightMAE, forKey: .weightMAE)
    }
}

/// One position bucket (`buckets`): rows at relative position `from` ≤ position / length < `to`.
public struct BucketDiff: Codable, Equatable, Sendable {
    public var bucket: Int
    public var from: Double, to: Double
    public var figures: RowFigures

    enum CodingKeys: String, CodingKey { case bucket, from, to }

    public init(bucket: Int, from: Double, to: Double, figures: RowFigures) {
        self.bucket = bucket; self.from = from; self.to = to; self.figures = figures
    }

    public init(from decoder: any Decoder) throws {
        figures = try RowFigures(from: decoder)
        let c = try decoder.container(keyedBy: CodingKeys.self)
        bucket = try c.decode(Int.self, forKey: .bucket)
        from = try c.decode(Double.self, forKey: .from)
        to = try c.decode(Double.self, forKey: .to)
    }

    public func encode(to encoder: any Encoder) throws {
        try figures.encode(to: encoder)
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(bucket, forKey: .bucket)
        try c.encode(from, forKey: .from)
        try c.encode(to, forKey: .to)
    }
}

/// What was joined: sequences by uid, rows by position (the `matched` object of the report and of a partial).
public struct MatchCounts: Codable, Equatable, Sendable {
    public var sequences = 0, sequencesOnlyA = 0, sequencesOnlyB = 0
    /// Row positions in both sides, and in one only.
    public var rows = 0, rowsOnlyA = 0, rowsOnlyB = 0
    /// (row, layer)s compared (the report only; a partial derives it from its histogram).
    public var layerRowsCompared: Int? = nil
    /// (row, layer)s left out because a side misses them, and how many each side misses.
    public var layerRowsSkipped = 0, layerRowsMissingA = 0, layerRowsMissingB = 0

    enum CodingKeys: String, CodingKey {
        case sequences, sequencesOnlyA = "sequences_only_a", sequencesOnlyB = "sequences_only_b"
        case rows, rowsOnlyA = "rows_only_a", rowsOnlyB = "rows_only_b", layerRowsCompared = "layer_rows_compared"
        case layerRowsSkipped = "layer_rows_skipped", layerRowsMissingA = "layer_rows_missing_a", layerRowsMissingB = "layer_rows_missing_b"
    }

    mutating func merge(_ o: MatchCounts) {
        sequences += o.sequences; sequencesOnlyA += o.sequencesOnlyA; sequencesOnlyB += o.sequencesOnlyB
        rows += o.rows; rowsOnlyA += o.rowsOnlyA; rowsOnlyB += o.rowsOnlyB
        layerRowsSkipped += o.layerRowsSkipped; layerRowsMissingA += o.layerRowsMissingA; layerRowsMissingB += o.layerRowsMissingB
    }
}

/// A sequence with flipped rows (`top`).
public struct TopSequence: Codable, Equatable, Sendable {
    public var uid: String
    /// Rows with at least one flipped layer, and rows matched.
    public var flippedRows: Int, rows: Int

    enum CodingKeys: String, CodingKey { case uid, flippedRows = "flipped_rows", rows }

    public init(uid: String, flippedRows: Int, rows: Int) {
        self.uid = uid; self.flippedRows = flippedRows; self.rows = rows
    }

    /// Most flipped rows first, ties by uid: a total order, so the top N of merged lists is exact.
    static func ranked(_ a: TopSequence, _ b: TopSequence) -> Bool {
        a.flippedRows != b.flippedRows ? a.flippedRows > b.flippedRows : a.uid < b.uid
    }
}

/// The result of `rtrace diff --json` (spec/cli-json.md): A = behaviour (rollout), B = training.
public struct DiffResult: Codable, Equatable, Sendable {
    /// The files of each side.
    public var a: [String], b: [String]
    public var topK: Int, numExperts: Int
    public var matched: MatchCounts
    /// Over every compared (row, layer) and row.
    public var all: RowFigures
    public var perLayer: [LayerDiff]
    public var routerKL: Double?, weightMAE: Double?
    public var prompt: RowFigures, response: RowFigures
    public var buckets: [BucketDiff]
    /// The policy mismatch (nil unless both sides carry logprobs for some response token).
    public var policy: PolicyReport?
    public var top: [TopSequence]

    enum CodingKeys: String, CodingKey {
        case a, b, topK = "top_k", numExperts = "num_experts", matched, perLayer = "per_layer", routerKL = "router_kl"
        case weightMAE = "weight_mae", prompt, response, buckets, policy, top
    }

    public init(a: [String], b: [String], topK: Int, numExperts: Int, matched: MatchCounts, all: RowFigures, perLayer: [LayerDiff],
                routerKL: Double?, weightMAE: Double?, prompt: RowFigures, response: RowFigures, buckets: [BucketDiff],
                policy: PolicyReport?, top: [TopSequence]) {
        self.a = a; self.b = b; self.topK = topK; self.numExperts = numExperts; self.matched = matched; self.all = all
        self.perLayer = perLayer; self.routerKL = routerKL; self.weightMAE = weightMAE; self.prompt = prompt
        self.response = response; self.buckets = buckets; self.policy = policy; self.top = top
    }

    public init(from decoder: any Decoder) throws {
        all = try RowFigures(from: decoder)
        let c = try decoder.container(keyedBy: CodingKeys.self)
        a = try c.decode([String].self, forKey: .a)
        b = try c.decode([String].self, forKey: .b)
        topK = try c.decode(Int.self, forKey: .topK)
        numExperts = try c.decode(Int.self, forKey: .numExperts)
        matched = try c.decode(MatchCounts.self, forKey: .matched)
        perLayer = try c.decode([LayerDiff].self, forKey: .perLayer)
        routerKL = try c.decodeIfPresent(Double.self, forKey: .routerKL)
        weightMAE = try c.decodeIfPresent(Double.self, forKey: .weightMAE)
        prompt = try c.decode(RowFigures.self, forKey: .prompt)
        response = try c.decode(RowFigures.self, forKey: .response)
        buckets = try c.decode([BucketDiff].self, forKey: .buckets)
        policy = try c.decodeIfPresent(PolicyReport.self, forKey: .policy)
        top = try c.decode([TopSequence].self, forKey: .top)
    }

    public func encode(to encoder: any Encoder) throws {
        try all.encode(to: encoder)
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(a, forKey: .a)
        try c.encode(b, forKey: .b)
        try c.encode(topK, forKey: .topK)
        try c.encode(numExperts, forKey: .numExperts)
        try c.encode(matched, forKey: .matched)
        try c.encode(perLayer, forKey: .perLayer)
        try c.encodeOrNull(routerKL, forKey: .routerKL)
        try c.encodeOrNull(weightMAE, forKey: .weightMAE)
        try c.encode(prompt, forKey: .prompt)
        try c.encode(response, forKey: .response)
        try c.encode(buckets, forKey: .buckets)
        try c.encodeOrNull(policy, forKey: .policy)
        try c.encode(top, forKey: .top)
    }
}

/// JSON text of a Codable result: pretty, sorted keys, slashes unescaped (as every `--json` prints).
public func encodeJSON<T: Encodable>(_ value: T, pretty: Bool = true) -> String {
    let e = JSONEncoder()
    e.outputFormatting = pretty ? [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes] : [.sortedKeys, .withoutEscapingSlashes]
    // Values are finite by construction (undefined figures are nil): encoding cannot fail.
    return String(decoding: try! e.encode(value), as: UTF8.self)
}

/// The JSON object tree of a Codable result, for looking keys up by name (``checkThresholds(_:_:)``).
public func jsonTree<T: Encodable>(_ value: T) -> [String: Any] {
    let e = JSONEncoder()
    return (try! JSONSerialization.jsonObject(with: try! e.encode(value))) as! [String: Any]
}
