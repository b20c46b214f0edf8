import Foundation
import RTrace

/// A set of uid shards of one comparison: parts `indices` of `count` (``UIDShard``).
public struct ShardSet: Codable, Equatable, Sendable {
    public var count: Int
    public var indices: [Int]

    /// Whether every part 0 … count−1 is there.
    public var isComplete: Bool { indices.count == count }
}

/// What a partial covers: the files of each side, and which uid shards of their join.
public struct DiffInput: Codable, Equatable, Sendable {
    /// The files of side A and of side B (directories expanded).
    public var a: [String], b: [String]
    public var uidShards: ShardSet

    enum CodingKeys: String, CodingKey { case a, b, uidShards = "uid_shards" }
}

/// The exact, mergeable state of a comparison (`rtrace diff --partial`, spec/cli-json.md): integer
/// counts and exact sums, so partials of disjoint parts merge, in any order and grouping, to the
/// partial of the whole, and ``DiffReport`` derives the same report from either.
///
/// Parts must not share a sequence: split by uid (``UIDShard``), or give each part files that hold
/// different uids on both sides (files co-partitioned by uid).
public struct DiffPartial: Sendable, Equatable {
    /// `format` of a partial's JSON.
    public static let formatName = "rtrace-diff-partial"
    /// `version` this code writes and reads.
    public static let currentVersion = 1

    /// What the partial covers.
    public var inputs: [DiffInput]
    /// The geometry both sides share.
    public var model: ModelGeometry
    /// Position buckets (must agree to merge) and the length of the `top` list kept.
    public var buckets: Int, top: Int
    /// Whether every file of both sides carries router logits, gate weights, logprobs.
    public var hasLogits = false, hasWeights = false, hasLogprobs = false
    /// Sequences joined by uid, and those only one side has.
    public var sequencesMatched = 0, sequencesOnlyA = 0, sequencesOnlyB = 0
    /// The tallies.
    var acc: DiffAcc

    init(inputs: [DiffInput], model: ModelGeometry, buckets: Int, top: Int, isThresholds: [Double] = PolicyAcc.defaultThresholds) {
        self.inputs = inputs
        self.model = model
        self.buckets = buckets
        self.top = top
        acc = DiffAcc(L: model.moeLayers, k: model.topK, E: model.numExperts, buckets: buckets, isThresholds: isThresholds)
    }

    /// The files of each side, over all inputs, in order.
    public var filesA: [String] { inputs.flatMap(\.a) }
    public var filesB: [String] { inputs.flatMap(\.b) }

    /// Adds the partial of another part. Throws when the two cannot be parts of one comparison: other
    /// geometry or buckets, the same uid shard twice, or a file in both (a sequence would count twice).
    public mutating func merge(_ o: DiffPartial) throws(TraceError) {
        let na = inputs.first?.a.first ?? "the first partial", nb = o.inputs.first?.a.first ?? "the other partial"
        try checkSameGeometry(model, o.model, na, nb)
        guard buckets == o.buckets else {
            throw TraceError(.invalidInput, "partials with different --buckets (\(buckets) and \(o.buckets)) cannot be merged")
        }
        try acc.policy.checkMergeable(o.acc.policy)
        var merged = inputs
        for inp in o.inputs {
            if let i = merged.firstIndex(where: { $0.a == inp.a && $0.b == inp.b && $0.uidShards.count == inp.uidShards.count }) {
                let twice = Set(merged[i].uidShards.indices).intersection(inp.uidShards.indices)
                if let s = twice.min() {
                    throw TraceError(.invalidInput, "uid shard \(s)/\(inp.uidShards.count) of A = \(inp.a.joined(separator: " ")), B = \(inp.b.joined(separator: " ")) is in two partials: merging would count it twice")
                }
                merged[i].uidShards.indices = (merged[i].uidShards.indices + inp.uidShards.indices).sorted()
            } else {
                merged.append(inp)
            }
        }
        for (side, files) in [("A", merged.map(\.a)), ("B", merged.map(\.b))] {
            var owner: [String: Int] = [:]
            for (i, fs) in files.enumerated() {
                for f in Set(fs) {
                    if let j = owner[f], j != i {
                        throw TraceError(.invalidInput, "\(f) is on side \(side) of two partials of different inputs: its sequences would count twice (split by --uid-shard over the same files, or give each part its own files on both sides)")
                    }
                    owner[f] = i
                }
            }
        }
        inputs = merged
        top = min(top, o.top)
        hasLogits = hasLogits && o.hasLogits
        hasWeights = hasWeights && o.hasWeights
        hasLogprobs = hasLogprobs && o.hasLogprobs
        sequencesMatched += o.sequencesMatched; sequencesOnlyA += o.sequencesOnlyA; sequencesOnlyB += o.sequencesOnlyB
        acc.merge(o.acc)
        acc.keepTop(top)
    }

