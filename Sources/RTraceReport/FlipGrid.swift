import Foundation
import RTrace
import RTraceAnalysis

/// Flip counts per MoE layer and relative-position bucket: where in the sequence which layers flip.
///
/// Counted by ``diffTraces(a:b:options:)`` as it compares (sequences joined on uid, rows on position); a row's
/// bucket is `min(N − 1, position · N / sequence length)`, so summing a bucket over layers gives
/// `rtrace diff`'s bucket flip rate. A (row, layer) missing on either side is not counted.
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

    /// The grid `rtrace diff` accumulated while comparing the traces (one pass for the numbers and
    /// the heatmap).
    public init(diff rep: DiffReport) {
        layers = rep.layerMap
        buckets = rep.buckets
        compared = rep.gridCompared
        flipped = rep.gridFlipped
    }
}
