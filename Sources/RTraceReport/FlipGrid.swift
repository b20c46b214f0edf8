import Foundation
import RTrace
import RTraceAnalysis

/// Flip counts per MoE layer and relative-position bucket: where in the sequence which layers flip.
///
/// Sequences are joined on uid and rows on position, as in ``diffTraces(a:b:options:)``; a row's bucket is
/// `min(N − 1, position · N / sequence length)` with the same sequence length, so summing a bucket over layers
/// gives `rtrace diff`'s bucket flip rate. A (row, layer) missing on either side is not counted.
public struct FlipGrid: Equatable, Sendable {
    /// Decoder index of each MoE layer (the rows of the grid).
    public var layers: [Int]
    /// Number of position buckets.
    public var buckets: Int
    /// Compared (row, layer)s, `[layer * buckets + bucket]`.
    public var compared: [Int]
    /// Those whose top-k set differs.
    public var flipped: [Int]

    /// An empty grid.
    public init(layers: [Int], buckets: Int) {
        self.layers = layers
        self.buckets = max(1, buckets)
        compared = Array(repeating: 0, count: layers.count * self.buckets)
        flipped = compared
    }

    /// Flip rate of one cell, nil when nothing was compared there.
    public func rate(layer l: Int, bucket b: Int) -> Double? {
        let n = compared[l * buckets + b]
        return n > 0 ? Double(flipped[l * buckets + b]) / Double(n) : nil
    }

    /// Adds one matched pair of records (A = behaviour, B = training).
    public mutating func add(_ a: TraceRecord, _ b: TraceRecord) {
        let L = layers.count, k = a.topK
        guard b.topK == k, a.layers == L, b.layers == L else { return }
        let lo = max(a.start, b.start), hi = min(a.start + a.rowCount, b.start + b.rowCount)
        guard lo < hi else { return }
        let seqLen = max(1, a.tokens.count, a.start + a.rowCount, b.start + b.rowCount)
        for pos in lo..<hi {
            let ra = pos - a.start, rb = pos - b.start
            let bk = min(buckets - 1, pos * buckets / seqLen)
            for l in 0..<L {
                let oa = (ra * L + l) * k, ob = (rb * L + l) * k
                if a.expertIDs[oa] == TraceRecord.missing || b.expertIDs[ob] == TraceRecord.missing { continue }
                var same = 0
                for j in 0..<k {
                    let e = b.expertIDs[ob + j]
                    for i in 0..<k where a.expertIDs[oa + i] == e { same += 1; break }
                }
                compared[l * buckets + bk] += 1
                if same < k { flipped[l * buckets + bk] += 1 }
            }
        }
    }

    /// Computes the grid of two sides (files or directories of `*.rtrace`).
    ///
    /// Side B is read through its index when every B file has one (one record in memory at a time per side),
    /// otherwise B's records are held in memory.
    public static func compute(a pathsA: [String], b pathsB: [String], buckets: Int) throws -> FlipGrid {
        let filesA = try expandTracePaths(pathsA), filesB = try expandTracePaths(pathsB)
        let ra = try filesA.map { try TraceReader(path: $0) }, rb = try filesB.map { try TraceReader(path: $0) }
        guard let first = ra.first, let firstB = rb.first else { throw TraceError(.invalidInput, "no trace files given") }
        let g = first.header.model
        if firstB.header.model.layerMap != g.layerMap || firstB.header.model.topK != g.topK {
            throw TraceError(.geometryMismatch, "\(filesA[0]) and \(filesB[0]) disagree on layer_map or top_k")
        }
        var grid = FlipGrid(layers: g.layerMap, buckets: buckets)
        var locB: [String: (reader: Int, ordinal: Int)] = [:]
        var heldB: [String: TraceRecord] = [:]
        if rb.allSatisfy({ $0.index != nil }) {
            for (ri, r) in rb.enumerated() {
                for (o, loc) in r.index!.records.enumerated() where locB[loc.uid] == nil { locB[loc.uid] = (ri, o) }
            }
        } else {
            for r in rb { try r.forEachRecord { rec in if heldB[rec.uid] == nil { heldB[rec.uid] = rec } } }
        }
        for r in ra {
            try r.forEachRecord { rec in
                if let w = locB[rec.uid] {
                    grid.add(rec, try rb[w.reader].record(ordinal: w.ordinal))
                } else if let other = heldB[rec.uid] {
                    grid.add(rec, other)
                }
            }
        }
        return grid
    }
}