    /// Throws unless every input has all its uid shards (the partial is of whole files).
    public func checkComplete() throws(TraceError) {
        for inp in inputs where !inp.uidShards.isComplete {
            let missing = Set(0..<inp.uidShards.count).subtracting(inp.uidShards.indices).sorted()
            let shown = missing.prefix(8).map { "\($0)" }.joined(separator: ", ") + (missing.count > 8 ? ", …" : "")
            throw TraceError(.invalidInput, "uid shards \(shown) of \(inp.uidShards.count) of A = \(inp.a.joined(separator: " ")) are missing: the result would not be that of the whole (write a partial with --partial to merge later)")
        }
    }

    /// Throws unless some rows were compared (what a report needs).
    public func checkMatched() throws(TraceError) {
        if sequencesMatched == 0 {
            throw TraceError(.invalidInput, "no sequence is in both sides: A has \(sequencesOnlyA) uids, B has \(sequencesOnlyB), none shared (are these traces of the same rollouts?)")
        }
        if acc.matchedRows == 0 {
            throw TraceError(.invalidInput, "\(sequencesMatched) sequences match by uid but no row position is in both sides")
        }
    }
}

// MARK: JSON

extension DiffPartial: Codable {
    struct Model: Codable {
        var numLayers: Int, numExperts: Int, topK: Int, layerMap: [Int]
        enum CodingKeys: String, CodingKey { case numLayers = "num_layers", numExperts = "num_experts", topK = "top_k", layerMap = "layer_map" }
    }
    struct Options: Codable { var buckets: Int, top: Int }
    struct Columns: Codable {
        var routerLogits: Bool, topkWeights: Bool, logprobs: Bool
        enum CodingKeys: String, CodingKey { case routerLogits = "router_logits", topkWeights = "topk_weights", logprobs }
    }
    /// Exact sums and their counts, per MoE layer.
    struct LayerSums: Codable { var sum: [WideSum], n: [Int] }

    enum CodingKeys: String, CodingKey {
        case format, version, inputs, model, options, columns, matched
        case intersections, orderFlips = "order_flips", classRows = "class_rows", classRowsAnyFlip = "class_rows_any_flip"
        case classFlippedLayers = "class_flipped_layers", bucketRows = "bucket_rows", bucketRowsAnyFlip = "bucket_rows_any_flip"
        case routerKL = "router_kl", weightMAE = "weight_mae", policy, top
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(DiffPartial.formatName, forKey: .format)
        try c.encode(DiffPartial.currentVersion, forKey: .version)
        try c.encode(inputs, forKey: .inputs)
        try c.encode(Model(numLayers: model.numLayers, numExperts: model.numExperts, topK: model.topK, layerMap: model.layerMap), forKey: .model)
        try c.encode(Options(buckets: buckets, top: top), forKey: .options)
        try c.encode(Columns(routerLogits: hasLogits, topkWeights: hasWeights, logprobs: hasLogprobs), forKey: .columns)
        try c.encode(matched(compared: nil), forKey: .matched)
        try c.encode(acc.cells, forKey: .intersections)
        try c.encode(acc.orderCells, forKey: .orderFlips)
        try c.encode(acc.rows, forKey: .classRows)
        try c.encode(acc.anyFlip, forKey: .classRowsAnyFlip)
        try c.encode(acc.flippedLayers, forKey: .classFlippedLayers)
        try c.encode(acc.brows, forKey: .bucketRows)
        try c.encode(acc.bany, forKey: .bucketRowsAnyFlip)
        try c.encode(LayerSums(sum: acc.klSum, n: acc.klN), forKey: .routerKL)
        try c.encode(LayerSums(sum: acc.wSum, n: acc.wN), forKey: .weightMAE)
        try c.encode(acc.policy, forKey: .policy)
        try c.encode(acc.top.sorted(by: TopSequence.ranked), forKey: .top)
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        func bad(_ key: CodingKeys, _ m: String) -> DecodingError { .dataCorruptedError(forKey: key, in: c, debugDescription: m) }
        let format = try c.decode(String.self, forKey: .format)
        guard format == DiffPartial.formatName else { throw bad(.format, "format is \(format), expected \(DiffPartial.formatName)") }
        let version = try c.decode(Int.self, forKey: .version)
        guard version == DiffPartial.currentVersion else {
            throw bad(.version, "partial version \(version); this rtrace reads version \(DiffPartial.currentVersion)")
        }
        let m = try c.decode(Model.self, forKey: .model)
        let g = ModelGeometry(numLayers: m.numLayers, numExperts: m.numExperts, topK: m.topK, layerMap: m.layerMap)
        do { try g.validate() } catch { throw bad(.model, error.message) }
        let o = try c.decode(Options.self, forKey: .options)
        guard o.buckets >= 1, o.buckets <= 1 << 16, o.top >= 0 else { throw bad(.options, "buckets must be 1…65536 and top ≥ 0") }
        self.init(inputs: try c.decode([DiffInput].self, forKey: .inputs), model: g, buckets: o.buckets, top: o.top)
        for inp in inputs {
            let s = inp.uidShards
            guard s.count >= 1, Set(s.indices).count == s.indices.count, s.indices.allSatisfy({ $0 >= 0 && $0 < s.count }) else {
                throw bad(.inputs, "uid_shards must be distinct parts 0 … count−1, found \(s.indices) of \(s.count)")
            }
        }
        let cols = try c.decode(Columns.self, forKey: .columns)
        hasLogits = cols.routerLogits; hasWeights = cols.topkWeights; hasLogprobs = cols.logprobs
        let mc = try c.decode(MatchCounts.self, forKey: .matched)
        sequencesMatched = mc.sequences; sequencesOnlyA = mc.sequencesOnlyA; sequencesOnlyB = mc.sequencesOnlyB
        acc.matchedRows = mc.rows; acc.rowsOnlyA = mc.rowsOnlyA; acc.rowsOnlyB = mc.rowsOnlyB
        acc.skippedLayerRows = mc.layerRowsSkipped; acc.missingA = mc.layerRowsMissingA; acc.missingB = mc.layerRowsMissingB
        let L = g.moeLayers
        func ints(_ key: CodingKeys, _ n: Int) throws -> [Int] {
            let v = try c.decode([Int].self, forKey: key)
            guard v.count == n else { throw bad(key, "\(key.stringValue) has \(v.count) values, expected \(n) for this geometry and \(buckets) buckets") }
            guard v.allSatisfy({ $0 >= 0 }) else { throw bad(key, "\(key.stringValue) holds a negative count") }
            return v
        }
        func sums(_ key: CodingKeys) throws -> LayerSums {
            let s = try c.decode(LayerSums.self, forKey: key)
            guard s.sum.count == L, s.n.count == L else { throw bad(key, "\(key.stringValue) needs \(L) sums and counts (one per MoE layer)") }
            return s
        }
        acc.cells = try ints(.intersections, acc.cells.count)
        acc.orderCells = try ints(.orderFlips, acc.orderCells.count)
        acc.rows = try ints(.classRows, 2)
        acc.anyFlip = try ints(.classRowsAnyFlip, 2)
        acc.flippedLayers = try ints(.classFlippedLayers, 2)
        acc.brows = try ints(.bucketRows, buckets)
        acc.bany = try ints(.bucketRowsAnyFlip, buckets)
        let kl = try sums(.routerKL), w = try sums(.weightMAE)
        acc.klSum = kl.sum; acc.klN = kl.n; acc.wSum = w.sum; acc.wN = w.n
        let policy = try c.decode(PolicyAcc.self, forKey: .policy)
        do {
            try PolicyAcc.validate(thresholds: policy.thresholds)
            try PolicyAcc(layers: L, thresholds: policy.thresholds).checkMergeable(policy)
        } catch { throw bad(.policy, error.message) }
        acc.policy = policy
        acc.top = try c.decode([TopSequence].self, forKey: .top)
    }

    /// The `matched` counts (`compared`: the (row, layer)s compared, which only the report lists).
    func matched(compared: Int?) -> MatchCounts {
        MatchCounts(sequences: sequencesMatched, sequencesOnlyA: sequencesOnlyA, sequencesOnlyB: sequencesOnlyB,
                    rows: acc.matchedRows, rowsOnlyA: acc.rowsOnlyA, rowsOnlyB: acc.rowsOnlyB, layerRowsCompared: compared,
                    layerRowsSkipped: acc.skippedLayerRows, layerRowsMissingA: acc.missingA, layerRowsMissingB: acc.missingB)
    }

    /// Reads a partial from a JSON file (`-`: standard input). Errors name the file and the field.
    public static func read(path: String) throws(TraceError) -> DiffPartial {
        try decodeJSONFile(DiffPartial.self, path: path, what: "a diff partial (rtrace diff --partial)")
    }
}

/// The bytes of a file, or of standard input for `-`.
func readInputFile(_ path: String) throws(TraceError) -> Data {
    do {
        if path == "-" { return FileHandle.standardInput.readDataToEndOfFile() }
        return try Data(contentsOf: URL(fileURLWithPath: path))
    } catch {
        throw TraceError(.io, "cannot read: \(error.localizedDescription)", file: path)
    }
}

/// The value of type `T` in a JSON file (`-`: standard input); errors name the file, and the field that is
/// wrong or missing, saying the file is not `what`.
func decodeJSONFile<T: Decodable>(_: T.Type, path: String, what: String) throws(TraceError) -> T {
    let data = try readInputFile(path)
    do {
        return try JSONDecoder().decode(T.self, from: data)
    } catch let e as DecodingError {
        throw TraceError(.invalidInput, "not \(what): \(describe(e))", file: path)
    } catch {
        throw TraceError(.invalidInput, "not \(what): \(error)", file: path)
    }
}

/// A decoding error in a sentence: the key path and what was wrong.
func describe(_ e: DecodingError) -> String {
    func path(_ p: [any CodingKey]) -> String {
        p.isEmpty ? "the top level" : p.map { $0.intValue.map { "[\($0)]" } ?? $0.stringValue }.joined(separator: ".")
    }
    switch e {
    case .keyNotFound(let k, let ctx): return "\(path(ctx.codingPath + [k])) is missing"
    case .typeMismatch(_, let ctx), .valueNotFound(_, let ctx): return "\(path(ctx.codingPath)): \(ctx.debugDescription)"
    case .dataCorrupted(let ctx): return ctx.codingPath.isEmpty ? ctx.debugDescription : "\(path(ctx.codingPath)): \(ctx.debugDescription)"
    @unknown default: return "\(e)"
    }
}

/// Merges partials (`rtrace merge`): the partial of the union of their parts.
public func mergeDiffPartials(_ paths: [String]) throws(TraceError) -> DiffPartial {
    guard let first = paths.first else { throw TraceError(.invalidInput, "give at least one partial") }
    var out = try DiffPartial.read(path: first)
    for p in paths.dropFirst() {
        do { try out.merge(try DiffPartial.read(path: p)) } catch { throw error.inFile(p) }
    }
    return out
}
